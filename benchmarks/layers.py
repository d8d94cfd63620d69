"""The per-layer table as the seeds show it (``layers``): every pretext method, SimCLR and the supervised baseline
trained with one backbone (NIN blocks, AlexNet conv1..conv5, ResNet stages), then a linear probe on every stage,
next to the backbone at random init; a JSON file, a Markdown table in results/README.md and one line plot
(results/layers_<backbone>.png: top-1 against depth, one line per method).

The seeds' finding to check (Gidaris et al. 2018, Table 1; MMSelfSup's per-stage probes): pretext features peak
one stage below the top, contrastive ones at the top."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import selfsup
from benchmarks.common import environment, save
from benchmarks.cpu import finished, interrupted
from benchmarks.tables import RESULTS, load
from selfsup import evaluate
from selfsup.bench.rows import same_run
from selfsup.data import load_data
from selfsup.engine.build import method_from_checkpoint
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.evaluate.report import plot_layers

#: the pretext family, then the contrastive and supervised references; BoWNet's teacher is the RotNet run above it
LAYER_METHODS = ("rotnet", "jigsaw", "context", "counting", "aet", "exemplar", "decoupling", "damaged-jigsaw",
                 "colorization", "bownet", "simclr", "supervised")


def layer_table(args: argparse.Namespace) -> None:
    """Train every method of ``--methods`` (one run folder each under ``--out``), probe every stage of the trained
    encoder and of its random init; each finished method is written at once (``--force`` re-runs it). An
    interrupted run resumes from its last checkpoint; a finished run whose probes were interrupted is probed
    without training again."""
    names = args.methods.split(",")
    unknown = sorted(set(names) - set(LAYER_METHODS))
    if unknown:
        raise SystemExit(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(LAYER_METHODS)}")
    key = f"layers_{args.backbone}"
    result = load(key) or {}
    result.update(name="layers", backbone=args.backbone, steps=args.steps, batch_size=args.batch_size,
                  dataset=str(args.data))
    runs = result.setdefault("runs", {})
    env, dataset = environment(), load_data(args.data)
    root = Path(args.out) / args.backbone
    for name in names:
        if name in runs and not args.force:
            continue
        method_args = {"teacher": str(root / "rotnet")} if name == "bownet" else {}
        if name == "bownet" and not (root / "rotnet" / "checkpoint.pt").exists():
            raise SystemExit("bownet's teacher is this table's RotNet run: run rotnet first")
        cfg = selfsup.TrainConfig(method=name, data=args.data, backbone=args.backbone, steps=args.steps,
                                  batch_size=args.batch_size, device=args.device, method_args=method_args)
        folder = root / name
        if name in runs or not (finished(folder) and same_run(load_checkpoint(folder)["config"], cfg)):
            resume = folder if interrupted(folder, cfg) else None  # hours per method on a CPU: nothing lost
            selfsup.train(cfg, folder, overwrite=resume is None, resume=resume, evaluate=False, show_progress=False,
                          data=dataset)
        kw = dict(device=args.device, progress=lambda m, n=name: print(f"{n}: {m}", flush=True))
        trained = evaluate.layers(method_from_checkpoint(folder)[0].encoder(), dataset.train, dataset.test, **kw)
        lower = evaluate.layers(method_from_checkpoint(folder, trained=False)[0].encoder(), dataset.train,
                                dataset.test, **kw)
        seconds = json.loads((folder / "metrics.json").read_text())["train_seconds"]
        runs[name] = dict(stages=trained, random_init=lower, train_seconds=seconds, **env)
        print(f"{name}: " + ", ".join(f"{s} {v * 100:.1f}" for s, v in trained.items()) + " (random init: "
              + ", ".join(f"{v * 100:.1f}" for v in lower.values()) + ")", flush=True)
        save(result, key)
        draw(result)


def draw(result: dict) -> None:
    """results/layers_<backbone>.png from the JSON: a line per method and the first method's random init."""
    runs = result["runs"]
    curves = [(name, list(r["stages"]), list(r["stages"].values())) for name, r in runs.items()]
    first = next(iter(runs.values()))
    curves.append(("random init", list(first["random_init"]), list(first["random_init"].values())))
    out = RESULTS / f"layers_{result['backbone']}.png"
    plot_layers(curves, out, f"linear probe per stage: {result['backbone']}, CIFAR-10, {result['steps']} steps")
