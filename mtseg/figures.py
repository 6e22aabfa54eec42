"""Write the paper's figures and the results table from run or sweep directories.

``python -m mtseg.figures outputs/sweeps/<time> [more runs or sweeps] [--out DIR]`` writes
``fig2_learning_curves.png``, ``fig3_segmentations.png``, ``results.csv`` and ``results.md``,
``dice_vs_seconds.png`` (mean Dice against training seconds) when the runs record them, and
``multitask_vs_single.md`` (|Dice(multi-task) − Dice(single-task)| per class beside the
spread over seeds of the single-task experiment) when a single-task run is among them;
``results.json``, the table's numbers by JSON pointer (:func:`results_json`), and
``provenance.json`` (:mod:`mtseg.runtime.provenance`: commit, command, machine, date).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib
import yaml

from mtseg.nifti import atomic_write_bytes, check_writable_folder
from mtseg.evaluation.plots import (
    RunRecord,
    find_runs,
    multitask_comparison,
    plot_dice_against_seconds,
    plot_learning_curves,
    plot_segmentations,
    results_frame,
    segmentation_panels,
)
from mtseg.runtime.provenance import command_line, write_provenance

#: Keys of a task in ``results.json`` that are not classes.
TASK_KEYS = ("mean", "median_dice", "mean_hd95_mm", "mean_assd_mm", "threshold", "pooled_dice", "confusion_median_percent")


def _number(value):
    """A JSON number or null (NaN and None are null)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _run_results(rows: list[dict]) -> dict:
    """One run's evaluation rows (:func:`mtseg.evaluation.whole_image.results_table`) as ``{task: {...}}`` and its ``mean``."""
    tasks: dict[str, dict] = {}
    for row in rows:
        task = tasks.setdefault(row["task"], {"median_dice": {}})
        task[row["class"]] = _number(row["mean_dice"])
        task["median_dice"][row["class"]] = _number(row["median_dice"])
        for key in ("mean_hd95_mm", "mean_assd_mm"):
            if key in row:
                task.setdefault(key, {})[row["class"]] = _number(row[key])
        for key in ("threshold", "pooled_dice", "confusion_median_percent"):
            if row.get(key) is not None:
                task[key] = _number(row[key])
    for task in tasks.values():
        task["mean"] = _mean(v for k, v in task.items() if k not in TASK_KEYS)
    classes = [v for task in tasks.values() for k, v in task.items() if k not in TASK_KEYS]
    return {"mean": _mean(classes), **tasks}


def _average(entries: list[dict]) -> dict:
    """The numbers of ``entries`` (nested dicts) averaged key by key over the entries that hold them."""
    keys = list(dict.fromkeys(k for entry in entries for k in entry))
    averaged = {}
    for key in keys:
        values = [entry[key] for entry in entries if key in entry]
        if all(isinstance(v, dict) for v in values):
            averaged[key] = _average(values)
        else:
            averaged[key] = _mean(v for v in values if not isinstance(v, dict))
    return averaged


def results_json(runs: list[RunRecord], comparison=None) -> dict:
    """The results table as nested JSON, so that documentation can quote a number by JSON pointer.

    ``{experiment: {"number", "n_runs", "mean", <task>: {<class>: mean Dice, "mean", "median_dice": {<class>: ...},
    "threshold", "pooled_dice", "confusion_median_percent", "mean_hd95_mm"/"mean_assd_mm": {<class>: ...}},
    "runs": [{"path", "seed", "training_mode", "minibatches_per_task", "mean", <task>: {...}}, ...]}}``:
    the experiment's numbers are the mean over its runs (as ``results.md`` shows them), each run's under
    ``runs`` in the order of the table; a task's ``mean`` is over its classes, an experiment's over all
    its classes. With a single-task run among them, ``multitask_vs_single`` holds ``multitask_vs_single.md``
    as ``{task: {class: {"single_task_dice", "seed_spread", "abs_diff_exp_<N>", ..., "max_abs_diff"}}}``.
    Where a number is missing (NaN), null. Example pointer: ``/brain_breast_cta/brain/white_matter``.
    """
    from mtseg.evaluation.whole_image import results_table

    experiments: dict[str, dict] = {}
    for run in runs:
        if run.summary is None or not run.summary.get("evaluation"):
            continue
        entry = {"path": str(run.path), "seed": run.seed, "training_mode": run.training_mode,
                 "minibatches_per_task": run.summary.get("minibatches_per_task"),
                 **_run_results(results_table({run.experiment: run.summary["evaluation"]}))}
        experiments.setdefault(run.experiment, {"number": run.number, "runs": []})["runs"].append(entry)
    results = {}
    for experiment, found in experiments.items():
        numbers = [{k: v for k, v in entry.items() if k not in ("path", "seed", "training_mode", "minibatches_per_task")}
                   for entry in found["runs"]]
        results[experiment] = {"number": found["number"], "n_runs": len(found["runs"]), **_average(numbers), "runs": found["runs"]}
    if comparison is not None and not comparison.empty:
        by_task: dict[str, dict] = {}
        for row in comparison.to_dict("records"):
            task, cls = row.pop("task"), row.pop("class")
            by_task.setdefault(task, {})[cls] = {k: _number(v) for k, v in row.items()}
        results["multitask_vs_single"] = by_task
    return results


def run_provenance(run: RunRecord) -> dict:
    """What ``provenance.json`` says of a run the results come from: its folder, its overrides, its
    training and evaluation seconds, and where it ran (``summary.json``'s ``provenance``, absent in runs
    written before it existed)."""
    overrides = run.path / ".hydra" / "overrides.yaml"
    summary = run.summary or {}
    return {
        "path": str(run.path),
        "overrides": yaml.safe_load(overrides.read_text()) if overrides.is_file() else None,
        "train_seconds": summary.get("train_seconds"),
        "evaluation_seconds": summary.get("evaluation_seconds"),
        "provenance": summary.get("provenance"),
    }


def write_figures(paths: list[str], out: Path, dpi: int = 120, command: str | None = None, note: str | None = None) -> dict[str, Path]:
    """Write both figures and the results table into ``out``; returns what was written.

    ``provenance.json`` records ``command`` (default: this process's command line), ``note`` and each
    run's :func:`run_provenance`.
    """
    started = time.time()
    runs = find_runs(paths)
    # everything is computed before anything is written: a failure leaves no partial set
    learning_curves = plot_learning_curves(runs)
    segmentations = plot_segmentations(segmentation_panels(runs))
    table = results_frame(runs)
    timed = any("train_seconds" in r.metrics and r.metrics["train_seconds"].notna().any() for r in runs)
    seconds = plot_dice_against_seconds(runs) if timed else None
    comparison = multitask_comparison(table) if not table.empty else None
    results = json.dumps(results_json(runs, comparison), indent=2) + "\n"
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
        if not comparison.empty:
            written["multitask"] = out / "multitask_vs_single.md"
            text = comparison.round(3).to_markdown(index=False) + "\n"
            atomic_write_bytes(written["multitask"], lambda tmp: Path(tmp).write_text(text))
    written["json"] = out / "results.json"
    atomic_write_bytes(written["json"], lambda tmp: Path(tmp).write_text(results))
    written["provenance"] = write_provenance(out, command or command_line("mtseg.figures"), started,
                                             **({"note": note} if note else {}), runs=[run_provenance(run) for run in runs])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtseg.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--out", help="output folder (default: <the one sweep or run>/figures, else ./figures)")
    parser.add_argument("--dpi", type=int, default=120)
    parser.add_argument("--note", help="a remark kept in provenance.json (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only: no window, whatever the environment offers
    out = Path(args.out) if args.out else (Path(args.paths[0]) / "figures" if len(args.paths) == 1 else Path("figures"))
    try:
        written = write_figures(args.paths, out, args.dpi, command_line("mtseg.figures", argv), args.note)
    except (ValueError, OSError) as error:  # FileNotFoundError and PermissionError included
        print(f"mtseg.figures: error: {error}", file=sys.stderr)
        return 1
    for path in written.values():
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
