"""Benchmark runner: measured numbers into benchmarks/results/*.json and a Markdown table.

Targets (docs/benchmarks.md):

* ``cpu-simclr``: SimCLR on CIFAR-10 (JPEG folders), the small convnet, batch 256, 1000 steps, kNN
  (k=200, T=0.1) on test, next to lightly 1.6's SimCLR with the same backbone, data and steps, run
  side by side on this machine. Records samples/s (one sample = one image with both views; speed
  windows alternate ours / lightly), final kNN and linear probe, random-init kNN, and the two-view
  augmentation throughput on one thread against lightly's per-image transform.
* ``gpu-simclr``: SimCLR ResNet-18 (CIFAR stem) on CIFAR-10, batch 512: samples/s and s/epoch.

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
import json
import platform
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

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def environment() -> dict:
    """Command, commit and hardware, recorded with every result."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=HERE).stdout.strip()
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os

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
            augment(x, cfg, 32, g)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            augment(x, cfg, 32, g)
            augment(x, cfg, 32, g)
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
    lm = probe(backbone, dataset.train, dataset.test, 32, "cpu")
    print(f"lightly {args.steps} steps: kNN {lm['knn_top1']:.3f}, {t['samples_per_second']:.0f} samples/s", flush=True)
    result["ours"] = {k: m[k] for k in ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1",
                                        "train_seconds", "samples_per_second")}
    result["lightly"] = dict(version=t.get("lightly_version"), knn_top1=lm["knn_top1"], linear_top1=lm["linear_top1"],
                             train_seconds=t["train_seconds"], samples_per_second=t["samples_per_second"])
    save(result, "cpu_simclr")


def gpu_simclr(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu-simclr needs a CUDA GPU")
    env = environment()
    dataset = load_data(args.data)
    cfg = selfsup.TrainConfig(method="simclr", data=args.data, backbone="resnet18", steps=args.steps,
                              batch_size=args.batch_size, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    run = selfsup.train(cfg, Path(tempfile.mkdtemp()), overwrite=True, evaluate=False, show_progress=False,
                        data=dataset)
    m = run.metrics
    per_epoch = len(dataset.pretrain) // args.batch_size
    save(dict(name="gpu-simclr", **env, dataset="CIFAR-10", backbone="resnet18 (CIFAR stem)", method="simclr",
              steps=args.steps, batch_size=args.batch_size, samples_per_second=m["samples_per_second"],
              seconds_per_epoch=round(per_epoch * args.batch_size / m["samples_per_second"], 2),
              peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)), "gpu_simclr")


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
    gpu = RESULTS / "gpu_simclr.json"
    if gpu.exists():
        r = json.loads(gpu.read_text())
        parts.append(f"## SimCLR, CIFAR-10, ResNet-18 (CIFAR stem), batch {r['batch_size']}, {r['gpu']}\n\n"
                     f"{r['samples_per_second']:.0f} samples/s, {r['seconds_per_epoch']} s/epoch, "
                     f"peak memory {r['peak_memory_gib']} GiB (commit {r['commit']}, {r['date']}).\n")
    (RESULTS / "README.md").write_text("\n".join(parts))


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
    g = sub.add_parser("gpu-simclr", help="SimCLR ResNet-18 CIFAR-10 on one GPU")
    g.add_argument("--data", default="../shared/data/cifar10")
    g.add_argument("--steps", type=int, default=500)
    g.add_argument("--batch-size", type=int, default=512)
    g.set_defaults(fn=gpu_simclr)
    sub.add_parser("table", help="rebuild results/README.md from the JSON files").set_defaults(fn=write_table)
    args = p.parse_args()
    if args.target != "table" and not Path(getattr(args, "data", ".")).exists():
        raise SystemExit(f"data folder {args.data} not found; the benchmark needs CIFAR-10 as JPEG class folders")
    args.fn(args)


if __name__ == "__main__":
    main()
