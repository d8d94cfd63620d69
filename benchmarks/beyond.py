"""Methods that learn from more than one image (issue 16), each on the data it learns from (``beyond``): the video
methods on the generated moving objects (clips: the ``frames`` field), probed on the objects' shapes and on their
motions (from the middle frame, and from all 8 frames side by side); the image-text methods and synthetic
multi-task learning on the generated captioned scenes, probed on the scenes' labels (CLIP also by its zero-shot
top-1). The small convnet on the CPU, seed 0, every row next to its own network at random init, a linear probe on
every stage too (the best one in the table), and the supervised upper bound on each data set's labels.

    python benchmarks/run.py beyond [--rows shuffle-learn,clip] [--force] [--steps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

import selfsup
from benchmarks.common import environment, save
from benchmarks.cpu import SCORES, finished
from benchmarks.tables import load
from selfsup.data import load_data
from selfsup.data.sources import Dataset
from selfsup.engine.build import method_from_checkpoint
from selfsup.evaluate import layers, probe

# row -> (data, method, method_args, config keys). Steps and batch: each row about 4 minutes of training on an idle
# 2-core machine (3-6 with its evaluation and noise). Timed by 20 steps of each on the shared machine (nice'd), next to
# a SimCLR reference run before and after (412.8 samples/s quiet in cpu_methods.json, 4-12x slower then): the idle
# seconds per step below. The moving objects are 480 training clips at 32 px (65-160 epochs here), the scenes 2,000 at
# 64 px (8-32 epochs); CLIP's captions are up to 144 bytes; synthetic multi-task's decoders at 64 channels (at 256 a
# step took about twice as long)
BEYOND_ROWS: dict[str, tuple[str, str, dict, dict]] = {
    "shuffle-learn": ("moving-objects", "shuffle-learn", {}, {"steps": 800, "batch_size": 64}),  # 0.28 s/step
    "motion-segmentation": ("moving-objects", "motion-segmentation", {},
                            {"steps": 700, "batch_size": 64}),  # 0.32 s/step
    "tracking": ("moving-objects", "tracking", {}, {"steps": 1200, "batch_size": 64}),  # 0.19 s/step
    "color-tracking": ("moving-objects", "color-tracking", {}, {"steps": 1000, "batch_size": 32}),  # 0.21 s/step
    "clip": ("scenes", "clip", {"text_length": 144}, {"steps": 300, "batch_size": 128}),  # 0.72 s/step
    "texttopicnet": ("scenes", "texttopicnet", {"num_topics": 40},
                     {"steps": 500, "batch_size": 128}),  # 0.30-0.55 s/step (the reference moved 4-12x)
    "synthetic-multitask": ("scenes", "synthetic-multitask", {"decoder_dim": 64},
                            {"steps": 250, "batch_size": 64}),  # 0.85 s/step
    # the upper bounds: the same network trained with the labels it is probed on, about as long as the rows above
    "supervised": ("moving-objects", "supervised", {}, {"steps": 700, "batch_size": 64}),
    "supervised-scenes": ("scenes", "supervised", {}, {"steps": 300, "batch_size": 128}),
}
#: the same samples under other labels, probed too: data spec -> {column name: (data spec, frames)}; ``frames``:
#: None probes the images (a clip's middle frame), "all" every frame of a clip side by side (what motion needs)
OTHER_LABELS = {"moving-objects": {"motion": ("moving-objects:motion", None),
                                   "motion, 8 frames": ("moving-objects:motion", "all")}}
#: what a row keeps of its run's metrics besides :data:`benchmarks.cpu.SCORES`, where the method reports it
EXTRA_SCORES = ("zero_shot_top1",)
#: where the rows' runs are kept
RUNS = Path(__file__).parent.parent / "runs" / "beyond"


def row_config(name: str, steps: int | None = None) -> selfsup.TrainConfig:
    """The config of row ``name`` (see :data:`BEYOND_ROWS`), its steps replaced by ``steps`` if given."""
    data, method, method_args, extra = BEYOND_ROWS[name]
    return selfsup.TrainConfig(**{**dict(method=method, data=data, backbone="small", device="cpu", seed=0,
                                         method_args=method_args), **extra, **({"steps": steps} if steps else {})})


def other_labels(run_folder: Path, encoder: nn.Module, data: str, image_size: int) -> dict[str, dict[str, float]]:
    """kNN and linear top-1 of the trained ``encoder`` and of the run's network at random init on every relabelling
    of ``data`` (:data:`OTHER_LABELS`), by column name."""
    initial = method_from_checkpoint(run_folder, trained=False)[0].encoder()
    scores = {}
    for column, (spec, frames) in OTHER_LABELS.get(data, {}).items():
        relabelled = load_data(spec, image_size)
        trained, lower = (probe(e, relabelled.train, relabelled.test, image_size=image_size, device="cpu",
                                frames=frames) for e in (encoder, initial))
        scores[column] = {**trained, **{f"random_init_{k}": v for k, v in lower.items()}, "data": spec,
                          "frames": frames}
    return scores


def stages(run_folder: Path, encoder: nn.Module, data: Dataset) -> dict[str, dict[str, float]]:
    """Linear-probe top-1 on every stage of the trained ``encoder`` and of the run's network at random init."""
    initial = method_from_checkpoint(run_folder, trained=False)[0].encoder()
    return dict(stages=layers(encoder, data.train, data.test, device="cpu"),
                random_init_stages=layers(initial, data.train, data.test, device="cpu"))


def beyond(args: argparse.Namespace) -> None:
    """Every row of ``--rows``, one run at a time into RUNS/<row>; each finished row is written to
    results/beyond.json at once (merged into the file as it is then, so queues of other rows can share it), so an
    interrupted table resumes at the next row (``--force`` re-runs). A row measured before the per-stage probes
    existed gets them from its kept run, without training again."""
    names = args.rows.split(",")
    unknown = sorted(set(names) - set(BEYOND_ROWS))
    if unknown:
        raise SystemExit(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(BEYOND_ROWS)}")
    result = load("beyond") or {}
    result.update(name="beyond", backbone="small", device="cpu", seed=0)
    runs = result.setdefault("runs", {})
    env, datasets = environment(), {}  # the code that runs is the code at start
    for name in names:
        cfg = row_config(name, args.steps)
        key = (cfg.data, cfg.image_size)
        if name in runs and not args.force:
            if "stages" in runs[name] or not finished(RUNS / name):
                continue
            data = datasets.setdefault(key, load_data(cfg.data, runs[name]["image_size"]))
            update = stages(RUNS / name, method_from_checkpoint(RUNS / name)[0].encoder(), data)
            result = load("beyond") or result  # another queue may have written rows meanwhile
            runs = result["runs"]
            runs[name].update(update, stages_commit=env["commit"])
            save(result, "beyond")
            continue
        if key not in datasets:
            datasets[key] = load_data(cfg.data, cfg.image_size)
        run = selfsup.train(cfg, RUNS / name, overwrite=True, show_progress=False, data=datasets[key])
        m = run.metrics
        row = dict(data=cfg.data, method=cfg.method, method_args=cfg.method_args, steps=m["steps"],
                   batch_size=cfg.batch_size, image_size=m["image_size"], backbone=m["backbone"],
                   **{k: m[k] for k in SCORES + EXTRA_SCORES if k in m},
                   other_labels=other_labels(RUNS / name, run.encoder, cfg.data, m["image_size"]),
                   **stages(RUNS / name, run.encoder, datasets[key]), **env)
        result = load("beyond") or result  # another queue may have written rows meanwhile
        runs = result.setdefault("runs", {})
        runs[name] = row
        print(f"{name}: kNN {m['knn_top1']:.3f} linear {m['linear_top1']:.3f} (random {m['random_init_knn_top1']:.3f} "
              f"/ {m['random_init_linear_top1']:.3f}), {m['samples_per_second']:.0f} samples/s, "
              f"{m['train_seconds']:.0f} s", flush=True)
        save(result, "beyond")


def add_parser(sub) -> None:
    p = sub.add_parser("beyond", help="video, image-text and synthetic multi-task methods on the data they learn from")
    p.add_argument("--rows", default=",".join(BEYOND_ROWS), help=f"any of {', '.join(BEYOND_ROWS)}")
    p.add_argument("--force", action="store_true", help="re-run rows already in the JSON")
    p.add_argument("--steps", type=int, default=None, help="every row's steps instead of its own (a quick try)")
    p.set_defaults(fn=beyond)
