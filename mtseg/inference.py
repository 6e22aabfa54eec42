"""Dense whole-volume inference: the shared stack over whole padded slices (paper §3.1, §5).

Because the stack has no padding and no pooling and the head is 1×1, running the stack
over a whole slice padded by ``depth`` voxels gives, at every voxel, exactly the features
that the voxel's own 51×51 patch would give. Gathering the axial, sagittal and coronal
features of every voxel and applying the head therefore equals patch-by-patch inference
(in eval mode), at a fraction of the cost.

The volume is processed in slabs of axial slices so memory stays bounded: for a slab of
``n`` slices, the axial slices are run as they are, the sagittal and coronal slices are
cropped to the slab plus ``depth`` slices on either side.
"""

from __future__ import annotations

import torch

from mtseg.data.triplanar import TriplanarVolume
from mtseg.model import TriplanarCNN


def _stack(net: TriplanarCNN, slices: torch.Tensor, batch: int) -> torch.Tensor:
    """The shared stack on ``(N, H, W)`` padded slices, ``batch`` at a time: ``(N, width, H-2d, W-2d)``."""
    return torch.cat([net.features(slices[i : i + batch, None]) for i in range(0, len(slices), batch)])


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
    features_axial = _stack(net, axial, slice_batch).permute(1, 2, 3, 0)  # (W, X, Y, n)
    # sagittal: x fixed, slice axes (y, z), cropped to the slab plus its margins
    sagittal = padded[r:-r, :, z0 : z1 + 2 * r].to(device)
    features_sagittal = _stack(net, sagittal, slice_batch).permute(1, 0, 2, 3)  # (W, X, Y, n)
    # coronal: y fixed, slice axes (x, z)
    coronal = padded[:, r:-r, z0 : z1 + 2 * r].permute(1, 0, 2).to(device)
    features_coronal = _stack(net, coronal, slice_batch).permute(1, 2, 0, 3)  # (W, X, Y, n)
    features = torch.cat([features_axial, features_sagittal, features_coronal])  # (3W, X, Y, n)
    # the head one axial slice at a time: its 192-wide activations never span the whole slab
    return torch.stack([net.classify_features(features[None, ..., k])[0] for k in range(z1 - z0)], dim=-1)


@torch.no_grad()
def dense_probabilities(
    net: TriplanarCNN,
    volume: TriplanarVolume,
    slab: int = 32,
    slice_batch: int = 4,
    progress: bool = False,
) -> torch.Tensor:
    """Softmax probabilities ``(C, X, Y, Z)`` of every voxel of ``volume`` (on the CPU).

    Args:
        net: The network; put in eval mode for the call.
        volume: The preprocessed volume, padded by ``net.depth``.
        slab: Axial slices per slab; memory grows with it, the margin overhead shrinks.
        slice_batch: 2-D slices run through the stack at once.
        progress: Show a progress bar over slabs.
    """
    if volume.radius != net.depth:
        raise ValueError(f"volume padded by {volume.radius} voxels, the network needs {net.depth}")
    if slab < 1:
        raise ValueError(f"slab must be positive, got {slab}")
    was_training = net.training
    net.eval()
    nx, ny, nz = volume.shape
    probabilities = torch.empty((net.n_classes, nx, ny, nz))
    starts = range(0, nz, slab)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Dense inference", unit="slab")
    try:
        for z0 in starts:
            z1 = min(z0 + slab, nz)
            probabilities[..., z0:z1] = slab_logits(net, volume, z0, z1, slice_batch).softmax(0).cpu()
    finally:
        net.train(was_training)
    return probabilities


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
