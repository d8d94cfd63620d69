"""Does the adversarial domain adaptation of synthetic multi-task learning help transfer to real photos? (Ren & Lee,
"Cross-Domain Self-supervised Multi-task Feature Learning using Synthetic Imagery", CVPR 2018, table 5: their
features transfer better with it.) The same run on the generated scenes with and without ``real=<photos>``, and a
random-init backbone, each scored by kNN and linear probe on the photos' labeled splits.

    python benchmarks/run.py synthetic-da --data /work/shared/data/cifar10 --steps 300 --batch-size 64 \
        --adversarial-weight 0.1,0.01

Variants already in results/synthetic_da.json with the same settings are kept (``--force`` re-runs them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import selfsup
from selfsup.data import load_data
from selfsup.data.sources import ImageSet
from selfsup.engine.build import build_method
from selfsup.evaluate import few_label_indices, probe, subset
from selfsup.evaluate.report import format_table


def _shrunk(split: ImageSet, per_class: int | None, seed: int) -> ImageSet:
    """A class-balanced subset of ``per_class`` images per class (all of them for None)."""
    return split if per_class is None else subset(split, few_label_indices(split.labels, per_class=per_class,
                                                                           seed=seed))


def synthetic_da(real: str = "cifar10", steps: int = 100, batch_size: int = 64, image_size: int = 32,
                 backbone: str = "small", adversarial_weights: tuple[float, ...] = (0.1,), seed: int = 0,
                 device: str = "cpu", train_per_class: int | None = None, test_per_class: int | None = None,
                 done: dict | None = None) -> dict:
    """Pretrain ``synthetic-multitask`` on ``scenes`` for ``steps`` steps, without and with ``real`` (the adversarial
    term at each of ``adversarial_weights``), and probe every run and a random-init backbone (kNN k = 200, linear)
    on the real set's train / test splits (``*_per_class`` images per class of each, or all). Returns every score
    and the training time of each run; the runs named in ``done`` (an earlier result's, same settings) are kept."""
    photos = load_data(real, image_size)
    if not photos.evaluable:
        raise SystemExit(f"{real} has no labeled train and test splits to probe on")
    train, test = _shrunk(photos.train, train_per_class, seed), _shrunk(photos.test, test_per_class, seed)
    scenes = load_data("scenes", image_size)
    folder = Path(tempfile.mkdtemp(prefix="synthetic_da_"))
    base = dict(method="synthetic-multitask", data="scenes", steps=steps, batch_size=batch_size, image_size=image_size,
                backbone=backbone, seed=seed, device=device, log_every=max(1, steps // 5))
    variants = {"tasks only": {}, **{f"tasks + adversarial (weight {w:g})": dict(real=real, adversarial_weight=w)
                                     for w in adversarial_weights}}
    start = build_method(selfsup.TrainConfig(**base), image_size, 0).backbone  # the runs' initial weights (seeded)
    result = dict(real=real, steps=steps, batch_size=batch_size, image_size=image_size, backbone=backbone, seed=seed,
                  train_images=len(train), test_images=len(test),
                  runs={"random init": probe(start, train, test, image_size=image_size, device=device)})
    for name, args in variants.items():
        if name in (done or {}):
            result["runs"][name] = done[name]
            continue
        cfg = selfsup.TrainConfig(**base, method_args=args)
        began = time.monotonic()
        run = selfsup.train(cfg, folder / name.replace(" ", "_"), evaluate=False, show_progress=False, data=scenes,
                            overwrite=True)
        seconds = time.monotonic() - began
        result["runs"][name] = dict(**probe(run.backbone, train, test, image_size=image_size, device=device),
                                    train_seconds=round(seconds, 1))
        print(name, json.dumps(result["runs"][name]), flush=True)
    return result


def markdown(result: dict) -> str:
    """The result as a Markdown section (title, setting, table)."""
    rows = [[name, f"{100 * r['knn_top1']:.1f}", f"{100 * r['linear_top1']:.1f}",
             f"{r['train_seconds']:.0f}" if "train_seconds" in r else ""] for name, r in result["runs"].items()]
    table = format_table(["backbone", "kNN top-1 %", "linear top-1 %", "train s"], rows, markdown=True)
    return (f"## Synthetic multi-task: does domain adaptation help the transfer to real photos?\n\n{result['cpu']}, "
            f"torch {result['torch']}, commit {result['commit']}, {result['date']}; `python benchmarks/run.py "
            f"synthetic-da --steps {result['steps']} --batch-size {result['batch_size']}`. synthetic-multitask on "
            f"the generated scenes ({result['backbone']} backbone, {result['image_size']} px, seed {result['seed']}), "
            f"without and with the real photos `{result['real']}` for the adversarial term, probed on those photos "
            f"({result['train_images']} train / {result['test_images']} test images; kNN k = 200, linear probe).\n\n"
            f"{table}\n")


def run(args: argparse.Namespace) -> None:
    """``python benchmarks/run.py synthetic-da``: the comparison, written to results/synthetic_da.json."""
    from benchmarks.common import environment, save
    from benchmarks.tables import load

    settings = dict(real=args.data, steps=args.steps, batch_size=args.batch_size, image_size=args.image_size,
                    backbone=args.backbone, seed=args.seed)
    before = load("synthetic_da") or {}
    same = all(before.get(k) == v for k, v in settings.items()) and not args.force
    weights = tuple(float(w) for w in args.adversarial_weight.split(","))
    result = synthetic_da(args.data, args.steps, args.batch_size, args.image_size, args.backbone, weights, args.seed,
                          args.device, args.train_per_class, args.test_per_class,
                          done=before.get("runs") if same else None)
    save({**result, **environment()}, "synthetic_da")
    print(json.dumps(result["runs"], indent=1))


def add_parser(sub) -> None:
    p = sub.add_parser("synthetic-da", help="synthetic multi-task on the scenes with and without domain adaptation, "
                                            "probed on real photos (--data)")
    p.add_argument("--data", default="/work/shared/data/cifar10", help="the real photos: a data spec")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--backbone", default="small")
    p.add_argument("--adversarial-weight", default="0.1", help="one run per weight, comma-separated")
    p.add_argument("--force", action="store_true", help="re-run the variants that the results already hold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-per-class", type=int, help="probe on this many train images per class (default: all)")
    p.add_argument("--test-per-class", type=int, help="and this many test images per class (default: all)")
    p.set_defaults(fn=run)
