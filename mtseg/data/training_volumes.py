"""The training volumes of an experiment on the training device, and the gather of mini-batches there.

The sampling pipeline (TorchIO queues, :mod:`mtseg.data.sampling`) hands over indices only:
for each sample, which training volume and which voxel (``training=patch``), or which
volume and where its cube starts (``training=dense``). :class:`TrainingVolumes` holds every
training volume of the experiment, padded, in one flat intensity buffer (and one flat
buffer of one-byte class codes), moves both to the training device once, and there turns a
mini-batch of indices into triplanar patches or cube contexts and targets with one
vectorised ``torch.take`` each: no volume crosses to a GPU after the first step, only a few
kilobytes of indices per mini-batch, and no Python runs per sample.

On the CPU the buffers are the prepared volumes themselves: building them rebinds every
subject's padded volume, image and class codes as views into them, so nothing is held twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torchio as tio

from mtseg.data.preprocessing import IMAGE
from mtseg.data.sampling import CLASS_INDEX, SUBJECT_ID, VOLUME
from mtseg.data.triplanar import TriplanarVolume


class TrainingVolumes:
    """Every training volume of an experiment in one flat buffer, gathering mini-batches on its device.

    Args:
        subjects: Prepared training subjects (all tasks). Each gets its index in this list
            under :data:`~mtseg.data.sampling.SUBJECT_ID`, the ``subject`` of the samplers' items.
        radius: The padding of the volumes (the model's depth).
        cube: Target voxels per side of a cube in ``training=dense``; ``None`` in patch mode.
        luts: ``(T, 256)`` task-local class code to output channel (``IGNORE`` at or below the
            threshold) for each task of the experiment; dense mode only.
    """

    def __init__(self, subjects: Sequence[tio.Subject], radius: int, cube: int | None = None, luts: torch.Tensor | None = None):
        volumes: list[TriplanarVolume] = [s[VOLUME] for s in subjects]
        if any(v.radius != radius for v in volumes):
            raise ValueError(f"every training volume must be padded by {radius} voxels")
        self.radius = radius
        self.cube = cube
        self.luts = luts
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
            subject[SUBJECT_ID] = index
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

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A mini-batch of indices, gathered on these volumes' device (which must be the batch's).

        ``subject`` and ``centre`` (flat voxel index) give ``planes`` ``(B, 3, P, P)``;
        ``subject`` and ``start`` ``(B, 3)`` (a cube's first target voxel) with ``task`` give
        ``context`` ``(B, S, S, S)`` and ``target`` ``(B, k, k, k)``. The other entries pass through.
        """
        if "centre" in batch:
            return {**batch, "planes": self.planes(batch["subject"], batch["centre"])}
        if "start" in batch:
            context, codes = self.cubes(batch["subject"], batch["start"])
            return {**batch, "context": context, "target": self.luts[batch["task"].view(-1, 1, 1, 1), codes.long()]}
        raise ValueError(f"not a mini-batch of sample indices: {sorted(batch)}")

    def _padded_strides(self, subject: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample: its volume's offset in the buffer and the x and y strides of its padded volume."""
        shape = self.shapes[subject] + 2 * self.radius
        return self.offsets[subject], shape[:, 1] * shape[:, 2], shape[:, 2]

    def planes(self, subject: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Triplanar patches ``(B, 3, P, P)`` centred on voxel ``centre`` (flat, unpadded) of volume ``subject``
        (as :meth:`TriplanarVolume.extract`)."""
        offset, x_stride, y_stride = (s.view(-1, 1, 1) for s in self._padded_strides(subject))
        ny, nz = self.shapes[subject, 1].view(-1, 1, 1), self.shapes[subject, 2].view(-1, 1, 1)
        centre = centre.view(-1, 1, 1)
        i, j, k = centre // (ny * nz), centre // nz % ny, centre % nz
        r = self.radius
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

    def cubes(self, subject: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(B, S, S, S)`` contexts (``S = cube + 2·radius``) and ``(B, k, k, k)`` class codes of the cubes
        whose first target voxel is ``start`` ``(B, 3)`` in volume ``subject``: the
        slices ``padded[sx : sx + S, sy : sy + S, sz : sz + S]`` of each volume and the codes of its target voxels."""
        if self.cube is None:
            raise ValueError("these training volumes serve triplanar samples (training=patch), not cubes")
        offset, x_stride, y_stride = (s.view(-1, 1, 1, 1) for s in self._padded_strides(subject))
        sx, sy, sz = (s.view(-1, 1, 1, 1) for s in start.unbind(1))
        side = self.cube + 2 * self.radius
        steps = torch.arange(side, device=start.device)
        x, y, z = steps.view(1, -1, 1, 1), steps.view(1, 1, -1, 1), steps.view(1, 1, 1, -1)
        # rows along z are contiguous: index the buffer's windows of `side` voxels (a view, no copy) by the
        # first voxel of every row, B·S² indices instead of B·S³
        rows = (offset + (sx + x) * x_stride + (sy + y) * y_stride + sz).reshape(-1)
        context = self.intensities.unfold(0, side, 1).index_select(0, rows).view(len(start), side, side, side)
        k = self.cube
        x, y, z = x[:, :k], y[:, :, :k], z[..., :k]
        ny, nz = self.shapes[subject, 1].view(-1, 1, 1, 1), self.shapes[subject, 2].view(-1, 1, 1, 1)
        codes = self.codes.take(self.code_offsets[subject].view(-1, 1, 1, 1) + ((sx + x) * ny + (sy + y)) * nz + (sz + z))
        return context, codes
