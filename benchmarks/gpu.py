"""GPU speed: SimCLR and BYOL with ResNet-18 (CIFAR stem) on CIFAR-10 next to lightly, host-device
synchronisations, a profiled step (``gpu``); ResNet-50 at 224 px streamed from a JPEG folder (``gpu-jpeg``)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

import selfsup
from benchmarks.common import environment, log_windows, median, run_lightly, save
from benchmarks.tables import RESULTS, load
from selfsup.data import load_data
from selfsup.data.sources import Dataset, ImageSet

# forward multiply-accumulates of one 32 px view through ResNet-18 with the CIFAR stem (issue 3)
R18_CIFAR_GMAC = 0.56
# datasheet dense bf16 tensor-core peak, FLOP/s (H100 / H200 SXM); other GPUs: no MFU is reported
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
# the trainer's record_function ranges of a step (views are made inside "forward", by "augment")
PHASES = ("augment", "forward", "optimizer", "after_step")


def _peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _train(cfg: selfsup.TrainConfig, dataset: Dataset) -> Path:
    """A run of ``cfg`` without evaluation in a fresh folder, which it returns."""
    out = Path(tempfile.mkdtemp())
    selfsup.train(cfg, out, overwrite=True, evaluate=False, show_progress=False, data=dataset)
    return out


def gpu_speed(dataset: Dataset, method: str, args: argparse.Namespace, compile: bool = False) -> dict:
    """Steady-state training speed of ``method`` (ResNet-18, CIFAR stem) on one GPU, from the trainer's own log."""
    cfg = selfsup.TrainConfig(method=method, data=args.data, backbone="resnet18", steps=args.steps,
                              batch_size=args.batch_size, device="cuda", log_every=args.window, compile=compile)
    torch.cuda.reset_peak_memory_stats()
    windows = log_windows(_train(cfg, dataset))[1:]  # first window: warm-up
    sps = median(windows)
    # forward-equivalents per sample: forward + backward = 3 per trained view (two for SimCLR, BYOL, Barlow; MoCo's
    # default trains one query view) plus 1 per target view (BYOL's two, MoCo's key)
    passes = {"byol": 2 * 3 + 2, "moco": 3 + 1}.get(method, 2 * 3)
    flops = passes * 2 * R18_CIFAR_GMAC * 1e9
    peak = _peak_flops()
    return dict(method=method, compile=compile, samples_per_second=round(sps), windows=[round(w) for w in windows],
                seconds_per_epoch=round(len(dataset.pretrain) / sps, 2),
                minutes_for_200_epochs=round(200 * len(dataset.pretrain) / sps / 60, 1),
                peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                tflops=round(sps * flops / 1e12, 1), mfu=round(sps * flops / peak, 3) if peak else None)


def sync_points(dataset: Dataset, args: argparse.Namespace) -> list[str]:
    """Source lines that synchronise the host with the GPU during a few SimCLR steps (should be the log flush)."""
    cfg = selfsup.TrainConfig(method="simclr", data=args.data, backbone="resnet18", steps=4, batch_size=args.batch_size,
                              device="cuda", log_every=2)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(cfg, dataset)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sorted({f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})


def profile_step(dataset: Dataset, args: argparse.Namespace, method: str = "simclr") -> dict:
    """Where the time of a step goes (torch.profiler over a short run): GPU time per trainer phase."""
    from torch.profiler import ProfilerActivity, profile

    cfg = selfsup.TrainConfig(method=method, data=args.data, backbone="resnet18", steps=args.profile_steps,
                              batch_size=args.batch_size, device="cuda", log_every=args.profile_steps)
    _train(cfg, dataset)  # warm-up: cuDNN autotuning
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _train(cfg, dataset)
    events = prof.key_averages()
    table = events.table(sort_by="self_device_time_total", row_limit=30)
    (RESULTS / f"gpu_profile_{method}.txt").write_text(table + "\n")
    # kernel time by trainer phase: the kernels launched inside each record_function range of the step
    # (the autograd thread's kernels, outside every range, are "backward")
    cpu = torch.autograd.DeviceType.CPU
    ranges = [e for e in prof.events() if e.device_type == cpu and e.name in PHASES]
    per_step = 1e3 * args.profile_steps
    # kernels and copies only: the ranges' own GPU-side annotations span wall time and are left out
    kernels = sum(e.self_device_time_total for e in events
                  if e.device_type == torch.autograd.DeviceType.CUDA and e.key not in PHASES)
    gpu_ms = {n: round(sum(e.device_time_total for e in ranges if e.name == n) / per_step, 2) for n in PHASES}
    gpu_ms["backward"] = round(kernels / per_step - gpu_ms["forward"] - gpu_ms["optimizer"] - gpu_ms["after_step"], 2)
    gpu_ms["forward"] = round(gpu_ms["forward"] - gpu_ms["augment"], 2)  # backbone, heads and loss only
    cpu_ms = {n: round(sum(e.cpu_time_total for e in ranges if e.name == n) / per_step, 2) for n in PHASES}
    return dict(method=method, steps=args.profile_steps, gpu_kernel_ms_per_step=gpu_ms, host_ms_per_step=cpu_ms,
                gpu_busy_ms_per_step=round(kernels / per_step, 2),
                note="kernel time, not wall time; host time is under the profiler, which slows the host")


def gpu(args: argparse.Namespace) -> None:
    """Issue 3's GPU table: SimCLR and BYOL speed, lightly side by side, sync points and a profile."""
    if not torch.cuda.is_available():
        raise SystemExit("the gpu target needs a CUDA GPU")
    result = load("gpu") or {}
    result.update(name="gpu", **environment(), dataset="CIFAR-10", backbone="resnet18 (CIFAR stem)",
                  batch_size=args.batch_size, steps=args.steps)
    dataset = load_data(args.data)
    for part in args.parts.split(","):
        print(f"--- {part}", flush=True)
        if part in ("simclr", "byol", "moco", "barlow"):
            result.setdefault("speed", {})[part] = gpu_speed(dataset, part, args)
        elif part == "simclr-compile":
            result.setdefault("speed", {})[part] = gpu_speed(dataset, "simclr", args, compile=True)
        elif part == "lightly":
            t = run_lightly(args.lightly_python, args.data, args.steps, args.batch_size, Path(tempfile.mkdtemp()),
                            device="cuda", backbone="resnet18", workers=args.workers, warmup_steps=args.window)
            result["lightly"] = dict(version=t["lightly_version"], workers=args.workers,
                                     samples_per_second=round(t["samples_per_second"]),
                                     peak_memory_gib=round(t["peak_memory_gib"], 2), timed_steps=t["timed_steps"])
        elif part == "sync":
            result["sync_points"] = sync_points(dataset, args)
        elif part == "profile":
            result["profile"] = profile_step(dataset, args)
        result.setdefault("measured_at", {})[part] = result["commit"]  # which commit measured which part
        print(json.dumps({k: result.get(k) for k in ("speed", "lightly", "sync_points", "profile")}), flush=True)
        save(result, "gpu")


def _make_jpeg(args: tuple[Path, int]) -> None:
    """A photo-like synthetic 500x375 JPEG: smooth colour fields plus fine grain (quality 90)."""
    import numpy as np
    from PIL import Image

    path, seed = args
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    grain = rng.normal(0, 12, (375, 500, 3))
    Image.fromarray(np.clip(np.asarray(low) + grain, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpeg_folder(root: Path, n: int, classes: int = 10) -> None:
    """``root/train/c*/*.jpg``: ``n`` synthetic ImageNet-sized JPEGs, written in parallel."""
    from multiprocessing import Pool

    jobs = []
    for i in range(n):
        d = root / "train" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((d / f"{i:07d}.jpg", i))
    with Pool() as pool:
        pool.map(_make_jpeg, jobs, chunksize=64)


def gpu_jpeg(args: argparse.Namespace) -> None:
    """ResNet-50 SimCLR at 224 px from a folder of JPEGs, streamed: what bounds it, decoding or compute?

    Three numbers: training samples/s from the folder (workers decode + resize, the GPU does the rest);
    the workers' decode rate alone (images/s, no training); and training samples/s on the same images
    already on the GPU (compute alone). The smaller of the last two is the bound."""
    if not torch.cuda.is_available():
        raise SystemExit("the gpu-jpeg target needs a CUDA GPU")
    root = Path(args.folder)
    if not (root / "train").is_dir():
        make_jpeg_folder(root, args.make)
    env = environment()
    data = load_data(str(root / "train"), 224, stream=True)
    images = data.pretrain.images
    n_bytes = sum(Path(p).stat().st_size for p in images.paths[:1000]) / min(1000, len(images))

    def speed(dataset: Dataset) -> float:
        cfg = selfsup.TrainConfig(method="simclr", data=str(root / "train"), backbone="resnet50", steps=args.steps,
                                  batch_size=args.batch_size, image_size=224, device="cuda", log_every=args.window,
                                  workers=args.workers, augment={"blur_p": 0.5})
        return median(log_windows(_train(cfg, dataset))[1:])

    from_folder = speed(data)
    order = torch.randperm(len(images))[: args.steps * args.batch_size]
    start, n = time.perf_counter(), 0
    for _, x, _ in images.batches(order, 0, args.batch_size, args.workers, True):
        n += len(x)
    decode = n / (time.perf_counter() - start)
    resident = images[torch.arange(min(len(images), 4096))]
    on_gpu = speed(Dataset("resident", pretrain=ImageSet(resident)))
    result = dict(name="gpu-jpeg", **env, backbone="resnet50", method="simclr", image_size=224,
                  batch_size=args.batch_size, workers=args.workers, images=len(images),
                  mean_jpeg_kib=round(n_bytes / 1024, 1), jpeg_size="500x375 synthetic",
                  train_samples_per_second_from_jpeg=round(from_folder), decode_images_per_second=round(decode),
                  train_samples_per_second_on_gpu=round(on_gpu),
                  bound="decode" if decode < on_gpu else "compute")
    print(json.dumps(result), flush=True)
    save(result, "gpu_jpeg")
