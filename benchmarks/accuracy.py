"""Whole recipes on one GPU, scored by kNN and linear top-1 (``gpu-accuracy``), and short SimCLR runs that switch
one difference from lightly's CIFAR-10 benchmark at a time (``gpu-diagnose``)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import selfsup
from benchmarks.common import ROOT, environment, probe_lightly, run_lightly, save
from benchmarks.tables import load
from selfsup.config import config_from_dict, load_config
from selfsup.data import load_data
from selfsup.data.views import augmented_views
from selfsup.engine import optim, step
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.methods.base import Batch
from selfsup.methods.simclr import SimCLR


def gpu_accuracy(args: argparse.Namespace) -> None:
    """Full recipes (e.g. the issue-4 table: ResNet-18, 200 epochs each): kNN and linear top-1, training time.

    ``--config`` takes a comma-separated list, run in turn. ``--time-limit`` (minutes, for the whole
    command) ends the current run cleanly at a checkpoint; the same command then resumes it, and recipes
    already recorded are skipped, so a table longer than one sitting fills up over several calls.
    """
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-accuracy runs on a CUDA GPU; pass --device cpu for a (slow) CPU run")
    env, started = environment(), time.monotonic()
    result = load("gpu_accuracy") or dict(name="gpu-accuracy", runs={})
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


def _per_view(self: SimCLR, batch: Batch) -> torch.Tensor:
    """SimCLR.training_step with one backbone pass per view, as lightly's forward."""
    x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
    z1, z2 = (self.projector(self.backbone(v)) for v in x.chunk(2))
    return self.objective(z1, z2, batch)


CODE_CHANGES = {  # what each diagnosis changes in the library's code while it trains: (owner, name, replacement)
    "wd-everywhere": (optim, "param_groups", lambda params, wd, *_: [dict(params=list(params), weight_decay=wd)]),
    "fp32": (step, "autocast", lambda device: contextlib.nullcontext()),
    "bn-per-view": (SimCLR, "training_step", _per_view),
}


def gpu_diagnose(args: argparse.Namespace) -> None:
    """Where does SimCLR's gap to lightly's published 84.8% kNN come from? Short runs of the CIFAR-10 recipe
    with one difference from lightly's benchmark switched at a time, and lightly's own run, all scored by
    the same kNN / linear probe (``--parts`` picks them, ``DIAGNOSES`` says what each changes)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-diagnose runs on a CUDA GPU; pass --device cpu for a (slow) CPU run")
    env, dataset, device = environment(), load_data(args.data), args.device
    result = load("gpu_accuracy") or dict(name="gpu-accuracy", runs={})
    key = f"diagnostics_vs_lightly_{args.epochs}_epochs"
    table = result.setdefault(key, {})
    table.update(purpose="is the gap to lightly's 84.8% kNN in the data, the optimiser, batch norm or the pipeline?",
                 command=env["command"], commit=env["commit"], gpu=env["gpu"])
    recipe = {**load_config(ROOT / "recipes/cifar10/simclr.yaml"), "data": args.data, "device": device,
              "epochs": args.epochs}
    for part in args.parts.split(","):
        print(f"--- {part}: {DIAGNOSES[part]}", flush=True)
        if part == "lightly":
            steps = args.epochs * (len(dataset.pretrain) // recipe["batch_size"])
            out = Path(tempfile.mkdtemp())
            timing = run_lightly(args.lightly_python, args.data, steps, recipe["batch_size"], out, device=device,
                                 backbone="resnet18", workers=args.workers)
            row = dict(**probe_lightly(out, "resnet18", dataset, device),
                       samples_per_second=round(timing["samples_per_second"]))
        else:
            cfg = config_from_dict({**recipe, **RECIPE_CHANGES.get(part, {})})
            with mock.patch.object(*CODE_CHANGES[part]) if part in CODE_CHANGES else contextlib.nullcontext():
                m = selfsup.train(cfg, Path(tempfile.mkdtemp()), overwrite=True, show_progress=False,
                                  data=dataset).metrics
            row = {k: m[k] for k in ("knn_top1", "linear_top1", "samples_per_second")}
        row["commit"] = env["commit"]
        table.pop("conclusion", None)  # written by hand once the rows are read
        table[DIAGNOSES[part]] = row
        print(json.dumps(row), flush=True)
        save(result, "gpu_accuracy")
