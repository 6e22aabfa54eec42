"""Write the paper's figures and the results table from run or sweep directories.

``python -m mtseg.figures outputs/sweeps/<time> [more runs or sweeps] [--out DIR]`` writes
``fig2_learning_curves.png``, ``fig3_segmentations.png``, ``results.csv`` and ``results.md``,
``dice_vs_seconds.png`` (mean Dice against training seconds) when the runs record them, and
``multitask_vs_single.md`` (|Dice(multi-task) − Dice(single-task)| per class beside the
spread over seeds of the single-task experiment) when a single-task run is among them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

from mtseg.nifti import atomic_write_bytes, check_writable_folder
from mtseg.plots import (
    find_runs,
    multitask_comparison,
    plot_dice_against_seconds,
    plot_learning_curves,
    plot_segmentations,
    results_frame,
    segmentation_panels,
)


def write_figures(paths: list[str], out: Path, dpi: int = 120) -> dict[str, Path]:
    """Write both figures and the results table into ``out``; returns what was written."""
    runs = find_runs(paths)
    # everything is computed before anything is written: a failure leaves no partial set
    learning_curves = plot_learning_curves(runs)
    segmentations = plot_segmentations(segmentation_panels(runs))
    table = results_frame(runs)
    timed = any("train_seconds" in r.metrics and r.metrics["train_seconds"].notna().any() for r in runs)
    seconds = plot_dice_against_seconds(runs) if timed else None
    check_writable_folder(out)
    written = {"fig2": out / "fig2_learning_curves.png", "fig3": out / "fig3_segmentations.png"}
    atomic_write_bytes(written["fig2"], lambda tmp: learning_curves.savefig(tmp, dpi=dpi, format="png"))
    atomic_write_bytes(written["fig3"], lambda tmp: segmentations.savefig(tmp, dpi=dpi, format="png"))
    if seconds is not None:
        written["seconds"] = out / "dice_vs_seconds.png"
        atomic_write_bytes(written["seconds"], lambda tmp: seconds.savefig(tmp, dpi=dpi, format="png"))
    if not table.empty:
        written["csv"] = out / "results.csv"
        atomic_write_bytes(written["csv"], lambda tmp: table.to_csv(tmp, index=False))
        pivot = table.pivot_table(index=["task", "class"], columns="experiment_number", values="mean_dice", sort=False)
        pivot.columns = [f"exp. {c}" for c in pivot.columns]
        written["md"] = out / "results.md"
        markdown = pivot.round(3).reset_index()
        markdown = markdown.astype(object).where(markdown.notna(), None)  # an experiment without the task: "–"
        atomic_write_bytes(written["md"], lambda tmp: Path(tmp).write_text(markdown.to_markdown(index=False, missingval="–") + "\n"))
        comparison = multitask_comparison(table)
        if not comparison.empty:
            written["multitask"] = out / "multitask_vs_single.md"
            text = comparison.round(3).to_markdown(index=False) + "\n"
            atomic_write_bytes(written["multitask"], lambda tmp: Path(tmp).write_text(text))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtseg.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--out", help="output folder (default: <the one sweep or run>/figures, else ./figures)")
    parser.add_argument("--dpi", type=int, default=120)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only: no window, whatever the environment offers
    out = Path(args.out) if args.out else (Path(args.paths[0]) / "figures" if len(args.paths) == 1 else Path("figures"))
    try:
        written = write_figures(args.paths, out, args.dpi)
    except (ValueError, OSError) as error:  # FileNotFoundError and PermissionError included
        print(f"mtseg.figures: error: {error}", file=sys.stderr)
        return 1
    for path in written.values():
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
