"""Phantoms stay byte-identical: SHA-256 of generated arrays and written files against references.

The reference checksums below were taken on 2026-11-30 from the single-file module
``mtseg/data/phantoms.py`` before it was split into the package ``mtseg/data/phantoms/``
(a successor of commit f87160b: the file as committed in fc3be93). A change here means the
generated data changed: if that is intended, bump ``GENERATOR_VERSION`` (it is part of the data
set cache key) and retake them.

Arrays are hashed as raw bytes (``tobytes()``). Written ``.nii.gz`` files are hashed twice: the
decompressed NIfTI bytes (header and voxels, independent of the zlib build) and the gzip file as
written (the same for the same zlib build; nibabel writes no file name and an mtime of 0).
"""

import gzip
import hashlib
from pathlib import Path

import pytest

from mtseg.data.phantoms import PhantomSpec, default_spec, generate_phantom, write_phantom_dataset

# Small grids with about the default field of view of each task.
SMALL = {
    "brain": PhantomSpec("brain", (40, 48, 40), 2.4),
    "breast": PhantomSpec("breast", (40, 32, 32), 3.3),
    "cta": PhantomSpec("cta", (40, 40, 32), 1.4),
}

# (task, grid, seed):
#     (image dtype, shape, image SHA-256, label dtype, label SHA-256, affine SHA-256)
ARRAYS = {
    ("brain", "small", 0): (
        "float32",
        (40, 48, 40),
        "6f72e35d71bffa5d769aab8aa3d243b1f2a0a7a88d987d9b2058511fccd7f899",
        "uint8",
        "183b3cf91689dcb4608395e476277dc4ac464abf1a6aa5f1089335d9d8c4e6f5",
        "d5d5713dd09fe6cc2f1ce34a250ad834de28e3efdcdabba0fda6c7972d6c8224",
    ),
    ("brain", "small", 7): (
        "float32",
        (40, 48, 40),
        "f228ece2143964292a2789397f4f9d14a3acf63917db64ab369a770cbda16d1e",
        "uint8",
        "b582029480d8c030138a297f8f020a634f0eeb613602070ae6f20996e4c3904f",
        "d5d5713dd09fe6cc2f1ce34a250ad834de28e3efdcdabba0fda6c7972d6c8224",
    ),
    ("breast", "small", 0): (
        "float32",
        (40, 32, 32),
        "d28324b3262d065e9e38f9f2c33848ee304ee9080dee66cfc30e68486e16fabd",
        "uint8",
        "edf4e5f171102d50739d0e7f222793842b39fbf55d3f5488b289850ff775dbc5",
        "2e26b5b735d260eea346e2612f6c560ead473f3888627e89263c3a2501b9e30b",
    ),
    ("breast", "small", 7): (
        "float32",
        (40, 32, 32),
        "b93851205ea98f2097725edc965f79b3b6e82696514157b6fe3fa02a53e9467a",
        "uint8",
        "f24593fdbb598ef0e85b45ccd0f83f09195b56477c3f807a7830e1437ad8f3a0",
        "2e26b5b735d260eea346e2612f6c560ead473f3888627e89263c3a2501b9e30b",
    ),
    ("cta", "small", 0): (
        "float32",
        (40, 40, 32),
        "247cd2251200560e8a79a7f98568ab3366be384cd13b5f5906ed00afbaf5ac1a",
        "uint8",
        "66772ec0885b4df6e32ab7b8a7f6205da0c127277d7881c76a48011d22464a37",
        "793a6c777d3ac1ca8cbb8d32d2543a5d39dd03ad0d7e16fbbc3220198b70f39d",
    ),
    ("cta", "small", 7): (
        "float32",
        (40, 40, 32),
        "b303e5f4887519bec6c838c7357b864cb3af8038f4e4c9f5431bd7f35ee2a3fb",
        "uint8",
        "439d930ccba2eb54e995ecf803c1895d8c6c734d2d54ca166c36f580ec8c0eaf",
        "793a6c777d3ac1ca8cbb8d32d2543a5d39dd03ad0d7e16fbbc3220198b70f39d",
    ),
    ("brain", "default", 0): (
        "float32",
        (96, 112, 96),
        "861563af785c30b6cb139b23bf36fe0b9e0296323e925f2665f235b85e80937b",
        "uint8",
        "6d52eca27fd9d45ced6b1e06528d077b7857e98d0b5755472cdfc9709ecbb77c",
        "34d91ce229d047db99d981e759742eeea03ada5f27dee4bde85a238f4239e738",
    ),
    ("breast", "default", 0): (
        "float32",
        (112, 80, 64),
        "f37b6254a697047389ea31732161a003972cf1648ff876a6457e6c97465c9ce5",
        "uint8",
        "6347324e09f6ea89f14d8bc5dc60c9f984b0a73977fdaa2173044584dcd7554f",
        "1aeec0825baee28d7ba2d3428c919ad5438dde32266de0a3a75f61bbf428cdf7",
    ),
    ("cta", "default", 0): (
        "float32",
        (128, 128, 96),
        "3cd43cd29fcc22db335c8d38f1a9750b67714fa93fd9c5c26e85d4ec5443f1e5",
        "uint8",
        "083c2567065e9de9e89455de66e0f37af47af82e5025d2429e34b79776e906ed",
        "5bebba32feb2ac1a3445b7d4a89da78ecc69cce332ecd165934f4036f99261a0",
    ),
}

# write_phantom_dataset("brain", root, 2, 3, shape=(40, 48, 40), spacing=2.4):
# path under root: (SHA-256 of the file, SHA-256 of its decompressed bytes; the same for JSON)
FILES = {
    "brain-1cb634d92e61/images/brain_000.nii.gz": (
        "d2ee9feea19ad1842d84b919a6b750fb209f3b055c815c099242405b017ce96b",
        "8abd0421423d74c74009e0f4f9fb95b237dccd0fec823c2712678e0756a3d213",
    ),
    "brain-1cb634d92e61/images/brain_001.nii.gz": (
        "775a3c70706e26685283c6118d4f5852f10062ddd256bdc2107a6e2f6a77e917",
        "b42ae6de125e8d65ce56e0ce63bb0f1c34697cb4263e8750a64cfd0d9a221ea2",
    ),
    "brain-1cb634d92e61/labels/brain_000.nii.gz": (
        "b32822fdc6c2ad65c36bd462f6f556587c3238507c900ecaabcc31d3c1e6e7cc",
        "0c4d29cca96cba26388b16d093e66d417c6f70a7febae69a1a8ea76fefa89378",
    ),
    "brain-1cb634d92e61/labels/brain_001.nii.gz": (
        "11da753733b67e9a75f747afd11829eb9d890b0509eebd5e3b179cc484e298e2",
        "84323dc716ec648d9a5c8936a22deebed5e22da91f81ed04bfb7f0fc18efb833",
    ),
    "brain-1cb634d92e61/params.json": (
        "4a8ca80f9b41614c17c8dc0988242a768e6cb9c66114df105bb312336d26a498",
        "4a8ca80f9b41614c17c8dc0988242a768e6cb9c66114df105bb312336d26a498",
    ),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("task, grid, seed", list(ARRAYS), ids=lambda value: str(value))
def test_generated_arrays_match_the_reference_checksums(task, grid, seed):
    spec = SMALL[task] if grid == "small" else default_spec(task)
    image, label, affine = generate_phantom(spec, seed)
    image_dtype, shape, image_sha, label_dtype, label_sha, affine_sha = ARRAYS[task, grid, seed]
    assert (str(image.dtype), image.shape) == (image_dtype, shape)
    assert (str(label.dtype), label.shape) == (label_dtype, shape)
    assert (str(affine.dtype), affine.shape) == ("float64", (4, 4))
    assert sha256(affine.tobytes()) == affine_sha
    assert sha256(label.tobytes()) == label_sha
    assert sha256(image.tobytes()) == image_sha


def test_written_dataset_files_match_the_reference_checksums(tmp_path):
    write_phantom_dataset("brain", tmp_path, 2, 3, shape=(40, 48, 40), spacing=2.4, progress=False)
    written = {
        str(path.relative_to(tmp_path).as_posix()): path.read_bytes()
        for path in sorted(tmp_path.rglob("*"))
        if path.is_file()
    }
    assert sorted(written) == sorted(FILES)
    for name, data in written.items():
        file_sha, content_sha = FILES[name]
        content = gzip.decompress(data) if Path(name).suffix == ".gz" else data
        assert sha256(content) == content_sha, name
        assert sha256(data) == file_sha, name
