"""A real brain cohort from files that registry packages ship: ``python -m mtseg.data build brain-templates``.

Two skull-stripped T1 templates with six-class labels from the Neuromorphometrics atlas
(the MICCAI 2012 labelling protocol), written as an nnU-Net v2 raw data set so training
reads it through the same source as user data (``data/brain=templates``):

* ``deepmriprep==0.3.0`` ships ``Template_05mm_bet.nii.gz`` (a skull-stripped T1
  template, 0.5 mm) and ``neuromorphometrics.nii.gz`` (the atlas in MNI space, 1 mm);
* ``nilearn==0.14.1`` ships ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` (the
  MNI152 2009a T1, 1 mm, brain-extracted as shipped: intensity 0 outside the brain).

The wheels are fetched with ``pip download --no-deps`` into ``<root>/cache/wheels`` (or
taken from ``--wheels``), and only the files named in ``conf/build/brain_templates.yaml``
are unpacked with :mod:`zipfile`; neither package is installed or imported. The atlas
is mapped to the six tissues with the ``miccai2012`` scheme, resampled onto each T1 by
nearest neighbour in world coordinates (:func:`nibabel.processing.resample_from_to`),
and cut to the T1's brain (labels only where the T1 intensity is > 0, the voxels the
sampler may use). The build is cached: it is redone only when the configuration, the
mapping or the wheels change, and the data set appears in one rename when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from omegaconf import OmegaConf

from mtseg import CONFIG_DIR
from mtseg.data.label_mapping import load_scheme, scheme_path
from mtseg.data.nnunet import write_dataset
from mtseg.nifti import atomic_write_bytes

#: The builder's configuration.
BUILD_CONFIG = CONFIG_DIR / "build" / "brain_templates.yaml"
#: File in the data set that records what it was built from.
BUILD_RECORD = "mtseg_build.json"
#: Bumped when the builder's output changes for the same inputs.
BUILDER_VERSION = 1


def load_build_config(path: str | Path = BUILD_CONFIG) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """The wheel of ``package==version`` in ``folder``, if there is one."""
    found = sorted(folder.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def checked_wheel(wheel: Path) -> Path:
    """``wheel`` if it is a readable zip archive (a wheel is one); else a clear error naming it."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{wheel}: not a readable wheel (zip archive): {error}") from None
    if damaged is not None:
        raise ValueError(f"{wheel}: damaged: its member {damaged} fails its checksum")
    return wheel


def fetch_wheels(packages: Mapping[str, str], cache: Path, wheels: Path | None = None) -> dict[str, Path]:
    """The wheel of every pinned package, checked to be a readable zip archive: from ``wheels`` (a folder
    that must exist), the cache, or ``pip download --no-deps`` into the cache."""
    if wheels is not None and not wheels.is_dir():
        raise ValueError(f"--wheels {wheels}: no such folder")
    found: dict[str, Path] = {}
    for package, version in packages.items():
        wheel = find_wheel(wheels, package, version) if wheels is not None else find_wheel(cache, package, version)
        if wheel is None and wheels is not None:
            raise ValueError(f"{wheels}: no wheel of {package}=={version} (expected {package}-{version}-*.whl)")
        if wheel is None:
            cache.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--disable-pip-version-check", "--quiet", "--dest", str(cache), f"{package}=={version}",
            ]
            print(f"Fetching {package}=={version} with pip download --no-deps into {cache}")
            result = subprocess.run(command, capture_output=True, text=True)
            wheel = find_wheel(cache, package, version)
            if result.returncode != 0 or wheel is None:  # no network, say: an OSError, reported in one line
                raise OSError(
                    f"pip download of {package}=={version} failed (exit code {result.returncode}); "
                    f"without network access, put the wheel in {cache} or pass --wheels DIR\n{result.stderr[-2000:]}"
                )
        found[package] = checked_wheel(wheel)
    return found


def unpack(wheel: Path, member: str, target_root: Path) -> Path:
    """Extract one file of ``wheel`` to ``target_root/<wheel name>/<member>``; return the file."""
    target = target_root / wheel.stem / member
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ValueError(f"{wheel}: has no file {member}") from None
        target.parent.mkdir(parents=True, exist_ok=True)

        def copy(temporary):
            with archive.open(info) as source, open(temporary, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)

        atomic_write_bytes(target, copy)
    return target


def labels_on_image(labels: nib.Nifti1Image, image: nib.Nifti1Image) -> np.ndarray:
    """Six-class ``labels`` resampled by nearest neighbour onto ``image``'s grid, kept where the image is > 0."""
    # grid-constant: a voxel centre within half a voxel of the atlas' edge still takes the edge voxel's label
    on_grid = resample_from_to(labels, (image.shape[:3], image.affine), order=0, mode="grid-constant", cval=0)
    mapped = np.asarray(on_grid.dataobj).astype(np.uint8)
    mapped[np.asarray(image.dataobj) <= 0] = 0
    return mapped


def build_record(cfg: Mapping, wheels: Mapping[str, Path]) -> dict:
    """What the data set is built from: configuration, mapping scheme, wheel digests, builder version."""
    return {
        "builder_version": BUILDER_VERSION,
        "config": dict(cfg),
        "scheme": scheme_path(cfg["scheme"]).read_text(),
        "wheels": {package: {"file": wheel.name, "sha256": sha256(wheel)} for package, wheel in wheels.items()},
    }


def build_brain_templates(root: str | Path = "data", wheels: str | Path | None = None, force: bool = False, cfg: Mapping | None = None) -> Path:
    """Build (or find up to date) the brain template data set under ``root``; return its folder.

    Args:
        root: The data folder (``data/``); wheels are cached in ``root/cache/wheels``, the
            data set is written to ``root/nnunet_raw/<dataset>``.
        wheels: A folder holding the pinned wheels already (no download).
        force: Rebuild even when the data set is up to date.
        cfg: The builder configuration (default: ``conf/build/brain_templates.yaml``).
    """
    start = time.perf_counter()
    cfg = dict(cfg) if cfg is not None else load_build_config()
    root = Path(root)
    # the folders this build may create, the outer first: on any failure those it created go again
    created = [f for f in (root, root / "cache", root / "cache" / "wheels", root / "cache" / "unpacked", root / "nnunet_raw") if not f.exists()]
    try:
        return _build(root, wheels, force, cfg, start)
    except BaseException:
        for folder in reversed(created):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _build(root: Path, wheels, force: bool, cfg: dict, start: float) -> Path:
    out = root / "nnunet_raw" / cfg["dataset"]
    wheel_files = fetch_wheels(cfg["packages"], root / "cache" / "wheels", Path(wheels) if wheels else None)
    record = build_record(cfg, wheel_files)
    record_path = out / BUILD_RECORD
    if not force and record_path.is_file() and json.loads(record_path.read_text()) == record:
        print(f"{out}: up to date")
        return out

    unpacked = root / "cache" / "unpacked"
    task, mapping = load_scheme(cfg["scheme"])
    if task != "brain":
        raise ValueError(f"{BUILD_CONFIG}: scheme {cfg['scheme']!r} maps to task {task!r}, not brain")
    atlas_file = unpack(wheel_files[cfg["atlas"]["package"]], cfg["atlas"]["member"], unpacked)
    atlas = nib.load(str(atlas_file))
    classes = mapping.apply(np.asanyarray(atlas.dataobj), atlas_file)
    atlas_classes = nib.Nifti1Image(classes, atlas.affine)

    cases: dict[str, list] = {"train": [], "test": []}
    for entry in cfg["images"]:
        image_file = unpack(wheel_files[entry["package"]], entry["member"], unpacked)
        t1 = nib.load(str(image_file))
        if len(t1.shape) != 3:
            raise ValueError(f"{image_file}: expected a 3-D T1 image, got shape {t1.shape}")
        data = np.asarray(t1.dataobj, dtype=np.float32)
        image = nib.Nifti1Image(data, t1.affine)
        label = nib.Nifti1Image(labels_on_image(atlas_classes, image), t1.affine)
        counts = np.bincount(np.asarray(label.dataobj).ravel(), minlength=len(mapping.names))
        print(f"{entry['case_id']}: {t1.shape} voxels of {tuple(float(z) for z in t1.header.get_zooms())} mm, {entry['split']}; voxels per class {counts.tolist()}")
        if entry["split"] not in cases:
            raise ValueError(f"{BUILD_CONFIG}: split of {entry['case_id']} must be train or test, got {entry['split']!r}")
        cases[entry["split"]].append((entry["case_id"], image, label))

    licences = {
        f"licences/{entry['package']}/{Path(entry['member']).name}": unpack(
            wheel_files[entry["package"]], entry["member"], unpacked
        ).read_bytes()
        for entry in cfg.get("licences", [])
    }
    extra = {
        "name": cfg["dataset"],
        "description": (
            "Brain T1 templates with six-class labels from the Neuromorphometrics atlas "
            f"(scheme {cfg['scheme']}): atlas labels, not manual segmentations. Built by mtseg."
        ),
        "sources": {e["case_id"]: f"{e['package']}=={cfg['packages'][e['package']]}: {e['member']}" for e in cfg["images"]},
        "label_source": f"{cfg['atlas']['package']}=={cfg['packages'][cfg['atlas']['package']]}: {cfg['atlas']['member']}",
    }
    files = {**licences, BUILD_RECORD: (json.dumps(record, indent=2) + "\n").encode()}
    write_dataset(out, cases["train"], cases["test"], "T1", {n: i for i, n in enumerate(mapping.names)}, extra, files)
    print(f"{out}: written in {time.perf_counter() - start:.1f} s ({len(cases['train'])} training, {len(cases['test'])} held-out image(s))")
    return out
