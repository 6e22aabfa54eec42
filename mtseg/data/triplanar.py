"""Triplanar patches: the axial, sagittal and coronal planes through a voxel.

Volumes are in canonical RAS voxel order ``(x, y, z)``. The three planes through
voxel ``(i, j, k)`` and their 2-D axis order are

- axial:    ``volume[i-r:i+r+1, j-r:j+r+1, k]``  (axes x, y)
- sagittal: ``volume[i, j-r:j+r+1, k-r:k+r+1]``  (axes y, z)
- coronal:  ``volume[i-r:i+r+1, j, k-r:k+r+1]``  (axes x, z)

Dense inference runs the convolution stack over whole slices cut the same way,
so the two agree voxel for voxel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Samples gathered per call of ``torch.take``; bounds the temporary index tensor.
GATHER_CHUNK = 512


class TriplanarVolume:
    """One preprocessed volume, padded once, from which triplanar patches are gathered.

    Args:
        image: ``(X, Y, Z)`` normalised intensities.
        radius: Half the patch side (patch side ``2·radius + 1``); the model's depth.
        pad_value: Intensity outside the volume, in normalised units.
    """

    def __init__(self, image: torch.Tensor, radius: int, pad_value: float = 0.0):
        if image.ndim != 3:
            raise ValueError(f"expected a 3-D volume, got shape {tuple(image.shape)}")
        self.shape = tuple(image.shape)
        self.radius = radius
        self.padded = F.pad(image.float()[None, None], (radius,) * 6, value=pad_value)[0, 0]
        _, sy, sz = self.padded.shape
        offsets = torch.arange(-radius, radius + 1)
        x = offsets[:, None] * (sy * sz)
        y = offsets[:, None] * sz
        self._plane_offsets = torch.stack(
            [
                x + offsets[None, :] * sz,  # axial: x rows, y columns
                y + offsets[None, :],  # sagittal: y rows, z columns
                x + offsets[None, :],  # coronal: x rows, z columns
            ]
        )

    @property
    def interior(self) -> torch.Tensor:
        """The unpadded volume, as a view of the padded one (no copy)."""
        r = self.radius
        return self.padded[r:-r, r:-r, r:-r]

    @property
    def patch_size(self) -> int:
        return 2 * self.radius + 1

    def padded_flat_index(self, flat_index: torch.Tensor) -> torch.Tensor:
        """Map flat indices of the unpadded volume to flat indices of the padded one."""
        _, sy, sz = self.padded.shape
        ny, nz = self.shape[1], self.shape[2]
        i, rest = torch.div(flat_index, ny * nz, rounding_mode="floor"), flat_index % (ny * nz)
        j, k = torch.div(rest, nz, rounding_mode="floor"), rest % nz
        r = self.radius
        return ((i + r) * sy + (j + r)) * sz + (k + r)

    def cube_start(self, flat_index: torch.Tensor, cube: int) -> torch.Tensor:
        """``(N, 3)`` first voxel of the ``cube³`` cube around each voxel, kept inside the volume.

        The voxel sits at the cube's centre where it can; near the volume's borders the cube
        is shifted inwards so all its target voxels lie inside the volume (each side must
        hold at least ``cube`` voxels).
        """
        nx, ny, nz = self.shape
        if min(self.shape) < cube:
            raise ValueError(f"a volume of shape {self.shape} cannot hold a cube of {cube}^3 voxels")
        flat_index = flat_index.long()
        i, rest = torch.div(flat_index, ny * nz, rounding_mode="floor"), flat_index % (ny * nz)
        j, k = torch.div(rest, nz, rounding_mode="floor"), rest % nz
        centre = torch.stack([i, j, k], dim=1)
        upper = torch.tensor([nx - cube, ny - cube, nz - cube])
        return torch.minimum((centre - cube // 2).clamp_min(0), upper)

    def extract(self, flat_index: torch.Tensor) -> torch.Tensor:
        """Triplanar patches ``(N, 3, P, P)`` centred on the given flat voxel indices."""
        centres = self.padded_flat_index(flat_index.long())
        out = torch.empty((len(centres), 3, self.patch_size, self.patch_size))
        for start in range(0, len(centres), GATHER_CHUNK):
            chunk = centres[start : start + GATHER_CHUNK]
            out[start : start + len(chunk)] = torch.take(
                self.padded, chunk[:, None, None, None] + self._plane_offsets[None]
            )
        return out
