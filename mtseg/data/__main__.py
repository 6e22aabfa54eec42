"""Data set tools: ``python -m mtseg.data {check,convert-labels,build} ...``.

    python -m mtseg.data check PATH [--scheme miccai2012 | --task brain] [--channel 0]
        [--images train=training-images,test=testing-images --labels ... --label-suffix _glm]
    python -m mtseg.data convert-labels --scheme miccai2012 IN OUT [--overwrite]
    python -m mtseg.data build brain-templates [--root data] [--wheels DIR] [--force]

Bad input (an unreadable or malformed file, a wrong layout, a full disk) ends a command
with one line ``mtseg.data: error: <file>: <problem>`` and exit status 1, never a
traceback; SIGTERM and Ctrl+C end it with 143 and 130 once its partial output is removed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mtseg.runtime.signals import SIGTERM_EXIT, Terminated, sigterm_raises
from mtseg.tasks import TASK_ORDER


def _folders(value: str) -> str | dict[str, str]:
    """``NAME`` or ``train=NAME,test=NAME``."""
    if "=" not in value:
        return value
    pairs = [part.split("=", 1) for part in value.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--images/--labels: expected NAME or train=NAME,test=NAME, got {value!r}")
    return {split.strip(): name.strip() for split, name in pairs}


def _check(args: argparse.Namespace) -> None:
    from mtseg.data.check import check_dataset

    folder = {
        key: _folders(value) if key != "label_suffix" else value
        for key, value in (("images", args.images), ("labels", args.labels), ("label_suffix", args.label_suffix))
        if value is not None
    }
    split = {"file": args.split_file} if args.split_file else None
    start = time.perf_counter()
    summary = check_dataset(args.path, args.scheme, args.task, args.channel, folder, split)
    print(summary.format())
    print(f"OK: {len(summary.cases)} image(s) checked in {time.perf_counter() - start:.1f} s")


def _convert(args: argparse.Namespace) -> None:
    from mtseg.data.label_mapping import convert_label_file, load_scheme

    task, mapping = load_scheme(args.scheme)
    counts = convert_label_file(mapping, args.input, args.output, args.overwrite)
    print(f"{args.output}: {task} labels ({args.scheme})")
    for label, (name, count) in enumerate(zip(mapping.names, counts)):
        print(f"  {label} {name:<28} {int(count):>12,d} voxels")


def _build(args: argparse.Namespace) -> None:
    from mtseg.data.brain_templates import build_brain_templates

    build_brain_templates(args.root, args.wheels, args.force)


def _message(error: Exception) -> str:
    """The error's message; ``FILE: reason`` for an operating system error that names its file."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtseg.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="check a data set and print its summary")
    check.add_argument("path", help="nnU-Net raw data set folder, NIfTI folder (images/, labels/) or data set CSV")
    labels = check.add_mutually_exclusive_group()
    labels.add_argument("--scheme", help="label mapping scheme of conf/label_map (e.g. miccai2012)")
    labels.add_argument("--task", choices=TASK_ORDER, help="labels are already this task's (0..K)")
    check.add_argument("--channel", type=int, default=0, help="nnU-Net channel to read (default 0)")
    check.add_argument("--images", help="NIfTI folder: image folder (default images), or train=NAME,test=NAME")
    check.add_argument("--labels", help="NIfTI folder: label folder (default labels), or train=NAME,test=NAME")
    check.add_argument("--label-suffix", help="NIfTI folder: label file = <case><suffix>.nii[.gz]")
    check.add_argument("--split-file", help='JSON {"train": [...], "test": [...]} of case IDs')
    check.set_defaults(run=_check)

    convert = commands.add_parser("convert-labels", help="write the task labels of one label file")
    convert.add_argument("--scheme", required=True, help="label mapping scheme of conf/label_map (e.g. miccai2012)")
    convert.add_argument("input", help="label file with the source's label IDs")
    convert.add_argument("output", help="label file to write (uint8 task labels)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert.set_defaults(run=_convert)

    build = commands.add_parser("build", help="build a data set")
    build.add_argument("dataset", choices=["brain-templates"])
    build.add_argument("--root", default=os.environ.get("MTSEG_DATA_DIR", "data"), help="data folder (default data or $MTSEG_DATA_DIR)")
    build.add_argument("--wheels", help="folder with the pinned wheels (no download)")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.set_defaults(run=_build)

    args = parser.parse_args(argv)
    try:
        with sigterm_raises():
            args.run(args)
    except (ValueError, OSError) as error:  # OSError includes FileNotFoundError and PermissionError
        print(f"mtseg.data: error: {_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mtseg.data: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("mtseg.data: stopped by SIGTERM", file=sys.stderr)
        return SIGTERM_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
