"""The training volumes of an experiment on the training device, from which mini-batches are gathered there.

The sampling pipeline (TorchIO queues, :mod:`mtseg.data.torchio_adapters`) hands over indices only:
for each sample, which training volume and which voxel (``training=patch``), or which
volume and where its cube starts (``training=cubes``). :class:`TrainingVolumes` holds every
training volume of the experiment, padded, in one flat intensity buffer (and one flat
buffer of one-byte class codes) with the table from class codes to output channels, moves them
to the training device once, and there the training mode
(:meth:`~mtseg.training.mode.TrainingMode.gather`) turns a mini-batch of indices into triplanar
patches (:meth:`TrainingVolumes.planes`) or cube contexts and codes (:meth:`TrainingVolumes.cubes`)
with one vectorised ``torch.take`` or ``index_select`` each: no volume crosses to a GPU after the
first step, only a few kilobytes of indices per mini-batch, and no Python runs per sample.

On the CPU the buffers are the prepared volumes themselves: building them rebinds every
subject's padded volume, image and class codes as views into them, so nothing is held twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchio as tio

from mtseg.data.preprocessing import IMAGE
from mtseg.data.sampling import CLASS_INDEX, NOT_ELIGIBLE, VOLUME, VOLUME_ID
from mtseg.data.triplanar import TriplanarVolume
from mtseg.tasks import LabelSpace

#: Target of voxels the loss ignores (at or below the task's threshold); ``F.cross_entropy``'s default.
IGNORE = -100


class TrainingVolumes:
    """Every training volume of an experiment in one flat buffer, gathering mini-batches on its device.

    Args:
        subjects: Prepared training subjects (all tasks). Each gets its index in this list
            under :data:`~mtseg.data.sampling.VOLUME_ID`, the ``volume_id`` of the queue items.
        depth: The padding of the volumes (the model's depth).
        channels: ``(T, 256)`` task-local class code to output channel (``IGNORE`` at or below the
            threshold) for each task of the experiment (:func:`channel_table`).
    """

    def __init__(self, subjects: Sequence[tio.Subject], depth: int, channels: torch.Tensor):
        volumes: list[TriplanarVolume] = [s[VOLUME] for s in subjects]
        if any(v.radius != depth for v in volumes):
            raise ValueError(f"every training volume must be padded by {depth} voxels")
        self.depth = depth
        self.channels = channels
        sizes = torch.tensor([v.padded.numel() for v in volumes])
        code_sizes = torch.tensor([s[CLASS_INDEX].codes.numel() for s in subjects])
        self.offsets = torch.cumsum(sizes, 0) - sizes
        self.code_offsets = torch.cumsum(code_sizes, 0) - code_sizes
        self.shapes = torch.tensor([v.shape for v in volumes], dtype=torch.long)  # (S, 3) unpadded
        self.intensities = torch.empty(int(sizes.sum()))
        self.codes = torch.empty(int(code_sizes.sum()), dtype=torch.uint8)
        for index, (subject, volume) in enumerate(zip(subjects, volumes)):  # once per run, per volume
            start, shape = int(self.offsets[index]), volume.padded.shape
            view = self.intensities[start : start + volume.padded.numel()].view(shape)
            view.copy_(volume.padded)
            volume.padded = view
            subject[IMAGE].set_data(volume.interior[None])
            class_index = subject[CLASS_INDEX]
            start = int(self.code_offsets[index])
            codes = self.codes[start : start + class_index.codes.numel()]
            codes.copy_(class_index.codes)
            class_index.codes = codes
            subject[VOLUME_ID] = index
        self._on: dict[torch.device, TrainingVolumes] = {self.device: self}

    @property
    def device(self) -> torch.device:
        return self.intensities.device

    def to(self, device: torch.device | str) -> TrainingVolumes:
        """These volumes on ``device`` (copied there once, then kept)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._on:
            moved = object.__new__(TrainingVolumes)
            moved.__dict__.update(
                {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in self.__dict__.items()}
            )
            self._on[device] = moved
        return self._on[device]

    def _padded_strides(self, volume_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample: its volume's offset in the buffer and the x and y strides of its padded volume."""
        shape = self.shapes[volume_id] + 2 * self.depth
        return self.offsets[volume_id], shape[:, 1] * shape[:, 2], shape[:, 2]

    def planes(self, volume_id: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Triplanar patches ``(B, 3, P, P)`` centred on voxel ``centre`` (flat, unpadded) of volume ``volume_id``
        (as :meth:`TriplanarVolume.extract`)."""
        offset, x_stride, y_stride = (s.view(-1, 1, 1) for s in self._padded_strides(volume_id))
        ny, nz = self.shapes[volume_id, 1].view(-1, 1, 1), self.shapes[volume_id, 2].view(-1, 1, 1)
        centre = centre.view(-1, 1, 1)
        i, j, k = centre // (ny * nz), centre // nz % ny, centre % nz
        r = self.depth
        base = offset + (i + r) * x_stride + (j + r) * y_stride + (k + r)
        steps = torch.arange(-r, r + 1, device=centre.device)
        rows, columns = steps.view(1, -1, 1), steps.view(1, 1, -1)
        index = torch.stack(
            [
                rows * x_stride + columns * y_stride,  # axial: x rows, y columns
                rows * y_stride + columns,  # sagittal: y rows, z columns
                rows * x_stride + columns,  # coronal: x rows, z columns
            ],
            dim=1,
        ) + base[:, None]
        return self.intensities.take(index)

    def cubes(self, volume_id: torch.Tensor, start: torch.Tensor, cube: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(B, S, S, S)`` contexts (``S = cube + 2·depth``) and ``(B, k, k, k)`` class codes of the cubes
        of ``k = cube`` target voxels per side whose first target voxel is ``start`` ``(B, 3)`` in volume
        ``volume_id``: the slices ``padded[sx : sx + S, sy : sy + S, sz : sz + S]`` of each volume and the
        codes of its target voxels."""
        offset, x_stride, y_stride = (s.view(-1, 1, 1, 1) for s in self._padded_strides(volume_id))
        sx, sy, sz = (s.view(-1, 1, 1, 1) for s in start.unbind(1))
        side = cube + 2 * self.depth
        steps = torch.arange(side, device=start.device)
        x, y, z = steps.view(1, -1, 1, 1), steps.view(1, 1, -1, 1), steps.view(1, 1, 1, -1)
        # rows along z are contiguous: index the buffer's windows of `side` voxels (a view, no copy) by the
        # first voxel of every row, B·S² indices instead of B·S³
        rows = (offset + (sx + x) * x_stride + (sy + y) * y_stride + sz).reshape(-1)
        context = self.intensities.unfold(0, side, 1).index_select(0, rows).view(len(start), side, side, side)
        k = cube
        x, y, z = x[:, :k], y[:, :, :k], z[..., :k]
        ny, nz = self.shapes[volume_id, 1].view(-1, 1, 1, 1), self.shapes[volume_id, 2].view(-1, 1, 1, 1)
        codes = self.codes.take(self.code_offsets[volume_id].view(-1, 1, 1, 1) + ((sx + x) * ny + (sy + y)) * nz + (sz + z))
        return context, codes


def channel_table(label_space: LabelSpace) -> torch.Tensor:
    """``(T, 256)``: for each task of the experiment, its class code to the experiment's output channel,
    :data:`IGNORE` for :data:`~mtseg.data.sampling.NOT_ELIGIBLE` (at or below the threshold). The one
    table by which both modes map labels to channels, on the training device."""
    table = torch.full((len(label_space.tasks), NOT_ELIGIBLE + 1), IGNORE, dtype=torch.long)
    for task_id, task in enumerate(label_space.tasks):
        channels = label_space.global_labels(task)
        table[task_id, : len(channels)] = channels
    return table
