"""Segment any 3-D NIfTI with a trained network (the command line of :class:`mtseg.Segmenter`).

``python -m mtseg.predict --checkpoint CKPT --input IN.nii.gz --output OUT.nii.gz [--probabilities DIR] [--task TASK]``

Writes ``OUT.nii.gz`` (the task's labels on the input's exact grid), ``OUT.json`` beside it
(recognised task, dominance, confidence, threshold, label names, voxel counts) and, with
``--probabilities DIR``, one float32 map per output class. Everything is checked before the
network runs, and written atomically: nothing partial is left on an error or a signal, and
no output ever replaces an input. See :mod:`mtseg.inference.segmenter` and :mod:`mtseg.inference.recognition`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mtseg.checkpoint import select_device
from mtseg.inference.dense import PRECISIONS
from mtseg.nifti import ImageLimits, check_outputs, check_writable, read_image
from mtseg.inference.segmenter import Segmenter, default_settings, sidecar_path
from mtseg.settings import PREDICT_RULES, check_settings
from mtseg.runtime.signals import SIGTERM_EXIT, Terminated, sigterm_raises


def predict(args: argparse.Namespace):
    """Check the arguments and inputs, segment ``args.input``, write the outputs; returns the :class:`~mtseg.inference.segmenter.Segmentation`."""
    settings = {k: getattr(args, k) for k in PREDICT_RULES}
    check_settings(settings, PREDICT_RULES, spell=lambda key: "--" + key.replace("_", "-"))
    select_device(args.device)  # a name it does not know, or cuda without a GPU: refused before anything is read
    output = check_writable(args.output)
    if args.probabilities is not None:
        folder = Path(args.probabilities)
        check_outputs([folder], {"input image": Path(args.input), "checkpoint": Path(args.checkpoint)}, overwrite=True)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--probabilities {folder} is a file, not a folder")
    image = read_image(args.input, ImageLimits.load(max_voxels=args.max_voxels))  # input checks before the network loads
    segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device, **settings, precision=args.precision)
    maps = [Path(args.probabilities) / f"{name}.nii.gz" for name in segmenter.space.class_names] if args.probabilities else []
    check_outputs([output, sidecar_path(output), *maps], {"input image": Path(args.input), **segmenter.inputs}, args.overwrite)
    result = segmenter.segment(image, args.task, probabilities=bool(args.probabilities))
    result.save(output, args.probabilities, args.overwrite)
    return result


def parser() -> argparse.ArgumentParser:
    defaults = default_settings()
    p = argparse.ArgumentParser(prog="python -m mtseg.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint written by mtseg.train (checkpoints/*.ckpt)")
    p.add_argument("--input", required=True, help="3-D NIfTI image, any orientation and voxel spacing")
    p.add_argument("--output", required=True, help="label map to write (.nii.gz), on the input's grid")
    p.add_argument("--probabilities", metavar="DIR", help="also write one probability map per class into DIR")
    p.add_argument("--task", help="pin the task (its preprocessing is used; no recognition)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("--device", default=defaults["device"], help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--slab-voxels", type=int, default=defaults["slab_voxels"],
                   help="voxels per slab of dense inference: memory (about 260 bytes each in fp32, half in bf16) vs speed (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=defaults["precision"],
                   help="dense inference in fp32, bf16, or auto: bf16 where the device computes it natively (default: %(default)s)")
    p.add_argument("--max-voxels", type=int, default=None,
                   help=f"refuse inputs and working grids of more voxels (default: {ImageLimits.load().max_voxels:,d}, conf/limits.yaml)")
    for name, help_text in [("min-dominance", "share of foreground voxels in one task"),
                            ("min-plausibility", "agreement of the task's foreground fraction with its training images"),
                            ("min-intensity-agreement", "fit of the image's share of clearly negative intensities to the training images' range"),
                            ("min-foreground-percent", "foreground percentage of the image")]:
        p.add_argument(f"--{name}", type=float, default=defaults[name.replace("-", "_")],
                       help=f"below this {help_text}, report low confidence (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        with sigterm_raises():
            result = predict(args)
    except (ValueError, OSError) as error:  # FileNotFoundError and PermissionError included
        print(f"mtseg.predict: error: {error}", file=sys.stderr)
        return 1
    except Terminated:
        print("mtseg.predict: stopped by SIGTERM; nothing written", file=sys.stderr)
        return SIGTERM_EXIT
    except KeyboardInterrupt:
        print("mtseg.predict: interrupted; nothing written", file=sys.stderr)
        return 130
    print(result.describe())
    print(f"Wrote {args.output} and {sidecar_path(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
