"""Benchmark runner: measured numbers into benchmarks/results/*.json and a Markdown table.

Targets (the protocol is written down in benchmarks/results/README.md), one module each:

* ``cpu-simclr`` (cpu.py): SimCLR on CIFAR-10 (JPEG folders), the small convnet, batch 256, 1000 steps, kNN
  (k=200, T=0.1) on test, next to lightly 1.6's SimCLR with the same backbone, data and steps, run
  side by side on this machine. Records samples/s (one sample = one image with both views; speed
  windows alternate ours / lightly), final kNN and linear probe, random-init kNN, and the two-view
  augmentation throughput on one thread against lightly's per-image transform.
* ``cpu-methods`` (cpu.py): every method (contrastive, siamese, clustering, pretext tasks, a GAN) and supervised
  cross-entropy, same setting; ``cpu-bounds``: its lower bounds, random init and random rescaled; ``cpu-layers``:
  a linear probe on every stage of its rows' kept runs; ``cpu-fid``: the generative rows' FID in one network's
  features.
* ``layers`` (layers.py): every pretext method, SimCLR and supervised on one backbone (NIN, AlexNet, ResNet),
  a linear probe on every stage and at random init: the seeds' per-layer table and its plot.
* ``pretext-views`` (pretext_views.py): jigsaw's and context prediction's views, batched on one CPU thread vs a
  per-image PIL/torchvision reference (lightly's and VISSL's way), at 32 and 96 px.
* ``gpu`` (gpu.py): SimCLR and BYOL, ResNet-18 (CIFAR stem), CIFAR-10, batch 512 on one GPU: samples/s, s/epoch,
  peak memory, MFU; lightly's SimCLR side by side (16 workers); host-sync check; a profiled step.
* ``gpu-accuracy``, ``gpu-diagnose`` (accuracy.py): recipes end to end on one GPU (kNN and linear top-1, wall
  time); short SimCLR runs with one difference from lightly's benchmark each.
* ``gpu-jpeg`` (gpu.py): ResNet-50 at 224 px streamed from a JPEG folder: decode- or compute-bound.
* ``host`` (host.py): ATen ops per phase of a step on the GPU code path, counted on the CPU.
* ``beyond`` (beyond.py): the video methods on generated moving objects (probed on shape and on motion), the
  image-text methods and synthetic multi-task learning on generated captioned scenes, CPU, small convnet.
* ``table`` (tables.py): results/README.md rebuilt from the JSON files.

lightly lives in a side virtualenv (never a selfsup dependency)::

    python3 -m venv /work/lightly-env
    /work/lightly-env/bin/pip install torch torchvision "lightly==1.6.*"
    /work/lightly-env/bin/pip install --no-deps -e .

Run from the repository root::

    python benchmarks/run.py cpu-simclr --data data/cifar10 --lightly-python /path/to/lightly-env/bin/python
    python benchmarks/run.py table     # rebuild benchmarks/results/README.md from the JSON files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package, run as a script

from benchmarks import accuracy, beyond, cpu, faults, gpu, host, layers, pretext_views, readme, synthetic_da, tables

DATA = "data/cifar10"  # python benchmarks/pack_images.py cifar10 data/cifar10 builds it


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="selfsup benchmarks")
    sub = p.add_subparsers(dest="target", required=True)
    c = sub.add_parser("cpu-simclr", help="SimCLR CIFAR-10 on CPU, side by side with lightly")
    c.add_argument("--data", default=DATA)
    c.add_argument("--lightly-python", default="/work/lightly-env/bin/python")
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--speed-steps", type=int, default=30)
    c.add_argument("--rounds", type=int, default=3)
    c.set_defaults(fn=cpu.cpu_simclr)
    c = sub.add_parser("cpu-methods", help="every method on CIFAR-10, CPU, small convnet")
    c.add_argument("--data", default=DATA)
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--methods", default=",".join(cpu.CPU_METHODS), help=f"any of {', '.join(cpu.CPU_METHODS)}")
    c.add_argument("--force", action="store_true", help="re-run methods already in the JSON")
    c.add_argument("--speed-steps", type=int, default=0,
                   help="instead of the table: time N steps of every method on a quiet machine")
    c.set_defaults(fn=cpu.cpu_methods)
    c = sub.add_parser("cpu-layers", help="per-stage linear probes of cpu-methods rows whose runs are kept")
    c.add_argument("--data", default=DATA)
    c.add_argument("--methods", required=True, help="comma-separated rows of cpu-methods with finished runs")
    c.add_argument("--force", action="store_true", help="probe rows that already have per-stage scores again")
    c.set_defaults(fn=cpu.cpu_layers)
    c = sub.add_parser("cpu-fid", help="FID of the generative cpu-methods rows, all in one kept run's features")
    c.add_argument("--data", default=DATA)
    c.add_argument("--methods", default="ssgan,bigan", help="generative rows with finished runs")
    c.add_argument("--features", default="rotnet", help="the row whose network compares real and generated images")
    c.add_argument("--samples", type=int, default=10_000, help="generated and real images (default 10000)")
    c.set_defaults(fn=cpu.cpu_fid)
    c = sub.add_parser("cpu-bounds", help="random init and random rescaled small convnet on CIFAR-10 (lower bounds)")
    c.add_argument("--data", default=DATA)
    c.set_defaults(fn=cpu.cpu_bounds)
    c = sub.add_parser("layers", help="per-stage linear probes of every pretext method, SimCLR and supervised")
    c.add_argument("--data", default=DATA)
    c.add_argument("--backbone", default="nin", help="nin | alexnet | resnet18 | small")
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--methods", default=",".join(layers.LAYER_METHODS),
                   help=f"any of {', '.join(layers.LAYER_METHODS)}")
    c.add_argument("--device", default="cpu")
    c.add_argument("--out", default="runs/layers", help="run folders (one per backbone and method) below this")
    c.add_argument("--force", action="store_true", help="re-run methods already in the JSON")
    c.set_defaults(fn=layers.layer_table)
    g = sub.add_parser("pretext-views", help="jigsaw and context-prediction views, batched vs per image, one thread")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--seconds", type=float, default=3.0)
    g.set_defaults(fn=pretext_views.pretext_views)
    g = sub.add_parser("gpu", help="GPU speed: SimCLR/BYOL ResNet-18 CIFAR-10, lightly side by side, profile")
    g.add_argument("--data", default=DATA)
    g.add_argument("--steps", type=int, default=200)
    g.add_argument("--window", type=int, default=25, help="steps per speed window (the first is warm-up)")
    g.add_argument("--batch-size", type=int, default=512)
    g.add_argument("--parts", default="sync,simclr,byol,lightly,profile,simclr-compile")
    g.add_argument("--lightly-python", default=sys.executable)
    g.add_argument("--workers", type=int, default=16, help="lightly's DataLoader workers")
    g.add_argument("--profile-steps", type=int, default=20)
    g.set_defaults(fn=gpu.gpu)
    g = sub.add_parser("gpu-accuracy", help="train recipes on one GPU and record kNN / linear top-1")
    g.add_argument("--config", default="recipes/cifar10/simclr.yaml", help="one recipe or a comma-separated list")
    g.add_argument("--data", default=DATA)
    g.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs")
    g.add_argument("--out", default="runs/gpu-accuracy", help="one run folder per recipe below this")
    g.add_argument("--device", default="cuda")
    g.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly after this long; the same command resumes")
    g.add_argument("--force", action="store_true", help="re-run recipes that are recorded already")
    g.set_defaults(fn=accuracy.gpu_accuracy)
    g = sub.add_parser("gpu-diagnose", help="SimCLR short runs, one difference from lightly at a time, and lightly")
    g.add_argument("--data", default=DATA)
    g.add_argument("--epochs", type=int, default=25)
    g.add_argument("--parts", default=",".join(accuracy.DIAGNOSES))
    g.add_argument("--lightly-python", default=sys.executable)
    g.add_argument("--workers", type=int, default=15, help="lightly's DataLoader workers")
    g.add_argument("--device", default="cuda")
    g.set_defaults(fn=accuracy.gpu_diagnose)
    g = sub.add_parser("gpu-jpeg", help="ResNet-50 224 px from a JPEG folder: decode- or compute-bound?")
    g.add_argument("--folder", default="/tmp/jpeg", help="root with train/<class>/*.jpg (made if missing)")
    g.add_argument("--make", type=int, default=20000, help="synthetic JPEGs to write when the folder is missing")
    g.add_argument("--steps", type=int, default=60)
    g.add_argument("--window", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--workers", type=int, default=15)
    g.set_defaults(fn=gpu.gpu_jpeg)
    g = sub.add_parser("host", help="host cost of a SimCLR step's phases on the GPU code path, measured on CPU")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--calls", type=int, default=200)
    g.add_argument("--repeats", type=int, default=7)
    g.set_defaults(fn=host.host)
    g = sub.add_parser("faults", help="kill -9, full and read-only disks, two runs on one folder: what holds")
    g.add_argument("--kills", type=int, default=12, help="kill trials of each kind (random moment, mid-write)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=faults.faults)
    sub.add_parser("readme", help="regenerate the README's quick-start output (runs selfsup train)").set_defaults(
        fn=readme.readme)
    synthetic_da.add_parser(sub)
    beyond.add_parser(sub)
    g = sub.add_parser("readme-bench", help="the README's bench section from a selfsup bench folder's report")
    g.add_argument("--bench", required=True, help="the selfsup bench --out folder")
    g.add_argument("--budget", default="cpu", help="which README section (<!-- bench:BUDGET -->)")
    g.add_argument("--readme", help="the README to write (default the project's)")
    g.set_defaults(fn=readme.readme_bench)
    sub.add_parser("table", help="rebuild results/README.md from the JSON files").set_defaults(
        fn=lambda _: tables.write_table())
    return p


def main() -> None:
    args = parser().parse_args()
    needs_data = args.target not in ("table", "beyond", "gpu-jpeg", "host", "faults", "readme", "readme-bench",
                                     "pretext-views")
    if needs_data and args.data != "digits" and not Path(args.data).exists():  # digits: a quick try
        raise SystemExit(f"data folder {args.data} not found; the benchmark needs CIFAR-10 as JPEG class folders: "
                         f"python benchmarks/pack_images.py cifar10 {args.data} (downloads it), or pass --data")
    args.fn(args)


if __name__ == "__main__":
    main()
