"""Benchmark runner: measured numbers into benchmarks/results/*.json and a Markdown table.

Targets (the protocol of ../shared/docs, written down in benchmarks/results/README.md):

* ``cpu-simclr``: SimCLR on CIFAR-10 (JPEG folders), the small convnet, batch 256, 1000 steps, kNN
  (k=200, T=0.1) on test, next to lightly 1.6's SimCLR with the same backbone, data and steps, run
  side by side on this machine. Records samples/s (one sample = one image with both views; speed
  windows alternate ours / lightly), final kNN and linear probe, random-init kNN, and the two-view
  augmentation throughput on one thread against lightly's per-image transform.
* ``cpu-methods``: every contrastive / siamese method and supervised cross-entropy, same setting.
* ``gpu``: SimCLR and BYOL, ResNet-18 (CIFAR stem), CIFAR-10, batch 512 on one GPU: samples/s, s/epoch,
  peak memory, MFU; lightly's SimCLR side by side (16 workers); host-sync check; a profiled step.
* ``gpu-accuracy``: one recipe end to end on one GPU (kNN and linear top-1, wall time).
* ``gpu-jpeg``: ResNet-50 at 224 px streamed from a JPEG folder: decode- or compute-bound.

lightly lives in a side virtualenv (never a selfsup dependency)::

    python3 -m venv /work/lightly-env
    /work/lightly-env/bin/pip install torch torchvision "lightly==1.6.*"
    /work/lightly-env/bin/pip install --no-deps -e .

Run from the repository root::

    python benchmarks/run.py cpu-simclr --data ../shared/data/cifar10 --lightly-python /work/lightly-env/bin/python
    python benchmarks/run.py table     # rebuild benchmarks/results/README.md from the JSON files
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import selfsup
from selfsup.backbones import build_backbone
from selfsup.data import load_data
from selfsup.data.augment import AugmentConfig, augment
from selfsup.evaluate import probe
from selfsup.evaluate.report import format_table
from selfsup.methods.base import Batch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def environment() -> dict:
    """Command, commit and hardware, recorded with every result. ``$SELFSUP_BENCH_COMMIT`` names the commit
    where the checkout's .git cannot (a copy of the working tree on another machine whose .git lags)."""
    import os

    named = os.environ.get("SELFSUP_BENCH_COMMIT")
    commit = named or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=HERE).stdout
    # results written by earlier targets do not make the code dirty; a lagging .git cannot say anything
    dirty = not named and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                          ":!benchmarks/results"], capture_output=True, text=True,
                                         cwd=HERE).stdout.strip()
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(command=" ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
                commit=commit.strip() + ("+dirty" if dirty else ""), cpu=cpu, cpu_cores=os.cpu_count(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                gpu_count=torch.cuda.device_count(), torch=torch.__version__, python=platform.python_version(),
                date=time.strftime("%Y-%m-%d %H:%M:%S"))


def augment_throughput(images: torch.Tensor, seconds: float = 10.0, batch: int = 256) -> float:
    """Views/s of our two-view SimCLR augmentation on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, x = AugmentConfig(), images[:batch]
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            augment(x, cfg, 32, g, views=2)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            augment(x, cfg, 32, g, views=2)
            n += 2 * batch
        return n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def ours(data: str, steps: int, batch: int, out: Path, dataset=None, evaluate: bool = True) -> dict:
    cfg = selfsup.TrainConfig(method="simclr", data=data, backbone="small", steps=steps, batch_size=batch,
                              device="cpu")
    run = selfsup.train(cfg, out, overwrite=True, evaluate=evaluate, show_progress=False, data=dataset)
    return run.metrics


def lightly(python: str, data: str, steps: int, batch: int, out: Path) -> dict:
    subprocess.run([python, str(HERE / "lightly_simclr.py"), "--data", data, "--steps", str(steps),
                    "--batch-size", str(batch), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "timing.json").read_text())


def cpu_simclr(args: argparse.Namespace) -> None:
    env = environment()
    dataset = load_data(args.data)
    print(f"data: {len(dataset.pretrain)} train / {len(dataset.test)} test images", flush=True)
    result: dict = dict(name="cpu-simclr", **env, dataset="CIFAR-10 (JPEG folders)", backbone="small",
                        method="simclr", steps=args.steps, batch_size=args.batch_size)

    ours_views = augment_throughput(dataset.pretrain.images)
    lt = Path(tempfile.mkdtemp()) / "transform.json"
    subprocess.run([args.lightly_python, str(HERE / "lightly_transform_speed.py"), "--data", args.data, "--out",
                    str(lt)], check=True, stdout=subprocess.DEVNULL)
    lightly_views = json.loads(lt.read_text())["views_per_second"]
    result["augment"] = dict(ours_views_per_second=round(ours_views), lightly_views_per_second=round(lightly_views),
                             ratio=round(ours_views / lightly_views, 1), threads=1, batch=256, image_size=32)
    print(f"two-view augmentation, one thread: ours {ours_views:.0f} views/s, lightly {lightly_views:.0f} "
          f"views/s ({ours_views / lightly_views:.1f}x)", flush=True)

    work = Path(tempfile.mkdtemp())
    speeds: dict[str, list[float]] = {"ours": [], "lightly": []}
    for r in range(args.rounds):  # alternate short windows: machine drift hits both alike
        m = ours(args.data, args.speed_steps, args.batch_size, work / f"ours{r}", dataset, evaluate=False)
        speeds["ours"].append(m["samples_per_second"])
        t = lightly(args.lightly_python, args.data, args.speed_steps, args.batch_size, work / f"lightly{r}")
        speeds["lightly"].append(t["samples_per_second"])
        print(f"speed round {r}: ours {speeds['ours'][-1]:.0f}, lightly {speeds['lightly'][-1]:.0f} samples/s",
              flush=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in speeds.items()}
    result["speed"] = dict(steps_per_window=args.speed_steps, rounds=args.rounds, samples_per_second=speeds,
                           median=med, ratio=round(med["ours"] / med["lightly"], 2))

    m = ours(args.data, args.steps, args.batch_size, work / "ours_full", dataset)
    print(f"ours {args.steps} steps: kNN {m['knn_top1']:.3f} (random {m['random_init_knn_top1']:.3f}), "
          f"{m['samples_per_second']:.0f} samples/s", flush=True)
    t = lightly(args.lightly_python, args.data, args.steps, args.batch_size, work / "lightly_full")
    backbone = build_backbone("small")
    backbone.load_state_dict(torch.load(work / "lightly_full" / "backbone.pt", map_location="cpu"))
    lm = probe(backbone, dataset.train, dataset.test, image_size=32, device="cpu")
    print(f"lightly {args.steps} steps: kNN {lm['knn_top1']:.3f}, {t['samples_per_second']:.0f} samples/s", flush=True)
    result["ours"] = {k: m[k] for k in ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1",
                                        "train_seconds", "samples_per_second")}
    result["lightly"] = dict(version=t.get("lightly_version"), knn_top1=lm["knn_top1"], linear_top1=lm["linear_top1"],
                             train_seconds=t["train_seconds"], samples_per_second=t["samples_per_second"])
    save(result, "cpu_simclr")


# the contrastive / siamese family on the CPU table (issue 4): name -> (method, method_args, config overrides)
CPU_METHODS: dict[str, tuple[str, dict, dict]] = {
    "simclr": ("simclr", {}, {}), "mocov1": ("moco", {"version": 1}, {}), "mocov2": ("moco", {"version": 2}, {}),
    "byol": ("byol", {}, {}), "byol-sgd": ("byol", {}, {"optimizer": "sgd", "lr": 0.12, "weight_decay": 5e-4}),
    # lightly's step: its loss 0.5 (-cos - cos) is a quarter of the paper's (2 - 2 cos) + (2 - 2 cos) we use
    "byol-sgd-lightly": ("byol", {}, {"optimizer": "sgd", "lr": 0.03, "weight_decay": 5e-4}),
    # solo-learn's CIFAR LARS (trust coefficient 0.02, the step capped at the scheduled lr) and its rates
    "byol-lars-solo": ("byol", {}, {"lr": 1.0, "weight_decay": 1e-5, "lars_eta": 0.02, "lars_clip": True}),
    "barlow": ("barlow", {}, {}), "npid": ("npid", {}, {}),
    "barlow-lars-solo": ("barlow", {}, {"lr": 0.3, "weight_decay": 1e-4, "lars_eta": 0.02, "lars_clip": True}),
    "barlow-solo": ("barlow", {"scale_loss": 0.1},  # solo-learn's whole optimiser setting: also the loss x 0.1
                    {"lr": 0.3, "weight_decay": 1e-4, "lars_eta": 0.02, "lars_clip": True}),
    "npid-nce": ("npid", {"loss": "nce"}, {}),
    "npid-nce-t0.5": ("npid", {"loss": "nce", "temperature": 0.5}, {}), "supcon": ("supcon", {}, {}),
    "triplet": ("triplet", {}, {}), "triplet-random": ("triplet", {"mining": "random"}, {}),
    "triplet-paper": ("triplet", {"mining": "hard", "hard_from": 0.1, "candidates": 100, "top_k": 4}, {}),
    "supervised": ("supervised", {}, {}),
}


def cpu_methods(args: argparse.Namespace) -> None:
    """Every joint-embedding method, small convnet, CIFAR-10, batch 256, 1000 steps, on the CPU.

    One run at a time (each uses every core); each finished method is written at once, so an
    interrupted table resumes where it stopped (``--force`` re-runs).
    """
    path = RESULTS / "cpu_methods.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(name="cpu-methods", dataset="CIFAR-10 (JPEG folders)", backbone="small", steps=args.steps,
                  batch_size=args.batch_size)
    runs = result.setdefault("runs", {})
    env, dataset = environment(), load_data(args.data)  # the code that runs is the code at start
    if args.speed_steps:  # a quiet pass: speed alone, every method back to back on an otherwise idle machine
        for name in args.methods.split(","):
            method, method_args, extra = CPU_METHODS[name]
            cfg = selfsup.TrainConfig(method=method, data=args.data, backbone="small", steps=args.speed_steps,
                                      batch_size=args.batch_size, device="cpu", method_args=method_args,
                                      log_every=max(1, args.speed_steps // 4), **extra)
            out = Path(tempfile.mkdtemp())
            selfsup.train(cfg, out, overwrite=True, evaluate=False, show_progress=False, data=dataset)
            with open(out / "metrics.csv") as f:
                windows = sorted(float(r["samples_per_second"]) for r in csv.DictReader(f))[1:]
            runs.setdefault(name, {})["quiet_samples_per_second"] = round(windows[len(windows) // 2], 1)
            runs[name]["quiet_commit"] = env["commit"]
            print(f"{name}: {runs[name]['quiet_samples_per_second']} samples/s", flush=True)
        result["quiet"] = dict(steps=args.speed_steps, date=env["date"], note="median log window of a short run "
                               "per method, nothing else running; the full runs' samples/s shared the machine")
        save(result, "cpu_methods")
        return
    for name in args.methods.split(","):
        if name in runs and not args.force:
            continue
        method, method_args, extra = CPU_METHODS[name]
        cfg = selfsup.TrainConfig(method=method, data=args.data, backbone="small", steps=args.steps,
                                  batch_size=args.batch_size, device="cpu", method_args=method_args, **extra)
        m = selfsup.train(cfg, Path(tempfile.mkdtemp()), overwrite=True, show_progress=False, data=dataset).metrics
        runs[name] = dict(**{k: m[k] for k in ("knn_top1", "linear_top1", "random_init_knn_top1",
                                               "random_init_linear_top1", "train_seconds", "samples_per_second")},
                          method=method, method_args=method_args, config=extra, **env)
        print(f"{name}: kNN {m['knn_top1']:.3f} linear {m['linear_top1']:.3f} (random {m['random_init_knn_top1']:.3f}"
              f" / {m['random_init_linear_top1']:.3f}), {m['samples_per_second']:.0f} samples/s", flush=True)
        save(result, "cpu_methods")


# forward multiply-accumulates of one 32 px view through ResNet-18 with the CIFAR stem (issue 3)
R18_CIFAR_GMAC = 0.56
# datasheet dense bf16 tensor-core peak, FLOP/s (H100 / H200 SXM); other GPUs: no MFU is reported
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def _peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def gpu_speed(dataset, method: str, args: argparse.Namespace, compile: bool = False) -> dict:
    """Steady-state training speed of ``method`` (ResNet-18, CIFAR stem) on one GPU, from the trainer's own log."""

    out = Path(tempfile.mkdtemp())
    cfg = selfsup.TrainConfig(method=method, data=args.data, backbone="resnet18", steps=args.steps,
                              batch_size=args.batch_size, device="cuda", log_every=args.window, compile=compile)
    torch.cuda.reset_peak_memory_stats()
    selfsup.train(cfg, out, overwrite=True, evaluate=False, show_progress=False, data=dataset)
    with open(out / "metrics.csv") as f:
        windows = [float(r["samples_per_second"]) for r in csv.DictReader(f)][1:]  # first window: warm-up
    sps = sorted(windows)[len(windows) // 2]
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


def sync_points(dataset, args: argparse.Namespace) -> list[str]:
    """Source lines that synchronise the host with the GPU during a few SimCLR steps (should be the log flush)."""
    import warnings

    cfg = selfsup.TrainConfig(method="simclr", data=args.data, backbone="resnet18", steps=4, batch_size=args.batch_size,
                              device="cuda", log_every=2)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            selfsup.train(cfg, Path(tempfile.mkdtemp()), overwrite=True, evaluate=False, show_progress=False,
                          data=dataset)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sorted({f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})


def profile_step(dataset, args: argparse.Namespace, method: str = "simclr") -> dict:
    """Where the time of a step goes (torch.profiler over a short run): GPU time per trainer phase."""
    from torch.profiler import ProfilerActivity, profile

    cfg = selfsup.TrainConfig(method=method, data=args.data, backbone="resnet18", steps=args.profile_steps,
                              batch_size=args.batch_size, device="cuda", log_every=args.profile_steps)
    selfsup.train(cfg, Path(tempfile.mkdtemp()), overwrite=True, evaluate=False, show_progress=False,
                  data=dataset)  # warm-up: cuDNN autotuning
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        selfsup.train(cfg, Path(tempfile.mkdtemp()), overwrite=True, evaluate=False, show_progress=False,
                      data=dataset)
    events = prof.key_averages()
    table = events.table(sort_by="self_device_time_total", row_limit=30)
    (RESULTS / f"gpu_profile_{method}.txt").write_text(table + "\n")
    # kernel time by trainer phase: the kernels launched inside each record_function range of the step
    # (views are made inside "forward"; the autograd thread's kernels, outside every range, are "backward")
    cpu = torch.autograd.DeviceType.CPU
    ranges = [e for e in prof.events() if e.device_type == cpu and e.name in ("augment", "forward", "optimizer",
                                                                             "after_step")]
    per_step = 1e3 * args.profile_steps
    phases = ("augment", "forward", "optimizer", "after_step")
    # kernels and copies only: the ranges' own GPU-side annotations span wall time and are left out
    kernels = sum(e.self_device_time_total for e in events
                  if e.device_type == torch.autograd.DeviceType.CUDA and e.key not in phases)
    gpu_ms = {n: round(sum(e.device_time_total for e in ranges if e.name == n) / per_step, 2)
              for n in ("augment", "forward", "optimizer", "after_step")}
    gpu_ms["backward"] = round(kernels / per_step - gpu_ms["forward"] - gpu_ms["optimizer"] - gpu_ms["after_step"], 2)
    gpu_ms["forward"] = round(gpu_ms["forward"] - gpu_ms["augment"], 2)  # backbone, heads and loss only
    cpu_ms = {n: round(sum(e.cpu_time_total for e in ranges if e.name == n) / per_step, 2)
              for n in ("augment", "forward", "optimizer", "after_step")}
    return dict(method=method, steps=args.profile_steps, gpu_kernel_ms_per_step=gpu_ms, host_ms_per_step=cpu_ms,
                gpu_busy_ms_per_step=round(kernels / per_step, 2),
                note="kernel time, not wall time; host time is under the profiler, which slows the host")


def gpu(args: argparse.Namespace) -> None:
    """Issue 3's GPU table: SimCLR and BYOL speed, lightly side by side, sync points and a profile."""
    if not torch.cuda.is_available():
        raise SystemExit("the gpu target needs a CUDA GPU")
    path = RESULTS / "gpu.json"
    result = json.loads(path.read_text()) if path.exists() else {}
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
            out = Path(tempfile.mkdtemp())
            subprocess.run([args.lightly_python, str(HERE / "lightly_simclr.py"), "--data", args.data, "--steps",
                            str(args.steps), "--batch-size", str(args.batch_size), "--out", str(out), "--device",
                            "cuda", "--backbone", "resnet18", "--workers", str(args.workers), "--warmup-steps",
                            str(args.window)], check=True)
            t = json.loads((out / "timing.json").read_text())
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


def gpu_accuracy(args: argparse.Namespace) -> None:
    """Full recipes (e.g. the issue-4 table: ResNet-18, 200 epochs each): kNN and linear top-1, training time.

    ``--config`` takes a comma-separated list, run in turn. ``--time-limit`` (minutes, for the whole
    command) ends the current run cleanly at a checkpoint; the same command then resumes it, and recipes
    already recorded are skipped, so a table longer than one sitting fills up over several calls.
    """
    from selfsup.config import config_from_dict, load_config
    from selfsup.engine.checkpoint import load_checkpoint

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-accuracy runs on a CUDA GPU; pass --device cpu for a (slow) CPU run")
    env, started = environment(), time.monotonic()
    path = RESULTS / "gpu_accuracy.json"
    result = json.loads(path.read_text()) if path.exists() else dict(name="gpu-accuracy", runs={})
    for config in args.config.split(","):
        name = Path(config).stem
        out = Path(args.out) / name
        ckpt = out / "checkpoint.pt"
        resume = ckpt.exists() and not load_checkpoint(ckpt)["finished"]  # a run cut short: always continue it
        if name in result["runs"] and not args.force and not resume:
            print(f"{name}: recorded already (--force re-runs it)", flush=True)
            continue
        cfg = config_from_dict({**load_config(config), "data": args.data, "device": args.device})
        if args.epochs:
            cfg.epochs = args.epochs
        left = None if args.time_limit is None else args.time_limit - (time.monotonic() - started) / 60
        if left is not None and left <= 0:
            return
        run = selfsup.train(cfg, None if resume else out, overwrite=True, resume=out if resume else None,
                            show_progress=False, time_limit=left)
        m = run.metrics
        if m.get("stopped"):
            print(f"{name}: time limit at step {m['steps']} of {m['total_steps']}; run the same command to continue",
                  flush=True)
            return
        with open(out / "metrics.csv") as f:
            knn = {r["epoch"]: float(r["knn_top1"]) for r in csv.DictReader(f) if r["knn_top1"]}
        result["runs"][name] = dict(**env, config=config, **{k: m[k] for k in (
            "method", "epochs", "batch_size", "knn_top1", "linear_top1", "random_init_knn_top1",
            "random_init_linear_top1", "train_seconds", "samples_per_second")},
            knn_during_training={str(int(e) + 1): v for e, v in knn.items()})
        print(json.dumps(result["runs"][name]), flush=True)
        save(result, "gpu_accuracy")


DIAGNOSES = {
    "selfsup": "the recipe as it ships",
    "wd-everywhere": "lightly's optimiser: weight decay on every parameter (norms and biases too), no warmup",
    "bn-per-view": "lightly's forward: one backbone pass per view, so batch norm sees each view's batch alone",
    "lightly": "lightly 1.6's SimCLR itself (per-image PIL transforms), same data, backbone, batch, lr, epochs",
    "strong-jitter": "colour jitter of strength 1 (0.8, 0.8, 0.8, 0.2), as SimCLR's paper and solo-learn use",
    "solo-learn": "solo-learn's CIFAR settings: LARS at 0.4 per 256 images (trust coefficient 0.02, clipped), wd 1e-5, "
                  "T 0.2, projector 2048-2048-256, jitter 0.8/0.8/0.8/0.2, solarize 0.1",
    "lightly-head": "lightly's projection head: a BatchNorm on the output instead of the last layer's bias",
    "fp32": "float32 training (no bf16 autocast), as lightly's benchmark trains",
}
STRONG_JITTER = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}
RECIPE_CHANGES = {  # what each diagnosis changes in recipes/cifar10/simclr.yaml
    "wd-everywhere": {"warmup_epochs": 0},
    "strong-jitter": {"augment": STRONG_JITTER},
    "solo-learn": {"optimizer": "lars", "lr": 0.8, "weight_decay": 1e-5, "lars_eta": 0.02, "lars_clip": True,
                   "augment": {**STRONG_JITTER, "solarize_p": 0.1},
                   "method_args": {"temperature": 0.2, "proj_hidden_dim": 2048, "proj_dim": 256}},
    "lightly-head": {"method_args": {"proj_last_bn": True}},
}


def gpu_diagnose(args: argparse.Namespace) -> None:
    """Where does SimCLR's gap to lightly's published 84.8% kNN come from? Short runs of the CIFAR-10 recipe
    with one difference from lightly's benchmark switched at a time, and lightly's own run, all scored by
    the same kNN / linear probe (``--parts`` picks them, ``DIAGNOSES`` says what each changes)."""
    from selfsup.config import config_from_dict, load_config
    from selfsup.engine import optim, trainer
    from selfsup.methods.simclr import SimCLR

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-diagnose runs on a CUDA GPU; pass --device cpu for a (slow) CPU run")
    env, dataset, device = environment(), load_data(args.data), args.device
    path = RESULTS / "gpu_accuracy.json"
    result = json.loads(path.read_text()) if path.exists() else dict(name="gpu-accuracy", runs={})
    key = f"diagnostics_vs_lightly_{args.epochs}_epochs"
    table = result.setdefault(key, {})
    table.update(purpose="is the gap to lightly's 84.8% kNN in the data, the optimiser, batch norm or the pipeline?",
                 command=env["command"], commit=env["commit"], gpu=env["gpu"])
    recipe = {**load_config("recipes/cifar10/simclr.yaml"), "data": args.data, "device": device, "epochs": args.epochs}
    for part in args.parts.split(","):
        print(f"--- {part}: {DIAGNOSES[part]}", flush=True)
        if part == "lightly":
            steps = args.epochs * (len(dataset.pretrain) // recipe["batch_size"])
            out = Path(tempfile.mkdtemp())
            subprocess.run([args.lightly_python, str(HERE / "lightly_simclr.py"), "--data", args.data, "--steps",
                            str(steps), "--batch-size", str(recipe["batch_size"]), "--out", str(out), "--device",
                            device, "--backbone", "resnet18", "--workers", str(args.workers)], check=True)
            backbone = build_backbone("resnet18")
            backbone.load_state_dict(torch.load(out / "backbone.pt", map_location="cpu"))
            scores = probe(backbone.to(device), dataset.train, dataset.test, image_size=dataset.train.images.shape[-1],
                           device=device)
            timing = json.loads((out / "timing.json").read_text())
            row = dict(**scores, samples_per_second=round(timing["samples_per_second"]))
        else:
            cfg = config_from_dict({**recipe, **RECIPE_CHANGES.get(part, {})})
            saved = optim.param_groups, SimCLR.training_step, trainer.autocast
            if part == "wd-everywhere":
                optim.param_groups = lambda model, wd, *_: [dict(params=list(model.parameters()), weight_decay=wd)]
            if part == "fp32":
                trainer.autocast = lambda device: contextlib.nullcontext()
            if part == "bn-per-view":
                def per_view(self, batch):  # noqa: ANN001 -- SimCLR.training_step with one pass per view
                    from selfsup.data.views import augmented_views

                    x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
                    z1, z2 = (self.projector(self.backbone(v)) for v in x.chunk(2))
                    return self.objective(z1, z2, batch)
                SimCLR.training_step = per_view
            try:
                m = selfsup.train(cfg, Path(tempfile.mkdtemp()), overwrite=True, show_progress=False,
                                  data=dataset).metrics
            finally:
                optim.param_groups, SimCLR.training_step, trainer.autocast = saved
            row = {k: m[k] for k in ("knn_top1", "linear_top1", "samples_per_second")}
        row["commit"] = env["commit"]
        table.pop("conclusion", None)  # written by hand once the rows are read
        table[DIAGNOSES[part]] = row
        print(json.dumps(row), flush=True)
        save(result, "gpu_accuracy")


class _OpCounter:
    """Counts the ATen ops dispatched while active (what the host pays for, once per op and kernel launch)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self.mode = 0, Mode()

    def __enter__(self) -> _OpCounter:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def checkpoint_cost(method: torch.nn.Module, opt: torch.optim.Optimizer, repeats: int) -> dict:
    """Milliseconds the training thread spends per checkpoint of ``method`` and ``opt`` (median of
    ``repeats``): writing it itself (save_checkpoint) against handing it to the background writer."""
    from selfsup.engine.checkpoint import CheckpointWriter, save_checkpoint

    payload = lambda: dict(state=method.state_dict(), optimizer=opt.state_dict())  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        path, writer = Path(tmp) / "checkpoint.pt", CheckpointWriter()
        sync, background = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            save_checkpoint(path, payload())
            sync.append(time.perf_counter() - start)
            writer.wait()
            start = time.perf_counter()
            writer.save(path, payload())
            background.append(time.perf_counter() - start)
            writer.wait()
        megabytes = path.stat().st_size / 1e6
    med = lambda xs: round(1e3 * sorted(xs)[len(xs) // 2])  # noqa: E731
    return dict(megabytes=round(megabytes), synchronous=med(sync), background_writer=med(background),
                note="the first background save allocates its buffers; later ones reuse them")


HOST_RECIPES = ("simclr", "moco", "byol", "barlow", "supcon")


def recipe_ops(name: str, images: torch.Tensor) -> dict[str, int]:
    """ATen ops of one training step of ``recipes/cifar10/<name>.yaml`` (its method, options and optimiser) on the
    GPU code path, channels-last as on a GPU: forward (views included), backward, optimiser step + after_step."""
    from selfsup.config import config_from_dict, load_config
    from selfsup.engine.build import build_method
    from selfsup.engine.optim import build_optimizer

    cfg = config_from_dict({**load_config(HERE.parent / f"recipes/cifar10/{name}.yaml"), "batch_size": len(images)})
    method = build_method(cfg, 32, 10).to(memory_format=torch.channels_last)
    opt = build_optimizer(method, cfg.optimizer or "sgd", 0.1, 0.9, cfg.weight_decay or 0.0, fused=True,
                          lars_eta=cfg.lars_eta, lars_clip=cfg.lars_clip, norm_bias_lr_scale=cfg.norm_bias_lr_scale)
    labels = torch.arange(len(images)) % 10
    for step in range(2):  # the second step is the steady state (first-step state is built in the first)
        ops = _step_ops(method, opt, Batch(images, labels, torch.arange(len(images)),
                                           torch.Generator().manual_seed(step), 0.0))
    return ops


def _step_ops(method: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch) -> dict[str, int]:
    """ATen ops of one training step: forward (views included), backward, optimiser step + after_step."""
    with _OpCounter() as c:
        loss = method.training_step(batch)
    ops = {"forward": c.n}
    with _OpCounter() as c:
        loss.backward()
    ops["backward"] = c.n
    with _OpCounter() as c:
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(0.5)
    ops["optimizer_and_after_step"] = c.n
    return ops


def host(args: argparse.Namespace) -> None:
    """The host side of one SimCLR ResNet-18 step on the GPU code path, measured on the CPU.

    On a GPU the step of ResNet-18 on CIFAR is bound by the host when the host cannot issue kernels as fast
    as the GPU runs them (benchmarks/results/gpu.json: 21 ms of kernels, ~28 ms per step). Each ATen op
    dispatched is host work paid once per kernel launch, so this counts the ops of each phase of a step
    (views, backbone + head + loss, backward, optimiser) with the masked augmentation ops on their dense
    GPU path, and times the views on a batch of 8 (one thread), small enough that per-op overhead, not
    arithmetic, is what the clock sees.
    """
    import selfsup.data.augment
    import selfsup.data.ops.base
    import selfsup.data.ops.color
    from selfsup.data.views import augmented_views
    from selfsup.engine.build import build_method
    from selfsup.engine.optim import build_optimizer

    for module in (selfsup.data.augment, selfsup.data.ops.base, selfsup.data.ops.color):
        module.accelerated = lambda t: True  # the GPU's code path
    torch.set_num_threads(1)
    cfg = selfsup.TrainConfig(method="simclr", data="cifar10", backbone="resnet18", batch_size=8)
    method = build_method(cfg, 32, 10)
    opt = build_optimizer(method, "sgd", 0.1, 0.9, 5e-4, fused=True)  # as the trainer on a GPU
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    batch = Batch(images, None, torch.arange(args.batch_size), gen, 0.0)
    _step_ops(method, opt, batch)  # a first step builds the state (optimiser momenta) that later steps reuse
    with _OpCounter() as c:
        augmented_views(images, method.aug, 32, gen)
    step = _step_ops(method, opt, batch)
    ops = dict(views=c.n, backbone_head_loss=step["forward"] - c.n, backward=step["backward"],
               optimizer=step["optimizer_and_after_step"])
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.calls):
            augmented_views(images, method.aug, 32, gen)
        times.append((time.perf_counter() - start) / args.calls * 1e6)
    result = dict(environment(), batch=args.batch_size, image_size=32, threads=1,
                  ops_per_step=ops, views_host_us=round(sorted(times)[len(times) // 2]),
                  recipe_ops_per_step={name: recipe_ops(name, images) for name in HOST_RECIPES},
                  checkpoint_ms=checkpoint_cost(method, opt, args.repeats),
                  note="Ops include metadata-only ones (views, unbind) that launch nothing but still cost host "
                       "time; the optimiser is fused SGD, as the trainer's on a GPU")
    path = RESULTS / "host.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    history = old.get("history", {})
    if not history or list(history.values())[-1]["views_ops"] != ops["views"]:  # a row per change of the views
        history[result["commit"]] = dict(views_ops=ops["views"], views_host_us=result["views_host_us"])
    result["history"] = history
    totals = {name: sum(r.values()) for name, r in result["recipe_ops_per_step"].items()}
    recipe_history = old.get("recipe_history", {})
    if not recipe_history or list(recipe_history.values())[-1] != totals:  # a row per change of any recipe's step
        recipe_history[result["commit"]] = totals
    result["recipe_history"] = recipe_history
    print(json.dumps(result), flush=True)
    save(result, "host")


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

    from selfsup.data.sources import Dataset, ImageSet

    if not torch.cuda.is_available():
        raise SystemExit("the gpu-jpeg target needs a CUDA GPU")
    root = Path(args.folder)
    if not (root / "train").is_dir():
        make_jpeg_folder(root, args.make)
    env = environment()
    data = load_data(str(root / "train"), 224, stream=True)
    images = data.pretrain.images
    n_bytes = sum(Path(p).stat().st_size for p in images.paths[:1000]) / min(1000, len(images))

    def speed(dataset) -> float:
        out = Path(tempfile.mkdtemp())
        cfg = selfsup.TrainConfig(method="simclr", data=str(root / "train"), backbone="resnet50", steps=args.steps,
                                  batch_size=args.batch_size, image_size=224, device="cuda", log_every=args.window,
                                  workers=args.workers, augment={"blur_p": 0.5})
        selfsup.train(cfg, out, overwrite=True, evaluate=False, show_progress=False, data=dataset)
        with open(out / "metrics.csv") as f:
            windows = [float(r["samples_per_second"]) for r in csv.DictReader(f)][1:]
        return sorted(windows)[len(windows) // 2]

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


def save(result: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_table()


def write_table(_: argparse.Namespace | None = None) -> None:
    """benchmarks/results/README.md, built only from the JSON files."""
    parts = ["# Benchmark results\n", "Generated by `python benchmarks/run.py table` from the JSON files here; "
             "every number is measured (see each JSON for command, commit and hardware).\n"]
    cpu = RESULTS / "cpu_simclr.json"
    if cpu.exists():
        r = json.loads(cpu.read_text())
        o, lt, sp, au = r["ours"], r["lightly"], r["speed"], r["augment"]
        parts.append(f"## SimCLR, CIFAR-10, small convnet, batch {r['batch_size']}, {r['steps']} steps, CPU\n\n"
                     f"{r['cpu']} ({r['cpu_cores']} cores), torch {r['torch']}, commit {r['commit']}, {r['date']}.\n")
        rows = [["selfsup", o["samples_per_second"], sp["median"]["ours"], o["knn_top1"], o["linear_top1"],
                 o["train_seconds"]],
                [f"lightly {lt['version']}", lt["samples_per_second"], sp["median"]["lightly"], lt["knn_top1"],
                 lt["linear_top1"], lt["train_seconds"]],
                ["random init (same backbone)", "", "", o["random_init_knn_top1"], o["random_init_linear_top1"], ""]]
        rows = [[f"{c:.0f}" if isinstance(c, float) and i not in (3, 4) else c for i, c in enumerate(row)]
                for row in rows]
        parts.append(format_table(["", "samples/s (full run)", f"samples/s (alternating, median of {sp['rounds']})",
                                   "kNN top-1 %", "linear top-1 %", "train s"], rows, markdown=True))
        parts.append(f"\nSpeed ratio (alternating windows of {sp['steps_per_window']} steps): "
                     f"**{sp['ratio']}x** lightly.  Two-view augmentation on one thread: ours "
                     f"{au['ours_views_per_second']} views/s vs lightly's per-image transform "
                     f"{au['lightly_views_per_second']} views/s: **{au['ratio']}x**.\n")
        if r.get("notes"):
            parts.append(f"Note: {r['notes']}\n")
    parts += _methods_section() + _host_section() + _gpu_sections()
    (RESULTS / "README.md").write_text("\n".join(parts))


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _md(header: list[str], rows: list[list]) -> str:
    """A Markdown table with every cell printed as given (format_table would print floats as percentages)."""
    return format_table(header, [[str(c) for c in row] for row in rows], markdown=True)


def _methods_section() -> list[str]:
    r = _load("cpu_methods")
    if not r:
        return []
    runs = r["runs"]
    any_run = next(iter(runs.values()))
    rows = [[name, _pct(m["knn_top1"]), _pct(m["linear_top1"]), f"{m['samples_per_second']:.0f}",
             f"{m['quiet_samples_per_second']:.0f}" if "quiet_samples_per_second" in m else "",
             m["commit"].split(" (")[0]] for name, m in runs.items() if "knn_top1" in m]
    rows.append(["random init", _pct(any_run["random_init_knn_top1"]), _pct(any_run["random_init_linear_top1"]),
                 "", "", ""])
    return [f"## Every method, CIFAR-10, small convnet, batch {r['batch_size']}, {r['steps']} steps, CPU\n\n"
            f"{any_run['cpu']} ({any_run['cpu_cores']} cores), torch {any_run['torch']}; "
            "`python benchmarks/run.py cpu-methods`. kNN (k=200, T=0.1) and L-BFGS linear probe on the test set; "
            "samples/s is one image with all its views.\n",
            _md(["method", "kNN top-1 %", "linear top-1 %", "samples/s (full run)", "samples/s (quiet)", "commit"],
                rows),
            "\n" + r.get("notes", "") + "\n"]


def _host_section() -> list[str]:
    r = _load("host")
    if r is None:
        return []
    ops = r["ops_per_step"]
    rows = [[phase.replace("_", " + ").replace("backbone + head + loss", "backbone, head, loss"), n]
            for phase, n in ops.items()]
    history = [[commit, h["views_ops"], f"{h['views_host_us']:,}"] for commit, h in r.get("history", {}).items()]
    return ["## Host cost of a SimCLR ResNet-18 step on the GPU code path (measured on the CPU)\n",
            f"{r['cpu']}, one thread, torch {r['torch']}, commit {r['commit']}, {r['date']}; "
            f"`python benchmarks/run.py host`. ATen ops dispatched per step (host work; on a GPU most launch "
            f"a kernel), batch {r['batch']} at {r['image_size']} px with the masked ops on their GPU path. "
            f"{r['note']}.\n",
            _md(["phase", "ATen ops"], rows),
            "\nThe views (two-view augmentation) by commit: ops per step and host microseconds per step "
            "(batch 8, so per-op overhead is what the clock sees; on this shared 2-core machine the microseconds "
            "vary by up to half between runs, the op counts do not):\n",
            _md(["commit", "ops", "host us"], history), ""] + _recipe_ops_lines(r) + _checkpoint_lines(r)


def _recipe_ops_lines(r: dict) -> list[str]:
    if "recipe_ops_per_step" not in r:
        return []
    rows = [[name, *ops.values(), sum(ops.values())] for name, ops in r["recipe_ops_per_step"].items()]
    names = list(r["recipe_ops_per_step"])
    history = [[commit, *(f"{totals.get(n, ''):,}" for n in names)] for commit, totals in r["recipe_history"].items()]
    return ["ATen ops per training step of each CIFAR-10 recipe (`recipes/cifar10/<name>.yaml`: its method options "
            "and optimiser; channels-last; forward includes the views):\n",
            _md(["recipe", "forward", "backward", "optimiser + after_step", "total"], rows),
            "\nTotal ops per step by commit:\n", _md(["commit", *names], history), ""]


def _checkpoint_lines(r: dict) -> list[str]:
    c = r.get("checkpoint_ms")
    if not c:
        return []
    return [f"A checkpoint of that model and its optimiser state ({c['megabytes']} MB) holds the training thread "
            f"for {c['synchronous']} ms when written in the step loop, {c['background_writer']} ms when handed to "
            "the background writer (median; the trainer writes one per epoch).\n"]


def _gpu_sections() -> list[str]:
    parts = []
    r = _load("gpu")
    if r:
        rows = [[name, f"{m['samples_per_second']:,}", m["seconds_per_epoch"], m["minutes_for_200_epochs"],
                 m["peak_memory_gib"], m["tflops"], _pct(m["mfu"]) if m["mfu"] else "", r["measured_at"].get(name, "")]
                for name, m in r.get("speed", {}).items()]
        if "lightly" in r:
            lt = r["lightly"]
            sps = lt["samples_per_second"]
            rows.append([f"lightly {lt['version']} SimCLR ({lt['workers']} workers)", f"{sps:,}",
                         round(50000 / sps, 2), round(200 * 50000 / sps / 60, 1), lt["peak_memory_gib"], "", "",
                         r["measured_at"].get("lightly", "")])
        parts += [f"## GPU speed: ResNet-18 (CIFAR stem), CIFAR-10, batch {r['batch_size']}, {r['gpu']}\n\n"
                  f"torch {r['torch']}; `python benchmarks/run.py gpu` (median of {r['steps']}-step runs' log windows, "
                  "first window left out). One sample = one image with both views. MFU: share of the datasheet dense "
                  "bf16 peak (989 TFLOP/s), counting 0.56 GMAC per view forward, backward = 2x forward, plus the "
                  "target network's forwards (BYOL: two views; MoCo: one key view for its one query view).\n",
                  _md(["run", "samples/s", "s/epoch", "min / 200 epochs", "peak GiB", "TFLOP/s", "MFU %",
                                "commit"], rows)]
        if "lightly" in r and "simclr" in r.get("speed", {}):
            ratio = r["speed"]["simclr"]["samples_per_second"] / r["lightly"]["samples_per_second"]
            parts.append(f"\nselfsup SimCLR / lightly SimCLR, same backbone, batch, bf16 and channels_last: "
                         f"**{ratio:.1f}x**.\n")
        history = dict(r.get("history", {}))
        if history:
            note = history.pop("note", "")
            rows = [[k.replace("_samples_per_second", ""), ", ".join(f"{c}: {v:,}" for c, v in runs.items())]
                    for k, runs in history.items()]
            parts += ["Samples/s by commit, each on its own machine start:\n", _md(["run", "samples/s"], rows),
                      f"\n{note}.\n"]
        if r.get("sync_points"):
            parts.append("Host-device synchronisations seen in 4 steps (`torch.cuda.set_sync_debug_mode`): "
                         + ", ".join(r["sync_points"]) + " -- one-time moves, the per-epoch order, checkpoints "
                         "and the loss read every `log_every` steps; none per step.\n")
        if r.get("profile"):
            pr = r["profile"]
            rows = [[k, v, pr["host_ms_per_step"].get(k, "")] for k, v in pr["gpu_kernel_ms_per_step"].items()]
            parts += [f"### Where a step's time goes (SimCLR, torch.profiler, {pr['steps']} steps)\n\n"
                      f"GPU kernels busy {pr['gpu_busy_ms_per_step']} ms per step under the profiler. "
                      f"{pr['note']}. Full table: `gpu_profile_simclr.txt`.\n",
                      _md(["phase", "GPU kernel ms/step", "host ms/step"], rows), ""]
    r = _load("gpu_accuracy")
    if r:
        rows = [[n, f"{m['epochs']:g}", m["batch_size"], _pct(m["knn_top1"]), _pct(m["linear_top1"]),
                 _pct(m["random_init_knn_top1"]), round(m["train_seconds"] / 60, 1), f"{m['samples_per_second']:,.0f}",
                 m["commit"]] for n, m in r["runs"].items()]
        gpus = ", ".join(sorted({m["gpu"] or "CPU" for m in r["runs"].values()}))
        parts += [f"## Accuracy of the CIFAR-10 recipes: ResNet-18 (CIFAR stem), {gpus}\n\n"
                  "`python benchmarks/run.py gpu-accuracy --config recipes/cifar10/<method>.yaml[,...]`\n",
                  _md(["recipe", "epochs", "batch", "kNN %", "linear %", "random-init kNN %", "train min",
                                "samples/s", "commit"], rows)]
        for key, d in r.items():
            if not key.startswith("diagnostics"):
                continue
            rows = [[k, _pct(v["knn_top1"]), _pct(v["linear_top1"]), f"{round(v['samples_per_second']):,}",
                     v.get("commit", d.get("commit", ""))] for k, v in d.items() if isinstance(v, dict)]
            epochs = re.search(r"(\d+)_epochs", key)
            what = d["purpose"][:1].upper() + d["purpose"][1:]
            parts += [f"\n{what} ({epochs[1] if epochs else '?'} epochs each; `{d['command']}`):\n",
                      _md(["variant", "kNN %", "linear %", "samples/s", "commit"], rows),
                      f"\n{d['conclusion']}.\n" if "conclusion" in d else ""]
    r = _load("gpu_jpeg")
    if r:
        parts += [f"## ResNet-50 at 224 px from a JPEG folder, {r['gpu']}\n\n"
                  f"`python benchmarks/run.py gpu-jpeg` ({r['images']:,} {r['jpeg_size']} JPEGs, mean "
                  f"{r['mean_jpeg_kib']} KiB; SimCLR with blur, batch {r['batch_size']}, {r['workers']} decode "
                  f"workers, commit {r['commit']}).\n",
                  _md(["", "per second"], [
                      ["training from the JPEG folder (samples)", f"{r['train_samples_per_second_from_jpeg']:,}"],
                      ["decode workers alone (images)", f"{r['decode_images_per_second']:,}"],
                      ["training on the same images resident on the GPU (samples)",
                       f"{r['train_samples_per_second_on_gpu']:,}"]]),
                  f"\nBound: **{r['bound']}**. {r.get('notes', '')}\n"]
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description="selfsup benchmarks")
    sub = p.add_subparsers(dest="target", required=True)
    c = sub.add_parser("cpu-simclr", help="SimCLR CIFAR-10 on CPU, side by side with lightly")
    c.add_argument("--data", default="../shared/data/cifar10")
    c.add_argument("--lightly-python", default="/work/lightly-env/bin/python")
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--speed-steps", type=int, default=30)
    c.add_argument("--rounds", type=int, default=3)
    c.set_defaults(fn=cpu_simclr)
    c = sub.add_parser("cpu-methods", help="every contrastive/siamese method on CIFAR-10, CPU, small convnet")
    c.add_argument("--data", default="../shared/data/cifar10")
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--methods", default=",".join(CPU_METHODS), help=f"any of {', '.join(CPU_METHODS)}")
    c.add_argument("--force", action="store_true", help="re-run methods already in the JSON")
    c.add_argument("--speed-steps", type=int, default=0,
                   help="instead of the table: time N steps of every method on a quiet machine")
    c.set_defaults(fn=cpu_methods)
    g = sub.add_parser("gpu", help="GPU speed: SimCLR/BYOL ResNet-18 CIFAR-10, lightly side by side, profile")
    g.add_argument("--data", default="../shared/data/cifar10")
    g.add_argument("--steps", type=int, default=200)
    g.add_argument("--window", type=int, default=25, help="steps per speed window (the first is warm-up)")
    g.add_argument("--batch-size", type=int, default=512)
    g.add_argument("--parts", default="sync,simclr,byol,lightly,profile,simclr-compile")
    g.add_argument("--lightly-python", default=sys.executable)
    g.add_argument("--workers", type=int, default=16, help="lightly's DataLoader workers")
    g.add_argument("--profile-steps", type=int, default=20)
    g.set_defaults(fn=gpu)
    g = sub.add_parser("gpu-accuracy", help="train recipes on one GPU and record kNN / linear top-1")
    g.add_argument("--config", default="recipes/cifar10/simclr.yaml", help="one recipe or a comma-separated list")
    g.add_argument("--data", default="../shared/data/cifar10")
    g.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs")
    g.add_argument("--out", default="runs/gpu-accuracy", help="one run folder per recipe below this")
    g.add_argument("--device", default="cuda")
    g.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly after this long; the same command resumes")
    g.add_argument("--force", action="store_true", help="re-run recipes that are recorded already")
    g.set_defaults(fn=gpu_accuracy)
    g = sub.add_parser("gpu-diagnose", help="SimCLR short runs, one difference from lightly at a time, and lightly")
    g.add_argument("--data", default="../shared/data/cifar10")
    g.add_argument("--epochs", type=int, default=25)
    g.add_argument("--parts", default=",".join(DIAGNOSES))
    g.add_argument("--lightly-python", default=sys.executable)
    g.add_argument("--workers", type=int, default=15, help="lightly's DataLoader workers")
    g.add_argument("--device", default="cuda")
    g.set_defaults(fn=gpu_diagnose)
    g = sub.add_parser("gpu-jpeg", help="ResNet-50 224 px from a JPEG folder: decode- or compute-bound?")
    g.add_argument("--folder", default="/tmp/jpeg", help="root with train/<class>/*.jpg (made if missing)")
    g.add_argument("--make", type=int, default=20000, help="synthetic JPEGs to write when the folder is missing")
    g.add_argument("--steps", type=int, default=60)
    g.add_argument("--window", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--workers", type=int, default=15)
    g.set_defaults(fn=gpu_jpeg)
    g = sub.add_parser("host", help="host cost of a SimCLR step's phases on the GPU code path, measured on CPU")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--calls", type=int, default=200)
    g.add_argument("--repeats", type=int, default=7)
    g.set_defaults(fn=host)
    sub.add_parser("table", help="rebuild results/README.md from the JSON files").set_defaults(fn=write_table)
    args = p.parse_args()
    if args.target not in ("table", "gpu-jpeg", "host") and not Path(getattr(args, "data", ".")).exists():
        raise SystemExit(f"data folder {args.data} not found; the benchmark needs CIFAR-10 as JPEG class folders")
    args.fn(args)


if __name__ == "__main__":
    main()
