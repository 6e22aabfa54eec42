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
   (``training=dense``: cubes at the settings of ``conf/training/dense.yaml``) against the
   paper's patch mode, same network, same phantoms; the dense pipeline's rate against its
   step; and the peak memory and seconds of dense training steps in a fresh process, with
   freed memory kept for reuse (as training runs, :mod:`mtseg.cpu_allocator`)
   and with glibc's defaults (the CTA-sized volume of 4. is measured first, with glibc's
   defaults, as training prepares its data; the rest as training steps run);
6. dense whole-volume inference versus patch-by-patch inference of the paper-sized
   network on a 64^3 volume (voxels/s of each and their ratio), and, with
   ``--large-shape 256 256 256``, dense voxels/s and peak memory on a large volume
   (measured in a separate process, so the peak is the inference's own).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import numpy as np
import torch
import torchio as tio
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mtseg import CONFIG_DIR
from omegaconf import OmegaConf

from mtseg.cpu_allocator import reuse_freed_memory
from mtseg.data.cube_sampling import IGNORE
from mtseg.data.datamodule import MultiTaskDataModule, prepare_subject, sampling_queue
from mtseg.data.preprocessing import build_preprocessing
from mtseg.data.sampling import NUM_SAMPLES, ClassBalancedTriplanarSampler
from mtseg.data.training_volumes import TrainingVolumes
from mtseg.data.triplanar import TriplanarVolume
from mtseg.defaults import conf_defaults
from mtseg.inference import dense_probabilities, patch_probabilities, segment_volume
from mtseg.model import TriplanarCNN
from mtseg.module import MultiTaskSegmentationModule, cpu_has_native_bf16


#: Dense training steps timed in a fresh process (after one warm-up step).
DENSE_STEPS_TIMED = 3


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
    """Samples (labelled voxels in dense mode) per second of drawing ``n`` mini-batches, queue fills and refills
    included, moved to ``device`` and gathered there."""
    _synchronize(device)
    start = time.perf_counter()
    samples = sum(labelled_voxels(on_device(gather, next(batches), device)) for _ in range(n))
    _synchronize(device)
    return samples / (time.perf_counter() - start)


def labelled_voxels(batch: dict[str, torch.Tensor]) -> int:
    """Voxels the loss trains on: every sample in patch mode, the cubes' voxels above the threshold in dense mode."""
    return int((batch["target"] != IGNORE).sum())


def time_index_stream(batches, n: int) -> float:
    """Samples (cubes in dense mode) per second of drawing ``n`` mini-batches of indices, without the gather:
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


def _dense_step_in_child(tasks: list[str], model: dict, n_cubes: int, cube: int, device_type: str, bf16: bool,
                         keep_freed: bool, results) -> None:
    if keep_freed:
        reuse_freed_memory()
    device = torch.device(device_type)
    module = MultiTaskSegmentationModule(tasks, model=model).to(device).train()
    optimizer = module.build_optimizer()
    side = cube + 2 * module.net.depth
    batch = {
        "context": torch.rand(n_cubes, side, side, side, device=device),
        "target": torch.randint(module.label_space.n_classes, (n_cubes, cube, cube, cube), device=device),
        "task": torch.arange(n_cubes, device=device) % len(tasks),
    }
    before = peak_rss_gib()
    seconds = 0.0
    for step in range(DENSE_STEPS_TIMED + 1):  # the first step warms up
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
    results.put((before, peak_rss_gib(), gpu, module.net.forward_cubes_bytes(n_cubes, cube) / 2**30, seconds / DENSE_STEPS_TIMED))


def dense_step_memory(tasks: list[str], model: dict, n_cubes: int, cube: int, device: torch.device, bf16: bool = False,
                      keep_freed: bool = True) -> tuple:
    """A fresh process's dense training steps: peak RSS (GiB) before and after, peak GPU memory, the
    estimate, and seconds per step; ``keep_freed`` as training runs (:mod:`mtseg.cpu_allocator`) or not."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_dense_step_in_child, args=(tasks, model, n_cubes, cube, device.type, bf16, keep_freed, results))
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
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config, e.g. model.depth=3 or training.cube=8")
    args = parser.parse_args(argv)

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        # training.* overrides are for the dense section (the patch mode has none)
        patch_overrides = [o for o in args.overrides if not o.startswith("training.")]
        cfg = compose("train", overrides=[f"data.batch_size={args.batch_size}", *patch_overrides])
    tasks = ["brain", "breast", "cta"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'})")
    if not args.inference_only:
        time_cta_sized_volume(args, cfg, tasks, device)
        reuse_freed_memory()  # from here on as training steps run (mtseg.callbacks.KeepFreedMemory)
        patch_rate = time_pipeline_and_training(args, cfg, tasks, device)
        time_dense_training(args, tasks, device, patch_rate)
    time_inference(args, device)


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
    queue_cfg = cfg.data.queue
    volumes = TrainingVolumes([prepared], cfg.model.depth).to(device)
    prepared[NUM_SAMPLES] = queue_cfg.samples_per_volume // queue_cfg.block
    sampler = ClassBalancedTriplanarSampler(cfg.model.depth, queue_cfg.block)
    queue = sampling_queue([prepared], sampler, queue_cfg.max_length, queue_cfg.samples_per_volume, queue_cfg.block)
    n = args.refills * min(queue_cfg.max_length, queue_cfg.samples_per_volume)
    per_take = args.batch_size // len(tasks)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(-(-n // per_take)):
        on_device(volumes, queue.take(per_take), device)
    _synchronize(device)
    rate = -(-n // per_take) * per_take / (time.perf_counter() - start)
    print(
        f"CTA-sized volume {shape}: preprocessing + class index {prepare_seconds:.1f} s once, "
        f"queue {rate:.1f} samples/s over {args.refills} fills (gathered on {device}), peak RSS of the process so far {peak_rss_gib():.2f} GiB"
    )


def time_pipeline_and_training(args: argparse.Namespace, cfg, tasks: list[str], device: torch.device) -> float:
    """Measurements 1-3: the data pipeline, the training step and their ratio; returns the step's samples/s."""

    datamodule: MultiTaskDataModule = instantiate(cfg.data, tasks=tasks, radius=cfg.model.depth, seed=0)
    start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup()
    print(f"phantoms ready and preprocessed in {time.perf_counter() - start:.1f} s")
    batches = iter(datamodule.train_batches())
    queue_cfg = cfg.data.queue
    # a fill stops when the queue is full or every training image has been visited
    per_fill = min(queue_cfg.max_length, min(len(datamodule.subjects[t]["train"]) for t in tasks) * queue_cfg.samples_per_volume)
    n_batches = -(-args.refills * per_fill * len(tasks) // args.batch_size)
    pipeline = time_pipeline(batches, n_batches, datamodule.gather, device)
    indices = time_index_stream(batches, n_batches)
    module = MultiTaskSegmentationModule(tasks, model=dict(cfg.model))
    training = time_training(module, batches, datamodule.gather, args.train_steps, device)
    print(
        f"pipeline (3 tasks, TorchIO queues of blocks of {queue_cfg.block}, balanced, batch {args.batch_size}, {n_batches} batches = "
        f"{args.refills} queue fills per task, gathered on {device}): {pipeline:9.1f} samples/s"
    )
    print(f"of which the host's part, the mini-batches of indices alone:      {indices:9.1f} samples/s")
    print(f"training step (TriplanarCNN, {module.n_params} parameters):      {training:9.1f} samples/s")
    print(f"ratio pipeline / training step: {pipeline / training:.1f}x")

    return training



def time_dense_training(args: argparse.Namespace, tasks: list[str], device: torch.device, patch_rate: float) -> None:
    """Measurement 5: labelled voxels/s of dense against patch training, dense pipeline, dense step memory."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["training=dense", *args.overrides])
    training_cfg = OmegaConf.to_container(cfg.training)
    datamodule: MultiTaskDataModule = instantiate(cfg.data, tasks=tasks, radius=cfg.model.depth, seed=0, training=training_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    batches = iter(datamodule.train_batches())
    n_batches = args.refills * int(training_cfg["queue"]["max_length"]) // int(training_cfg["cubes_per_task"])
    pipeline = time_pipeline(batches, n_batches, datamodule.gather, device)
    cube_rate = time_index_stream(batches, n_batches)
    module = MultiTaskSegmentationModule(tasks, model=dict(cfg.model))
    dense = time_training(module, batches, datamodule.gather, args.train_steps, device)
    cube, per_task = int(training_cfg["cube"]), int(training_cfg["cubes_per_task"])
    print(
        f"dense training (training=dense, {per_task} cube(s) of {cube}^3 per task and step): {dense:9.1f} labelled voxels/s, "
        f"{dense / patch_rate:.0f}x the patch mode's {patch_rate:.1f}"
    )
    bf16 = device.type == "cuda" or cpu_has_native_bf16()
    if bf16:  # the demo's precision, where the device computes bf16 natively
        fast = time_training(module, batches, datamodule.gather, args.train_steps, device, bf16=True)
        print(f"dense training in bf16 autocast (trainer.precision=bf16-mixed): {fast:9.1f} labelled voxels/s, "
              f"{fast / dense:.1f}x fp32, {fast / patch_rate:.0f}x the patch mode's fp32")
    print(f"dense pipeline ({n_batches} mini-batches of cubes, gathered on {device}): {pipeline:9.1f} labelled voxels/s, {pipeline / dense:.1f}x the dense step")
    print(f"of which the host's part, the mini-batches of cube positions alone: {cube_rate:9.1f} cubes/s "
          f"({cube_rate / (per_task * len(tasks)):.0f} mini-batches/s)")
    n_cubes = per_task * len(tasks)
    steps = {keep: dense_step_memory(tasks, dict(cfg.model), n_cubes, cube, device, bf16, keep_freed=keep) for keep in (False, True)}
    before, peak, gpu, estimate, seconds = steps[True]
    print(
        f"dense training step{' in bf16' if bf16 else ''} on {n_cubes} cubes of {cube}^3: peak RSS {peak:.2f} GiB "
        f"({before:.2f} GiB before the first step){'' if gpu is None else f', peak GPU memory {gpu:.2f} GiB'}; "
        f"the check before training estimates {estimate:.2f} GiB"
    )
    default_seconds, default_peak = steps[False][4], steps[False][1]
    print(
        f"the same step, fresh processes: {seconds:.3f} s with freed memory kept for reuse (as mtseg.train trains), "
        f"{default_seconds:.3f} s with glibc's defaults (MTSEG_KEEP_FREED_MEMORY=0; peak RSS {default_peak:.2f} GiB): "
        f"{default_seconds / seconds:.2f}x"
    )


def time_inference(args: argparse.Namespace, device: torch.device) -> None:
    """Measurement 6: dense versus patch-by-patch inference, and optionally a large volume."""
    dense, patches = time_dense_versus_patches(tuple(args.dense_shape), args.patch_voxels, args.slab, device)
    print(
        f"inference on {tuple(args.dense_shape)}: dense {dense:.0f} voxels/s, patch by patch {patches:.1f} voxels/s "
        f"(on {args.patch_voxels} voxels), ratio {dense / patches:.0f}x"
    )
    if args.large_shape:
        rate, peak = time_dense_large(tuple(args.large_shape), args.slab, args.slab_voxels, device)
        print(f"dense inference on {tuple(args.large_shape)}: {rate:.0f} voxels/s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
