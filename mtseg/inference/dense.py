"""Dense whole-volume inference: the shared stack over whole padded slices (paper §3.1, §5).

Because the stack has no padding and no pooling and the head is 1×1, running the stack
over a whole slice padded by ``depth`` voxels gives, at every voxel, exactly the features
that the voxel's own 51×51 patch would give. Gathering the axial, sagittal and coronal
features of every voxel and applying the head therefore equals patch-by-patch inference
(in eval mode), at a fraction of the cost.

The volume is processed in slabs of axial slices so memory stays bounded: for a slab of
``n`` slices, the sagittal and coronal slices are cropped to the slab plus ``depth`` slices
on either side and their features kept (channels last, in the inference precision), then
the axial slices run a few at a time, each followed at once by the head over its voxels.
Only the label map and the requested probability channels are kept. With a mask, only the
mask's bounding box (per slab) is computed.

The network runs as a copy with its batch normalisations folded into the convolutions
(:meth:`mtseg.model.TriplanarCNN.folded`, exact in eval mode), built once per call, in fp32
or, with ``precision="bf16"``, with most of the stack in bfloat16 (:func:`inference_network`;
``conf/predict.yaml`` says what that changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mtseg.data.triplanar import TriplanarVolume
from mtseg.defaults import conf_defaults
from mtseg.model import TriplanarCNN
from mtseg.runtime.bf16 import native_bf16

#: Values of ``precision`` (``conf/predict.yaml``): ``auto`` is bf16 where the device computes it natively.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype dense inference runs in for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


class _Cast(nn.Module):
    """Casts its input to ``dtype``: where the precision of a mixed-precision network changes."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)

    def extra_repr(self) -> str:
        return str(self.dtype)


def inference_network(net: TriplanarCNN, dtype: torch.dtype = torch.float32) -> TriplanarCNN:
    """What dense inference runs: an eval-mode copy of ``net`` with folded batch normalisations
    (:meth:`~mtseg.model.TriplanarCNN.folded`); ``net`` itself is not changed.

    In bf16 (``dtype=torch.bfloat16``) the stack's 3×3 convolutions after the first run in bf16,
    which holds most of the work; the first convolution, whose input is the intensities
    (bf16 keeps 8 significant bits), and the 1×1 head stay fp32. Measured with a trained
    network on phantom brains, that halved the voxels labelled differently from fp32 compared
    with all of it in bf16 (``conf/predict.yaml``).
    """
    folded = net.folded()
    if dtype != torch.float32:
        layers = list(folded.features)  # conv, ELU, conv, ELU, ...
        folded.features = nn.Sequential(*layers[:2], _Cast(dtype), *(layer.to(dtype) for layer in layers[2:]))
        folded.head = nn.Sequential(_Cast(torch.float32), *folded.head)
    return folded


def _features(net: TriplanarCNN, slices: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """The shared stack on ``(N, H, W)`` padded slices, ``batch`` at a time: ``(N, H-2d, W-2d, width)``
    in ``dtype`` (the stack's output's: see :func:`inference_network`).

    Channels last, as the stack computes them (a contiguous copy, no transposition), written
    into one preallocated tensor so the features are never held twice.
    """
    n, height, width = slices.shape
    d = net.depth
    device = next(net.parameters()).device
    out = torch.empty((n, height - 2 * d, width - 2 * d, net.width), dtype=dtype, device=device)
    for i in range(0, n, batch):
        x = slices[i : i + batch, None].to(device)  # fp32 intensities: the first convolution is fp32
        out[i : i + batch] = net.features(x).permute(0, 2, 3, 1)
    return out


def _segment_box(
    net: TriplanarCNN,
    volume: TriplanarVolume,
    box: tuple[int, int, int, int, int, int],
    dtype: torch.dtype,
    slice_batch: int,
    labels: torch.Tensor,
    probabilities: torch.Tensor | None,
    channels: tuple[int, ...],
) -> None:
    """Label (and probabilities of ``channels``) of the voxels ``x0:x1, y0:y1, z0:z1`` of ``box``, written in place."""
    x0, x1, y0, y1, z0, z1 = box
    r = volume.radius
    # the box with the context its voxels' patches need
    context = volume.padded[x0 : x1 + 2 * r, y0 : y1 + 2 * r, z0 : z1 + 2 * r]
    # sagittal: x fixed, slice axes (y, z); coronal: y fixed, slice axes (x, z)
    sagittal = _features(net, context[r:-r], slice_batch, dtype)  # (X, Y, n, W)
    coronal = _features(net, context[:, r:-r].permute(1, 0, 2), slice_batch, dtype)  # (Y, X, n, W)
    axial_slices = context[:, :, r:-r].permute(2, 0, 1)  # z fixed, slice axes (x, y)
    for k0 in range(0, z1 - z0, slice_batch):
        axial = _features(net, axial_slices[k0 : k0 + slice_batch], slice_batch, dtype)  # (b, X, Y, W)
        # the head one axial slice at a time: the 3·width features and the head's activations
        # never span more than a slice
        for j, k in enumerate(range(k0, k0 + len(axial))):
            features = torch.cat([axial[j], sagittal[:, :, k], coronal[:, :, k].transpose(0, 1)], dim=-1)
            # (X, Y, 3W), planes in the order of TriplanarCNN.forward; as (1, 3W, X, Y) channels last
            logits = net.classify_features(features.permute(2, 0, 1)[None])[0].permute(1, 2, 0).float()
            p = logits.softmax(-1)  # (X, Y, C)
            labels[x0:x1, y0:y1, z0 + k] = p.argmax(-1).to(torch.uint8)
            if probabilities is not None:
                probabilities[:, x0:x1, y0:y1, z0 + k] = p[..., list(channels)].permute(2, 0, 1)


def _extent(inside: torch.Tensor, axis: int) -> tuple[int, int]:
    """First and one past the last index along ``axis`` where ``inside`` (3-D, bool) has a voxel."""
    where = inside.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()
    return int(where[0]), int(where[-1]) + 1


def _slab_starts(nz: int, slab: int, progress: bool | None, n_voxels: int, desc: str):
    if slab < 1:
        raise ValueError(f"slab must be positive, got {slab}")
    starts = range(0, nz, slab)
    if progress is None:
        progress = n_voxels >= PROGRESS_MIN_VOXELS
    if progress:
        from tqdm.auto import tqdm

        return tqdm(starts, desc=desc, unit="slab")
    return starts


#: Volumes with at least this many voxels show a progress bar unless told otherwise
#: (about 10 s with the paper's network on 2 CPU cores).
PROGRESS_MIN_VOXELS = 400_000


@dataclass
class DenseOutput:
    """Dense inference result of one volume.

    Attributes:
        labels: ``(X, Y, Z)`` uint8 output channel of the highest probability; 0 outside ``mask``.
        probabilities: ``(K, X, Y, Z)`` float32 probabilities of the requested channels
            (0 outside ``mask``), or ``None`` when none were requested.
        channels: The output channels in ``probabilities``.
    """

    labels: torch.Tensor
    probabilities: torch.Tensor | None
    channels: tuple[int, ...]


@torch.no_grad()
def segment_volume(
    net: TriplanarCNN,
    volume: TriplanarVolume,
    mask: torch.Tensor | None = None,
    channels: Sequence[int] | None = (),
    slab: int | None = None,
    slice_batch: int = 4,
    progress: bool | None = None,
    slab_voxels: int | None = None,
    precision: str = "fp32",
) -> DenseOutput:
    """Label map and selected probabilities of every voxel, one slab at a time.

    Only the label map (1 byte per voxel) and the requested probability channels are
    kept, so a 256³ volume stays within a few GB whatever the number of classes.
    ``net`` runs as an eval-mode copy with folded batch normalisations, built once per
    call (:func:`inference_network`): ``net`` itself, its mode and parameters, is not changed.

    Args:
        net: The network (its running statistics are used: eval mode).
        volume: The preprocessed volume, padded by ``net.depth``.
        mask: ``(X, Y, Z)`` voxels the network may label (the sampling mask: it never saw
            others in training); voxels outside are background with probability 0 for
            every kept foreground channel, and only the mask's bounding box in each slab
            is computed. ``None``: every voxel.
        channels: Output channels whose probabilities to keep; ``None`` keeps all.
        slab: Axial slices per slab; ``None``: as many as fit in ``slab_voxels`` voxels
            (slabs of equal thickness).
        slice_batch: 2-D slices run through the stack at once.
        progress: Show a progress bar over slabs; ``None``: for volumes of at least
            :data:`PROGRESS_MIN_VOXELS` voxels.
        slab_voxels: Voxels per slab in fp32 when ``slab`` is ``None``; in bf16, whose
            features take half the memory, twice as many. The sagittal and coronal stacks
            run over the slab plus ``depth`` slices on either side, so thin slabs repeat
            work (16 slices: 4x the sagittal and coronal work of the slab itself); memory is
            about 260 bytes per fp32 slab voxel (the sagittal and coronal features, 2 x width
            float32 values a voxel), plus the activations of ``slice_batch`` slices.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where the device computes
            it natively): bf16 runs the stack's 3×3 convolutions after the first in bf16
            and keeps their features in bf16 (see :func:`inference_network`); the first
            convolution, the head and the softmax are fp32 either way.
    """
    if volume.radius != net.depth:
        raise ValueError(f"volume padded by {volume.radius} voxels, the network needs {net.depth}")
    nx, ny, nz = volume.shape
    if mask is not None and tuple(mask.shape) != (nx, ny, nz):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the volume's {volume.shape}")
    channels = tuple(range(net.n_classes)) if channels is None else tuple(int(c) for c in channels)
    if net.n_classes > 256:
        raise ValueError(f"uint8 label maps hold at most 256 classes, the network has {net.n_classes}")
    dtype = inference_dtype(precision, next(net.parameters()).device)
    # background everywhere until computed: outside the mask's bounding box nothing is
    labels = torch.zeros((nx, ny, nz), dtype=torch.uint8)
    probabilities = None
    if channels:
        probabilities = torch.zeros((len(channels), nx, ny, nz))
        for k, c in enumerate(channels):
            if c == 0:
                probabilities[k] = 1.0
    inside = None if mask is None else mask.bool()
    if inside is not None and not inside.any():
        return DenseOutput(labels, probabilities, channels)
    z_start, z_end = (0, nz) if inside is None else _extent(inside, 2)
    box_x = (0, nx) if inside is None else _extent(inside, 0)
    box_y = (0, ny) if inside is None else _extent(inside, 1)
    depth = z_end - z_start
    if slab is None:
        if slab_voxels is None:  # the evaluation's setting (conf/evaluation/whole_image.yaml)
            slab_voxels = int(conf_defaults("evaluation/whole_image.yaml")["slab_voxels"])
        voxels = slab_voxels * 4 // dtype.itemsize  # the memory of slab_voxels fp32 voxels
        thickest = max(1, min(depth, voxels // ((box_x[1] - box_x[0]) * (box_y[1] - box_y[0]))))
        slab = -(-depth // -(-depth // thickest))  # as many slabs as needed, of equal thickness
    network = inference_network(net, dtype)  # once per call: never stale after a training step
    for start in _slab_starts(depth, slab, progress, nx * ny * nz, "Dense inference"):
        z0, z1 = z_start + start, min(z_start + start + slab, z_end)
        (x0, x1), (y0, y1) = box_x, box_y
        if inside is not None:
            in_slab = inside[:, :, z0:z1]
            if not in_slab.any():  # nothing to label: background
                continue
            (x0, x1), (y0, y1) = _extent(in_slab, 0), _extent(in_slab, 1)
        _segment_box(network, volume, (x0, x1, y0, y1, z0, z1), dtype, slice_batch, labels, probabilities, channels)
    if inside is not None:
        outside = ~inside
        labels[outside] = 0
        if probabilities is not None:
            for k, c in enumerate(channels):
                probabilities[k][outside] = 1.0 if c == 0 else 0.0
    return DenseOutput(labels, probabilities, channels)


@torch.no_grad()
def dense_probabilities(
    net: TriplanarCNN,
    volume: TriplanarVolume,
    slab: int | None = None,
    slice_batch: int = 4,
    progress: bool | None = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Softmax probabilities ``(C, X, Y, Z)`` of every voxel of ``volume`` (on the CPU), no mask."""
    return segment_volume(net, volume, None, None, slab, slice_batch, progress, precision=precision).probabilities


@torch.no_grad()
def patch_probabilities(net: TriplanarCNN, volume: TriplanarVolume, flat_index: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Softmax probabilities ``(N, C)`` of the given voxels, one triplanar patch each (the slow way)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    try:
        out = [
            net(volume.extract(flat_index[i : i + batch]).to(device)).softmax(1).cpu()
            for i in range(0, len(flat_index), batch)
        ]
    finally:
        net.train(was_training)
    return torch.cat(out)
