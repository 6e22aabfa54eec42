"""Benchmarks (``make bench``): data pipeline versus training step, measured in one run.

``python -m mtseg.bench`` prints

1. samples/s of the data pipeline alone: three tasks, one TorchIO queue each,
   class- and task-balanced mini-batches of 210, on the phantoms of the default config;
2. samples/s of one training step (forward, backward, Adam) of the paper-sized
   TriplanarCNN on the same mini-batches, on this machine's CPU or GPU;
3. their ratio (the pipeline should be at least 10x faster, so sampling never limits training);
4. the pipeline on one CTA-sized volume (512x512x400 by default): preprocessing time,
   class-index time, samples/s and peak memory;
5. learning per second: labelled voxels per second of training in compute-sharing mode
   (``training=cubes``: cubes at the settings of ``conf/training/cubes.yaml``) against the
   paper's patch mode, same network, same phantoms; the cube pipeline's rate against its
   step; and the peak memory and seconds of cube training steps in a fresh process, with
   freed memory kept for reuse (as training runs, :mod:`mtseg.runtime.cpu_allocator`)
   and with glibc's defaults (the CTA-sized volume of 4. is measured first, with glibc's
   defaults, as training prepares its data; the rest as training steps run);
6. dense whole-volume inference versus patch-by-patch inference of the paper-sized
   network on a 64^3 volume (voxels/s of each and their ratio), and, with
   ``--large-shape 256 256 256``, dense voxels/s and peak memory on a large volume
   (measured in a separate process, so the peak is the inference's own);
7. seconds per brain: dense inference of a phantom brain MR (``--brain-shape``, 181x217x181 at 1 mm by
   default; or a brain MR NIfTI, ``--brain-image``) with the default config's network (or ``--brain-checkpoint``'s), by the path before batch-norm
   folding and bf16 (unfolded, fp32) and by the new default path (``conf/predict.yaml``'s precision), both
   in this process; the peak memory of each in a fresh process, as ``predict`` keeps its outputs; and the
   share of the mask's voxels given the same label and the largest probability difference.

It ends with the peak resident memory of its own process (the fresh child processes aside).
With ``--out DIR`` it also writes ``DIR/bench.md`` (what it printed), ``DIR/bench.json`` (every
figure printed, by section and name, and the settings; see :data:`FIGURES`) and
``DIR/provenance.json`` (:mod:`mtseg.runtime.provenance`: commit, command, machine, date, ``--note``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mtseg import CONFIG_DIR

from mtseg.checkpoint import load_checkpoint
from mtseg.runtime.cpu_allocator import reuse_freed_memory
from mtseg.data.datamodule import MultiTaskDataModule
from mtseg.data.phantoms import PhantomSpec, generate_phantom
from mtseg.data.preprocessing import SAMPLING_MASK, build_preprocessing
from mtseg.data.sampling import NUM_SAMPLES
from mtseg.data.seeds import seeded_generator
from mtseg.data.subjects import prepare_subject
from mtseg.data.torchio_adapters import sampling_queue
from mtseg.data.training_volumes import IGNORE, TrainingVolumes, channel_table
from mtseg.data.triplanar import TriplanarVolume
from mtseg.defaults import conf_defaults
from mtseg.inference.dense import dense_probabilities, inference_dtype, patch_probabilities, segment_volume
from mtseg.model import TriplanarCNN
from mtseg.runtime.bf16 import cpu_has_native_bf16
from mtseg.tasks import LabelSpace
from mtseg.training.cubes import CubeTraining
from mtseg.training.module import MultiTaskSegmentationModule
from mtseg.nifti import atomic_write_bytes, read_image
from mtseg.evaluation.operating_point import thresholded
from mtseg.runtime.provenance import command_line, write_provenance


#: Cube training steps timed in a fresh process (after one warm-up step).
CUBE_STEPS_TIMED = 3

#: Every figure printed, ``{section: {name: value}}``, as the measurements produce them (:func:`record`);
#: ``--out`` writes it to ``bench.json``. Floats are kept to 6 significant digits.
FIGURES: dict[str, dict] = {}


def record(section: str, **figures) -> None:
    """Add ``figures`` to ``FIGURES[section]`` (written to ``bench.json`` with ``--out``)."""
    def value(figure):
        if isinstance(figure, float):
            return float(f"{figure:.6g}")
        if isinstance(figure, (tuple, list)):
            return [value(f) for f in figure]
        return figure

    FIGURES.setdefault(section, {}).update({name: value(figure) for name, figure in figures.items()})


class _Tee(io.StringIO):
    """Standard output that is also kept (for ``bench.md``)."""

    def __init__(self, stream) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.stream.flush()


def write_bench(out: Path, printed: str, args: argparse.Namespace, argv: list[str] | None, started: float) -> None:
    """``bench.md``, ``bench.json`` and ``provenance.json`` of one run into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    command = command_line("mtseg.bench", argv)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k != "out"}
    report = json.dumps({"settings": settings, **FIGURES}, indent=2) + "\n"
    note = f"\nNote: {args.note}\n" if args.note else ""
    text = f"# mtseg.bench\n\n`{command}`\n{note}\n```text\n{printed}```\n"
    atomic_write_bytes(out / "bench.json", lambda tmp: Path(tmp).write_text(report))
    atomic_write_bytes(out / "bench.md", lambda tmp: Path(tmp).write_text(text))
    write_provenance(out, command, started, note=args.note, cpu_native_bf16=cpu_has_native_bf16())


def peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB.

    Read from ``VmHWM`` where Linux provides it: ``ru_maxrss`` survives ``exec``, so a
    spawned child would report at least its parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def on_device(gather, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A mini-batch of indices moved to ``device`` and gathered there, as Lightning hands it to the training step."""
    return gather({key: value.to(device, non_blocking=True) for key, value in batch.items()})


def time_pipeline(batches, n: int, gather, device: torch.device) -> float:
    """Samples (labelled voxels in cube mode) per second of drawing ``n`` mini-batches, queue fills and refills
    included, moved to ``device`` and gathered there."""
    _synchronize(device)
    start = time.perf_counter()
    samples = sum(labelled_voxels(on_device(gather, next(batches), device)) for _ in range(n))
    _synchronize(device)
    return samples / (time.perf_counter() - start)


def labelled_voxels(batch: dict[str, torch.Tensor]) -> int:
    """Voxels the loss trains on: every sample in patch mode, the cubes' voxels above the threshold in cube mode."""
    return int((batch["target"] != IGNORE).sum())


def time_index_stream(batches, n: int) -> float:
    """Samples (cubes in cube mode) per second of drawing ``n`` mini-batches of indices, without the gather:
    all the host does per mini-batch when the gather runs on a GPU."""
    start = time.perf_counter()
    samples = sum(len(next(batches)["task"]) for _ in range(n))
    return samples / (time.perf_counter() - start)


def time_training(module: MultiTaskSegmentationModule, batches, gather, n: int, device: torch.device, bf16: bool = False) -> float:
    """Labelled voxels (samples in patch mode) per second of ``n`` optimiser steps on gathered mini-batches,
    after one warm-up step (in bf16 autocast with ``bf16``, as ``trainer.precision=bf16-mixed`` trains)."""
    module.to(device).train()
    optimizer = module.build_optimizer()
    data = [on_device(gather, next(batches), device) for _ in range(n + 1)]
    seconds, samples = 0.0, 0
    for index, batch in enumerate(data):
        _synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = module.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _synchronize(device)
        if index > 0:
            seconds += time.perf_counter() - start
            samples += labelled_voxels(batch)
    return samples / seconds


def _cube_step_in_child(tasks: list[str], model: dict, n_cubes: int, cube: int, device_type: str, bf16: bool,
                         keep_freed: bool, results) -> None:
    if keep_freed:
        reuse_freed_memory()
    device = torch.device(device_type)
    module = MultiTaskSegmentationModule(tasks, model=model, training=CubeTraining(cube=cube)).to(device).train()
    optimizer = module.build_optimizer()
    side = cube + 2 * module.net.depth
    batch = {
        "context": torch.rand(n_cubes, side, side, side, device=device),
        "target": torch.randint(module.label_space.n_classes, (n_cubes, cube, cube, cube), device=device),
        "task": torch.arange(n_cubes, device=device) % len(tasks),
    }
    before = peak_rss_gib()
    seconds = 0.0
    for step in range(CUBE_STEPS_TIMED + 1):  # the first step warms up
        _synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = module.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _synchronize(device)
        seconds += (time.perf_counter() - start) if step else 0.0
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    results.put((before, peak_rss_gib(), gpu, module.net.forward_cubes_bytes(n_cubes, cube) / 2**30, seconds / CUBE_STEPS_TIMED))


def cube_step_memory(tasks: list[str], model: dict, n_cubes: int, cube: int, device: torch.device, bf16: bool = False,
                      keep_freed: bool = True) -> tuple:
    """A fresh process's cube training steps: peak RSS (GiB) before and after, peak GPU memory, the
    estimate, and seconds per step; ``keep_freed`` as training runs (:mod:`mtseg.runtime.cpu_allocator`) or not."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_cube_step_in_child, args=(tasks, model, n_cubes, cube, device.type, bf16, keep_freed, results))
    child.start()
    measured = results.get()
    child.join()
    return measured


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_dense_versus_patches(
    shape: tuple[int, int, int], n_patch_voxels: int, slab: int | None, device: torch.device = torch.device("cpu")
) -> tuple[float, float]:
    """Voxels/s of dense inference over the whole volume and of patch-by-patch inference on a sample of voxels."""
    net = TriplanarCNN(9).eval().to(device)
    volume = TriplanarVolume(torch.rand(shape), net.depth)
    dense_probabilities(net, TriplanarVolume(torch.rand(8, 8, 8), net.depth), slab=slab)  # warm-up
    start = time.perf_counter()
    dense_probabilities(net, volume, slab=slab)
    _synchronize(device)
    dense = volume.interior.numel() / (time.perf_counter() - start)
    patch_probabilities(net, volume, torch.arange(8))  # warm-up
    voxels = torch.randint(volume.interior.numel(), (n_patch_voxels,))
    start = time.perf_counter()
    patch_probabilities(net, volume, voxels)
    _synchronize(device)
    patches = n_patch_voxels / (time.perf_counter() - start)
    return dense, patches


def _dense_in_child(shape: tuple[int, int, int], slab: int | None, slab_voxels: int, device_type: str, results) -> None:
    device = torch.device(device_type)
    net = TriplanarCNN(9).eval().to(device)
    volume = TriplanarVolume(torch.rand(shape), net.depth)
    start = time.perf_counter()
    # what evaluation and predict keep: the label map and the breast and CTA foreground probabilities
    segment_volume(net, volume, channels=[7, 8], slab=slab, progress=True, slab_voxels=slab_voxels)
    _synchronize(device)
    results.put((volume.interior.numel() / (time.perf_counter() - start), peak_rss_gib()))


def time_dense_large(
    shape: tuple[int, int, int], slab: int | None, slab_voxels: int, device: torch.device = torch.device("cpu")
) -> tuple[float, float]:
    """Voxels/s and peak RSS (GiB) of dense inference on one large volume, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_dense_in_child, args=(shape, slab, slab_voxels, device.type, results))
    child.start()
    rate, peak = results.get()
    child.join()
    return rate, peak


def cta_sized_volume(shape: tuple[int, int, int], seed: int = 0) -> tio.Subject:
    """A CTA-sized subject in HU: noise, a padded field of view and thin tubes as the rare class."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(0.0, 300.0, size=shape).astype(np.float32)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    outside = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 > (0.48 * min(shape[:2])) ** 2
    hu[outside] = -2048.0
    label = np.zeros(shape, dtype=np.uint8)
    for _ in range(20):  # straight vessel segments of a few voxels' radius
        centre = rng.uniform(0.3, 0.7, size=3) * shape
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        points = centre + np.outer(np.linspace(-60, 60, 240), direction)
        for px, py, pz in np.round(points).astype(int):
            label[max(px - 3, 0) : px + 3, max(py - 3, 0) : py + 3, max(pz - 3, 0) : pz + 3] = 1
    hu[label == 1] = 400.0
    affine = np.diag([0.45, 0.45, 0.45, 1.0])
    return tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(hu)[None], affine=affine),
        label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine),
        task="cta",
        case_id="cta_sized",
    )


@torch.no_grad()
def segment_volume_before(net: TriplanarCNN, volume: TriplanarVolume, mask: torch.Tensor | None, channels, slab_voxels: int):
    """Dense inference as :func:`mtseg.inference.dense.segment_volume` ran before batch-norm folding, bf16, the
    mask's bounding box and the channels-last features (the unfolded network in fp32, axial, sagittal and
    coronal features of the whole slab kept in channels-first order): kept to measure the new path against.
    Returns the label map and the probabilities of ``channels`` (``None``: all)."""
    r, d = volume.radius, net.depth
    device = next(net.parameters()).device
    nx, ny, nz = volume.shape
    slab = max(1, min(nz, slab_voxels // (nx * ny)))
    channels = list(range(net.n_classes)) if channels is None else list(channels)
    labels = torch.empty((nx, ny, nz), dtype=torch.uint8)
    probabilities = torch.empty((len(channels), nx, ny, nz))

    def stack(slices: torch.Tensor) -> torch.Tensor:
        slices = slices.to(device)
        out = torch.empty((len(slices), net.width, slices.shape[1] - 2 * d, slices.shape[2] - 2 * d), device=device)
        for i in range(0, len(slices), 4):
            out[i : i + 4] = net.features(slices[i : i + 4, None])
        return out

    was_training = net.training
    net.eval()
    try:
        for z0 in range(0, nz, slab):
            z1 = min(z0 + slab, nz)
            if mask is not None and not mask[..., z0:z1].any():
                labels[..., z0:z1] = 0
                for k, c in enumerate(channels):
                    probabilities[k, ..., z0:z1] = 1.0 if c == 0 else 0.0
                continue
            axial = stack(volume.padded[:, :, z0 + r : z1 + r].permute(2, 0, 1))
            sagittal = stack(volume.padded[r:-r, :, z0 : z1 + 2 * r])
            coronal = stack(volume.padded[:, r:-r, z0 : z1 + 2 * r].permute(1, 0, 2))
            logits = torch.stack([
                net.classify_features(torch.cat([axial[k], sagittal[..., k].transpose(0, 1), coronal[..., k].permute(1, 2, 0)])[None])[0]
                for k in range(z1 - z0)
            ], dim=-1).cpu()
            p = logits.sub_(logits.amax(0, keepdim=True)).exp_()
            p.div_(p.sum(0, keepdim=True))
            labels[..., z0:z1] = p.argmax(0).to(torch.uint8)
            probabilities[..., z0:z1] = p[channels]
    finally:
        net.train(was_training)
    if mask is not None:
        outside = ~mask.bool()
        labels[outside] = 0
        for k, c in enumerate(channels):
            probabilities[k][outside] = 1.0 if c == 0 else 0.0
    return labels, probabilities


def brain_volume(shape: tuple[int, int, int], cfg, depth: int, seed: int = 0, path: str | None = None) -> tuple[TriplanarVolume, torch.Tensor]:
    """A phantom brain MR of ``shape`` at 1 mm (or the brain MR NIfTI at ``path``) preprocessed as the brain task
    is (conf/data/brain), padded for ``depth``, and its sampling mask (what ``predict`` segments)."""
    if path:
        image = read_image(path)
    else:
        data, _, affine = generate_phantom(PhantomSpec("brain", shape, 1.0), seed)
        image = tio.ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine)
    pre = cfg.data.brain.preprocessing
    prepared = build_preprocessing(1.0, pre.threshold, [instantiate(t) for t in pre.intensity])(tio.Subject(image=image))
    return TriplanarVolume(prepared["image"].data[0], depth, float(cfg.data.pad_value)), prepared[SAMPLING_MASK].data[0].bool()


def brain_network(cfg, checkpoint: str | None, device: torch.device) -> tuple[TriplanarCNN, list[int], str]:
    """The network the brain section runs: a checkpoint's, or the default config's with random weights and batch-norm
    statistics of a few random batches; with the channels ``predict`` keeps and a description."""
    if checkpoint:
        loaded = load_checkpoint(checkpoint)
        space = loaded.label_space
        kept = [space.task_classes(t)[1] for t in space.tasks if thresholded(t)]
        return loaded.net.to(device).eval(), kept, f"{checkpoint} ({loaded.global_step} steps)"
    torch.manual_seed(0)
    net = TriplanarCNN(9, **cfg.model).to(device).train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(64, 3, net.patch_size, net.patch_size, device=device))
    return net.eval(), [7, 8], "random weights (agreement not representative: pass --brain-checkpoint)"


def _brain_in_child(net, volume, mask, channels, path: str, slab_voxels: int, precision: str, device_type: str, results) -> None:
    net = net.to(device_type)
    before = peak_rss_gib()
    start = time.perf_counter()
    if path == "before":
        segment_volume_before(net, volume, mask, channels, slab_voxels)
    else:
        segment_volume(net, volume, mask, channels, progress=False, slab_voxels=slab_voxels, precision=precision)
    _synchronize(torch.device(device_type))
    results.put((time.perf_counter() - start, before, peak_rss_gib()))


def brain_memory(net, volume, mask, channels, path: str, slab_voxels: int, precision: str) -> tuple[float, float, float]:
    """Seconds, peak RSS (GiB) before and after dense inference of the brain in a fresh process (as ``predict``
    keeps: the label map and ``channels``), by the path before (``"before"``) or the new one (``"new"``)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    device = next(net.parameters()).device
    child = context.Process(target=_brain_in_child, args=(copy.deepcopy(net).cpu(), volume, mask, channels, path, slab_voxels, precision,
                                                          device.type, results))
    child.start()
    measured = results.get()
    child.join()
    return measured


def time_brain(args: argparse.Namespace, cfg, device: torch.device) -> None:
    """Measurement 7: seconds per brain of dense inference before and after (BN folding, bf16, channels-last
    features, the mask's bounding box), in this process; the peak memory of each in a fresh process; and how
    far the new path's labels and probabilities are from the old path's."""
    shape = tuple(args.brain_shape)
    net, kept, described = brain_network(cfg, args.brain_checkpoint, device)
    volume, mask = brain_volume(shape, cfg, net.depth, path=args.brain_image)
    shape = tuple(mask.shape)
    precision = conf_defaults("predict.yaml")["precision"]
    dtype = inference_dtype(precision, device)
    small = TriplanarVolume(torch.rand(8, 8, 8), net.depth)
    segment_volume_before(net, small, None, [0], args.slab_voxels)  # warm-up
    segment_volume(net, small, channels=[0], progress=False, precision=precision)
    _synchronize(device)
    start = time.perf_counter()
    before_labels, before_p = segment_volume_before(net, volume, mask, None, args.slab_voxels)
    _synchronize(device)
    before = time.perf_counter() - start
    start = time.perf_counter()
    new = segment_volume(net, volume, mask, None, progress=False, slab_voxels=args.slab_voxels, precision=precision)
    _synchronize(device)
    after = time.perf_counter() - start
    same = float((new.labels[mask] == before_labels[mask]).double().mean())
    difference = float((new.probabilities - before_p).abs().max())
    del before_p, new
    memory = {path: brain_memory(net, volume, mask, kept, path, args.slab_voxels, precision) for path in ("before", "new")}
    source = args.brain_image or "phantom"
    print(f"brain {shape} ({source}, {int(mask.sum()):,d} voxels in its mask), depth {net.depth}, {described}:")
    print(f"  before (unfolded, fp32): {before:.1f} s, peak RSS {memory['before'][2]:.2f} GiB in a fresh process "
          f"({memory['before'][1]:.2f} GiB before inference, {memory['before'][0]:.1f} s there)")
    print(f"  new default (folded, precision={precision} -> {str(dtype).removeprefix('torch.')}): {after:.1f} s, {before / after:.2f}x faster, "
          f"peak RSS {memory['new'][2]:.2f} GiB ({memory['new'][1]:.2f} GiB before inference, {memory['new'][0]:.1f} s there)")
    print(f"  new against before: same label at {100 * same:.3f} % of the mask's voxels, largest probability difference {difference:.2e}")
    record("brain_inference", shape=shape, image=source, mask_voxels=int(mask.sum()), depth=net.depth, network=described, precision=precision,
           dtype=str(dtype).removeprefix("torch."), seconds_before=before, seconds_new=after, speedup=before / after,
           peak_rss_gib_before=memory["before"][2], peak_rss_gib_new=memory["new"][2],
           rss_before_inference_gib=memory["new"][1], seconds_before_fresh_process=memory["before"][0],
           seconds_new_fresh_process=memory["new"][0], same_label_percent=100 * same, max_probability_difference=difference)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refills", type=int, default=5, help="queue fills per task timed for the pipeline")
    parser.add_argument("--train-steps", type=int, default=3, help="optimiser steps timed")
    parser.add_argument("--batch-size", type=int, default=210)
    parser.add_argument("--cta-shape", type=int, nargs=3, default=(512, 512, 400))
    parser.add_argument("--dense-shape", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--patch-voxels", type=int, default=1024, help="voxels timed patch by patch")
    parser.add_argument("--slab", type=int, default=None, help="axial slices per slab (default: from --slab-voxels)")
    parser.add_argument("--slab-voxels", type=int, default=conf_defaults("evaluation/whole_image.yaml")["slab_voxels"], help="voxels per slab of dense inference")
    parser.add_argument("--large-shape", type=int, nargs=3, default=None, help="e.g. 256 256 256 (takes minutes on a CPU)")
    parser.add_argument("--inference-only", action="store_true", help="skip the pipeline and training measurements")
    parser.add_argument("--brain-shape", type=int, nargs=3, default=(181, 217, 181),
                        help="phantom brain of seconds per brain, before and after (default: %(default)s, 1 mm; minutes on a CPU)")
    parser.add_argument("--brain-image", help="a brain MR NIfTI for seconds per brain instead of a phantom of --brain-shape "
                        "(preprocessed as the brain task is: 1 mm, normalised)")
    parser.add_argument("--brain-checkpoint", help="network of seconds per brain (default: the config's, random weights)")
    parser.add_argument("--out", help="also write bench.md, bench.json and provenance.json into this folder")
    parser.add_argument("--note", help="recorded in provenance.json and bench.md (e.g. what else ran on the machine)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config, e.g. model.depth=3 or training.cube=8")
    args = parser.parse_args(argv)
    if args.brain_image:  # refused before minutes of other measurements
        try:
            read_image(args.brain_image)
        except (ValueError, OSError) as error:
            parser.error(f"--brain-image: {error}")
    started = time.time()
    FIGURES.clear()
    printed = _Tee(sys.stdout)
    with contextlib.redirect_stdout(printed) if args.out else contextlib.nullcontext():
        measure(args)
        peak = peak_rss_gib()
        print(f"peak RSS of the benchmark's process (its fresh child processes aside): {peak:.2f} GiB")
        record("process", peak_rss_gib=peak)
    if args.out:
        write_bench(Path(args.out), printed.getvalue(), args, argv, started)


def measure(args: argparse.Namespace) -> None:
    """Every measurement of the module's docstring, printed and recorded in :data:`FIGURES`."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        # training.* overrides are for the cube section; the patch section takes training.batch_size from --batch-size
        patch_overrides = [o for o in args.overrides if not o.startswith("training.")]
        cfg = compose("train", overrides=[f"training.batch_size={args.batch_size}", *patch_overrides])
    tasks = ["brain", "breast", "cta"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'})")
    record("device", type=device.type, gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
           cpu_threads=torch.get_num_threads())
    if not args.inference_only:
        time_cta_sized_volume(args, cfg, tasks, device)
        reuse_freed_memory()  # from here on as training steps run (mtseg.training.callbacks.KeepFreedMemory)
        patch_rate = time_pipeline_and_training(args, cfg, tasks, device)
        time_cube_training(args, tasks, device, patch_rate)
    time_inference(args, device)
    time_brain(args, cfg, device)


def time_cta_sized_volume(args: argparse.Namespace, cfg, tasks: list[str], device: torch.device) -> None:
    """Measurement 4: preprocessing, class index and queue of one CTA-sized volume, and the peak memory so far
    (measured first, before freed memory is kept for the training steps, as training prepares its data)."""
    shape = tuple(args.cta_shape)
    subject = cta_sized_volume(shape)
    pre = cfg.data.cta.preprocessing
    start = time.perf_counter()
    preprocessing = build_preprocessing(pre.spacing, pre.threshold, [instantiate(t) for t in pre.intensity])
    prepared = prepare_subject(subject, preprocessing, cfg.model.depth, cfg.data.pad_value)
    prepare_seconds = time.perf_counter() - start
    del subject
    training = instantiate(cfg.training)  # the paper's mode
    queue_cfg = training.queue
    volumes = TrainingVolumes([prepared], cfg.model.depth, channel_table(LabelSpace(["cta"]))).to(device)
    prepared[NUM_SAMPLES] = queue_cfg["samples_per_volume"] // queue_cfg["block"]
    sampler = training.sampler(cfg.model.depth, seeded_generator(0))
    queue = sampling_queue([prepared], sampler, queue_cfg["max_length"], queue_cfg["samples_per_volume"])
    n = args.refills * min(queue_cfg["max_length"], queue_cfg["samples_per_volume"])
    per_take = args.batch_size // len(tasks)

    def gather(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return training.gather(volumes, {**batch, "task": torch.zeros_like(batch["volume_id"])})

    _synchronize(device)
    start = time.perf_counter()
    for _ in range(-(-n // per_take)):
        on_device(gather, queue.take(per_take), device)
    _synchronize(device)
    rate = -(-n // per_take) * per_take / (time.perf_counter() - start)
    peak = peak_rss_gib()
    print(
        f"CTA-sized volume {shape}: preprocessing + class index {prepare_seconds:.1f} s once, "
        f"queue {rate:.1f} samples/s over {args.refills} fills (gathered on {device}), peak RSS of the process so far {peak:.2f} GiB"
    )
    record("cta_sized_volume", shape=shape, preprocessing_seconds=prepare_seconds, queue_samples_per_second=rate,
           queue_fills=args.refills, peak_rss_gib=peak)


def time_pipeline_and_training(args: argparse.Namespace, cfg, tasks: list[str], device: torch.device) -> float:
    """Measurements 1-3: the data pipeline, the training step and their ratio; returns the step's samples/s."""

    training = instantiate(cfg.training)  # the paper's mode
    datamodule: MultiTaskDataModule = instantiate(cfg.data, tasks=tasks, depth=cfg.model.depth, seed=0, training=training)
    start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup()
    ready = time.perf_counter() - start
    print(f"phantoms ready and preprocessed in {ready:.1f} s")
    record("phantoms", ready_seconds=ready)
    batches = iter(datamodule.train_batches())
    queue_cfg = training.queue
    # a fill stops when the queue is full or every training image has been visited
    per_fill = min(queue_cfg["max_length"], min(len(datamodule.subjects[t]["train"]) for t in tasks) * queue_cfg["samples_per_volume"])
    n_batches = -(-args.refills * per_fill * len(tasks) // args.batch_size)
    pipeline = time_pipeline(batches, n_batches, datamodule.gather, device)
    indices = time_index_stream(batches, n_batches)
    module = MultiTaskSegmentationModule(tasks, model=dict(cfg.model), training=training)
    step_rate = time_training(module, batches, datamodule.gather, args.train_steps, device)
    print(
        f"pipeline (3 tasks, TorchIO queues of blocks of {queue_cfg['block']}, balanced, batch {args.batch_size}, {n_batches} batches = "
        f"{args.refills} queue fills per task, gathered on {device}): {pipeline:9.1f} samples/s"
    )
    print(f"of which the host's part, the mini-batches of indices alone:      {indices:9.1f} samples/s")
    print(f"training step (TriplanarCNN, {module.n_params} parameters):      {step_rate:9.1f} samples/s")
    print(f"ratio pipeline / training step: {pipeline / step_rate:.1f}x")
    record("patch", batch_size=args.batch_size, queue_block=queue_cfg["block"], batches=n_batches, queue_fills=args.refills,
           pipeline_samples_per_second=pipeline, index_samples_per_second=indices, n_params=module.n_params,
           training_samples_per_second=step_rate, pipeline_over_training=pipeline / step_rate)

    return step_rate



def time_cube_training(args: argparse.Namespace, tasks: list[str], device: torch.device, patch_rate: float) -> None:
    """Measurement 5: labelled voxels/s of cube against patch training, the cube pipeline, cube step memory."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["training=cubes", *args.overrides])
    training = instantiate(cfg.training)
    datamodule: MultiTaskDataModule = instantiate(cfg.data, tasks=tasks, depth=cfg.model.depth, seed=0, training=training)
    datamodule.prepare_data()
    datamodule.setup()
    batches = iter(datamodule.train_batches())
    n_batches = args.refills * training.queue["max_length"] // training.cubes_per_task
    pipeline = time_pipeline(batches, n_batches, datamodule.gather, device)
    cube_rate = time_index_stream(batches, n_batches)
    module = MultiTaskSegmentationModule(tasks, model=dict(cfg.model), training=training)
    dense = time_training(module, batches, datamodule.gather, args.train_steps, device)
    cube, per_task = training.cube, training.cubes_per_task
    print(
        f"cube training (training=cubes, {per_task} cube(s) of {cube}^3 per task and step): {dense:9.1f} labelled voxels/s, "
        f"{dense / patch_rate:.0f}x the patch mode's {patch_rate:.1f}"
    )
    record("cubes", cube=cube, cubes_per_task=per_task, training_labelled_voxels_per_second=dense,
           over_patch=dense / patch_rate, patch_training_samples_per_second=patch_rate)
    bf16 = device.type == "cuda" or cpu_has_native_bf16()
    if bf16:  # the demo's precision, where the device computes bf16 natively
        fast = time_training(module, batches, datamodule.gather, args.train_steps, device, bf16=True)
        print(f"cube training in bf16 autocast (trainer.precision=bf16-mixed): {fast:9.1f} labelled voxels/s, "
              f"{fast / dense:.1f}x fp32, {fast / patch_rate:.0f}x the patch mode's fp32")
        record("cubes", bf16_training_labelled_voxels_per_second=fast, bf16_over_fp32=fast / dense, bf16_over_patch=fast / patch_rate)
    print(f"cube pipeline ({n_batches} mini-batches of cubes, gathered on {device}): {pipeline:9.1f} labelled voxels/s, {pipeline / dense:.1f}x the cube step")
    print(f"of which the host's part, the mini-batches of cube positions alone: {cube_rate:9.1f} cubes/s "
          f"({cube_rate / (per_task * len(tasks)):.0f} mini-batches/s)")
    record("cubes", pipeline_batches=n_batches, pipeline_labelled_voxels_per_second=pipeline, pipeline_over_training=pipeline / dense,
           cube_positions_per_second=cube_rate, index_minibatches_per_second=cube_rate / (per_task * len(tasks)))
    n_cubes = per_task * len(tasks)
    steps = {keep: cube_step_memory(tasks, dict(cfg.model), n_cubes, cube, device, bf16, keep_freed=keep) for keep in (False, True)}
    before, peak, gpu, estimate, seconds = steps[True]
    print(
        f"cube training step{' in bf16' if bf16 else ''} on {n_cubes} cubes of {cube}^3: peak RSS {peak:.2f} GiB "
        f"({before:.2f} GiB before the first step){'' if gpu is None else f', peak GPU memory {gpu:.2f} GiB'}; "
        f"the check before training estimates {estimate:.2f} GiB"
    )
    default_seconds, default_peak = steps[False][4], steps[False][1]
    print(
        f"the same step, fresh processes: {seconds:.3f} s with freed memory kept for reuse (as mtseg.train trains), "
        f"{default_seconds:.3f} s with glibc's defaults (MTSEG_KEEP_FREED_MEMORY=0; peak RSS {default_peak:.2f} GiB): "
        f"{default_seconds / seconds:.2f}x"
    )
    record("cube_step", bf16=bf16, cubes=n_cubes, cube=cube, peak_rss_gib=peak, rss_before_first_step_gib=before,
           peak_gpu_memory_gib=gpu, estimate_gib=estimate, seconds=seconds, seconds_glibc_defaults=default_seconds,
           peak_rss_glibc_defaults_gib=default_peak, glibc_defaults_over_kept=default_seconds / seconds)


def time_inference(args: argparse.Namespace, device: torch.device) -> None:
    """Measurement 6: dense versus patch-by-patch inference, and optionally a large volume."""
    dense, patches = time_dense_versus_patches(tuple(args.dense_shape), args.patch_voxels, args.slab, device)
    print(
        f"inference on {tuple(args.dense_shape)}: dense {dense:.0f} voxels/s, patch by patch {patches:.1f} voxels/s "
        f"(on {args.patch_voxels} voxels), ratio {dense / patches:.0f}x"
    )
    record("inference", shape=tuple(args.dense_shape), dense_voxels_per_second=dense, patch_voxels_per_second=patches,
           patch_voxels=args.patch_voxels, dense_over_patch=dense / patches)
    if args.large_shape:
        rate, peak = time_dense_large(tuple(args.large_shape), args.slab, args.slab_voxels, device)
        print(f"dense inference on {tuple(args.large_shape)}: {rate:.0f} voxels/s, peak RSS {peak:.2f} GiB")
        record("large_inference", shape=tuple(args.large_shape), dense_voxels_per_second=rate, peak_rss_gib=peak)


if __name__ == "__main__":
    main()
