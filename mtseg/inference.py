"""Dense whole-volume inference: the shared stack over whole padded slices (paper §3.1, §5).

Because the stack has no padding and no pooling and the head is 1×1, running the stack
over a whole slice padded by ``depth`` voxels gives, at every voxel, exactly the features
that the voxel's own 51×51 patch would give. Gathering the axial, sagittal and coronal
features of every voxel and applying the head therefore equals patch-by-patch inference
(in eval mode), at a fraction of the cost.

The volume is processed in slabs of axial slices so memory stays bounded: for a slab of
``n`` slices, the axial slices are run as they are, the sagittal and coronal slices are
cropped to the slab plus ``depth`` slices on either side, and the head runs one axial
slice at a time. Only the label map and the requested probability channels are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtseg.data.triplanar import TriplanarVolume
from mtseg.defaults import conf_defaults
from mtseg.model import TriplanarCNN


def _stack(net: TriplanarCNN, slices: torch.Tensor, batch: int) -> torch.Tensor:
    """The shared stack on ``(N, H, W)`` padded slices, ``batch`` at a time: ``(N, width, H-2d, W-2d)``.

    Written into one preallocated tensor, so the features are never held twice.
    """
    n, height, width = slices.shape
    d = net.depth
    out = torch.empty((n, net.width, height - 2 * d, width - 2 * d), device=slices.device)
    for i in range(0, n, batch):
        out[i : i + batch] = net.features(slices[i : i + batch, None])
    return out


@torch.no_grad()
def slab_logits(net: TriplanarCNN, volume: TriplanarVolume, z0: int, z1: int, slice_batch: int = 4) -> torch.Tensor:
    """Class logits ``(C, X, Y, z1 - z0)`` of the voxels in axial slices ``z0..z1-1``.

    Args:
        net: The network, in eval mode.
        volume: The padded volume (its radius must equal ``net.depth``).
        z0: First axial slice of the slab.
        z1: One past the last axial slice.
        slice_batch: 2-D slices run through the stack at once.
    """
    r = volume.radius
    padded = volume.padded
    device = next(net.parameters()).device
    # axial: z fixed, slice axes (x, y)
    axial = padded[:, :, z0 + r : z1 + r].permute(2, 0, 1).to(device)
    features_axial = _stack(net, axial, slice_batch)  # (n, W, X, Y)
    # sagittal: x fixed, slice axes (y, z), cropped to the slab plus its margins
    sagittal = padded[r:-r, :, z0 : z1 + 2 * r].to(device)
    features_sagittal = _stack(net, sagittal, slice_batch)  # (X, W, Y, n)
    # coronal: y fixed, slice axes (x, z)
    coronal = padded[:, r:-r, z0 : z1 + 2 * r].permute(1, 0, 2).to(device)
    features_coronal = _stack(net, coronal, slice_batch)  # (Y, W, X, n)
    # the head one axial slice at a time: the 3·width features and the head's activations
    # never span the whole slab
    logits = []
    for k in range(z1 - z0):
        features = torch.cat(
            [features_axial[k], features_sagittal[..., k].transpose(0, 1), features_coronal[..., k].permute(1, 2, 0)]
        )  # (3W, X, Y), planes in the order of TriplanarCNN.forward
        logits.append(net.classify_features(features[None])[0])
    return torch.stack(logits, dim=-1)


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
class Segmentation:
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
) -> Segmentation:
    """Label map and selected probabilities of every voxel, one slab at a time.

    Only the label map (1 byte per voxel) and the requested probability channels are
    kept, so a 256³ volume stays within a few GB whatever the number of classes.

    Args:
        net: The network; put in eval mode for the call.
        volume: The preprocessed volume, padded by ``net.depth``.
        mask: ``(X, Y, Z)`` voxels the network may label (the sampling mask: it never saw
            others in training); voxels outside are background with probability 0 for
            every kept foreground channel. ``None``: every voxel.
        channels: Output channels whose probabilities to keep; ``None`` keeps all.
        slab: Axial slices per slab; ``None``: as many as fit in ``slab_voxels`` voxels.
        slice_batch: 2-D slices run through the stack at once.
        progress: Show a progress bar over slabs; ``None``: for volumes of at least
            :data:`PROGRESS_MIN_VOXELS` voxels.
        slab_voxels: Voxels per slab when ``slab`` is ``None``. The sagittal and coronal
            stacks run over the slab plus ``depth`` slices on either side, so thin slabs
            repeat work (16 slices: 4x the sagittal and coronal work of the slab itself);
            memory is about 400 bytes per slab voxel (3 x width float32 features, plus
            the stack's activations).
    """
    if volume.radius != net.depth:
        raise ValueError(f"volume padded by {volume.radius} voxels, the network needs {net.depth}")
    nx, ny, nz = volume.shape
    if slab is None:
        if slab_voxels is None:  # the evaluation's setting (conf/evaluation/whole_image.yaml)
            slab_voxels = int(conf_defaults("evaluation/whole_image.yaml")["slab_voxels"])
        slab = max(1, min(nz, slab_voxels // (nx * ny)))
    if mask is not None and tuple(mask.shape) != (nx, ny, nz):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the volume's {volume.shape}")
    channels = tuple(range(net.n_classes)) if channels is None else tuple(int(c) for c in channels)
    if net.n_classes > 256:
        raise ValueError(f"uint8 label maps hold at most 256 classes, the network has {net.n_classes}")
    labels = torch.empty((nx, ny, nz), dtype=torch.uint8)
    probabilities = torch.empty((len(channels), nx, ny, nz)) if channels else None
    was_training = net.training
    net.eval()
    try:
        for z0 in _slab_starts(nz, slab, progress, nx * ny * nz, "Dense inference"):
            z1 = min(z0 + slab, nz)
            if mask is not None and not mask[..., z0:z1].any():  # nothing to label: background
                labels[..., z0:z1] = 0
                if probabilities is not None:
                    for k, c in enumerate(channels):
                        probabilities[k, ..., z0:z1] = 1.0 if c == 0 else 0.0
                continue
            p = slab_logits(net, volume, z0, z1, slice_batch).cpu()
            # softmax in place: no second (C, X, Y, slab) tensor
            p.sub_(p.amax(0, keepdim=True)).exp_()
            p.div_(p.sum(0, keepdim=True))
            labels[..., z0:z1] = p.argmax(0).to(torch.uint8)
            if probabilities is not None:
                probabilities[..., z0:z1] = p[list(channels)]
    finally:
        net.train(was_training)
    if mask is not None:
        outside = ~mask.bool()
        labels[outside] = 0
        if probabilities is not None:
            for k, c in enumerate(channels):
                probabilities[k][outside] = 1.0 if c == 0 else 0.0
    return Segmentation(labels, probabilities, channels)


@torch.no_grad()
def dense_probabilities(
    net: TriplanarCNN,
    volume: TriplanarVolume,
    slab: int | None = None,
    slice_batch: int = 4,
    progress: bool | None = False,
) -> torch.Tensor:
    """Softmax probabilities ``(C, X, Y, Z)`` of every voxel of ``volume`` (on the CPU), no mask."""
    return segment_volume(net, volume, None, None, slab, slice_batch, progress).probabilities


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
