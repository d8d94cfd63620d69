"""The CPU tables: SimCLR next to lightly (``cpu-simclr``) and every method in the same setting (``cpu-methods``):
CIFAR-10 from JPEG folders, the small convnet, batch 256, 1000 steps, kNN (k=200, T=0.1) and linear probe."""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import selfsup
from benchmarks.common import HERE, environment, log_windows, median, probe_lightly, run_lightly, save
from benchmarks.tables import load, own_bound
from selfsup.bench.rows import SMALL, same_run
from selfsup.data import load_data
from selfsup.data.augment import AugmentConfig, augment
from selfsup.data.sources import Dataset
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.errors import UserError

#: what a run's row keeps of its metrics
SCORES = ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1", "train_seconds",
          "samples_per_second")


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


def ours(data: str, steps: int, batch: int, out: Path, dataset: Dataset | None = None, evaluate: bool = True) -> dict:
    """selfsup's SimCLR with the small convnet on the CPU: the run's metrics."""
    cfg = selfsup.TrainConfig(method="simclr", data=data, backbone="small", steps=steps, batch_size=batch,
                              device="cpu")
    run = selfsup.train(cfg, out, overwrite=True, evaluate=evaluate, show_progress=False, data=dataset)
    return run.metrics


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
        t = run_lightly(args.lightly_python, args.data, args.speed_steps, args.batch_size, work / f"lightly{r}",
                        quiet=True)
        speeds["lightly"].append(t["samples_per_second"])
        print(f"speed round {r}: ours {speeds['ours'][-1]:.0f}, lightly {speeds['lightly'][-1]:.0f} samples/s",
              flush=True)
    med = {k: median(v) for k, v in speeds.items()}
    result["speed"] = dict(steps_per_window=args.speed_steps, rounds=args.rounds, samples_per_second=speeds,
                           median=med, ratio=round(med["ours"] / med["lightly"], 2))

    m = ours(args.data, args.steps, args.batch_size, work / "ours_full", dataset)
    print(f"ours {args.steps} steps: kNN {m['knn_top1']:.3f} (random {m['random_init_knn_top1']:.3f}), "
          f"{m['samples_per_second']:.0f} samples/s", flush=True)
    t = run_lightly(args.lightly_python, args.data, args.steps, args.batch_size, work / "lightly_full", quiet=True)
    lm = probe_lightly(work / "lightly_full", "small", dataset, "cpu")
    print(f"lightly {args.steps} steps: kNN {lm['knn_top1']:.3f}, {t['samples_per_second']:.0f} samples/s", flush=True)
    result["ours"] = {k: m[k] for k in SCORES}
    result["lightly"] = dict(version=t.get("lightly_version"), knn_top1=lm["knn_top1"], linear_top1=lm["linear_top1"],
                             train_seconds=t["train_seconds"], samples_per_second=t["samples_per_second"])
    save(result, "cpu_simclr")


# every method on the CPU table (issue 4): name -> (method, method_args, config overrides); the backbone is the
# small convnet unless the overrides name another (None: the method's own default, recorded in the row)
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
    "jigsaw": ("jigsaw", {}, {}), "colorization": ("colorization", {}, {}),
    # the costliest rows at selfsup bench's small settings (SMALL: why each): SSGAN's generator an eighth wide
    "ssgan": ("ssgan", SMALL["ssgan"][0], {"batch_size": SMALL["ssgan"][1]}),
    "deepcluster": ("deepcluster", {}, {}),
    # issue 14: the pretext tasks on the same budget; BoWNet learns from the RotNet row's run (kept in RUNS)
    "rotnet": ("rotnet", {}, {}), "context": ("context", {}, {}), "counting": ("counting", {}, {}),
    "aet": ("aet", {}, {}), "exemplar": ("exemplar", {}, {}), "decoupling": ("decoupling", {}, {}),
    "damaged-jigsaw": ("damaged-jigsaw", {}, {}), "bownet": ("bownet", {"teacher": "RUNS/rotnet"}, {}),
    # issue 15: reconstruction and generation
    "dae": ("dae", {}, {}), "context-encoder": ("context-encoder", {}, {}), "split-brain": ("split-brain", {}, {}),
    "super-resolution": ("super-resolution", {}, {}), "mae": ("mae", {}, {"backbone": "vit-tiny"}),
    # CPC at a reduced budget: batch 64 (a CPU step of 256 ~16 s, 1000 steps ~4.5 h; at 64: 1.3 epochs)
    "cpc": ("cpc", SMALL["cpc"][0], {"batch_size": SMALL["cpc"][1]}),
    "bigan": ("bigan", SMALL["bigan"][0], {"batch_size": SMALL["bigan"][1]}),
    # issue 16: groups of images and several views
    "cmc": ("cmc", {}, {}), "and": ("and", {}, {}),
    # JULE merges every epoch (5 here) down to 100 clusters; multi-task: seed 000's combination without video
    # (RotNet stands in for motion segmentation, as recipes/cifar10/multi-task.yaml), every image an exemplar seed
    "jule": ("jule", {}, {}),
    "multi-task": ("multi-task", {"lasso": True, "task_args": {"exemplar": {"seeds": "all"}}}, {}),
}
#: where the rows' runs are kept (a later row may learn from an earlier one: BoWNet's teacher is RUNS/rotnet)
RUNS = Path(__file__).parent.parent / "runs" / "cpu-methods"


def method_config(name: str, data: str, steps: int, batch_size: int, **options: object) -> selfsup.TrainConfig:
    """The config of the table's row ``name`` (see :data:`CPU_METHODS`) on the CPU; ``options``: other keys."""
    method, method_args, extra = CPU_METHODS[name]
    method_args = {k: str(RUNS / v.removeprefix("RUNS/")) if isinstance(v, str) and v.startswith("RUNS/") else v
                   for k, v in method_args.items()}
    return selfsup.TrainConfig(**{**dict(method=method, data=data, backbone="small", steps=steps,
                                         batch_size=batch_size, device="cpu", method_args=method_args),
                                  **options, **extra})


def interrupted(folder: Path, cfg: selfsup.TrainConfig) -> bool:
    """Whether ``folder`` holds an unfinished run of ``cfg`` (resumed, not started again)."""
    try:
        ckpt = load_checkpoint(folder)
    except UserError:
        return False  # no checkpoint yet
    return not ckpt.get("finished") and same_run(ckpt["config"], cfg)


def cpu_methods(args: argparse.Namespace) -> None:
    """Every method of :data:`CPU_METHODS`, small convnet, CIFAR-10, batch 256, 1000 steps, on the CPU.

    One run at a time (each uses every core); each finished method is written at once (merged into the JSON as it
    is then, so two queues with different ``--methods`` can share it) and an interrupted run resumes from its last
    checkpoint, so an interrupted table goes on where it stopped (``--force`` re-runs; an interrupted re-run of a
    measured row resumes without it).
    """
    names = args.methods.split(",")
    unknown = sorted(set(names) - set(CPU_METHODS))
    if unknown:
        raise SystemExit(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(CPU_METHODS)}")
    result = load("cpu_methods") or {}
    result.update(name="cpu-methods", dataset="CIFAR-10 (JPEG folders)", backbone="small", steps=args.steps,
                  batch_size=args.batch_size)
    runs = result.setdefault("runs", {})
    env, dataset = environment(), load_data(args.data)  # the code that runs is the code at start
    if args.speed_steps:  # a quiet pass: speed alone, every method back to back on an otherwise idle machine
        for name in names:
            cfg = method_config(name, args.data, args.speed_steps, args.batch_size,
                                log_every=max(1, args.speed_steps // 4))
            out = Path(tempfile.mkdtemp())
            selfsup.train(cfg, out, overwrite=True, evaluate=False, show_progress=False, data=dataset)
            runs.setdefault(name, {})["quiet_samples_per_second"] = round(median(sorted(log_windows(out))[1:]), 1)
            runs[name]["quiet_commit"] = env["commit"]
            print(f"{name}: {runs[name]['quiet_samples_per_second']} samples/s", flush=True)
        result["quiet"] = dict(steps=args.speed_steps, date=env["date"], note="median log window of a short run "
                               "per method, nothing else running; the full runs' samples/s shared the machine")
        save(result, "cpu_methods")
        return
    for name in names:
        cfg = method_config(name, args.data, args.steps, args.batch_size)
        resume = RUNS / name if not args.force and interrupted(RUNS / name, cfg) else None
        if name in runs and not args.force and resume is None:
            continue  # measured, and no re-run of it was interrupted
        method, method_args, extra = CPU_METHODS[name]
        m = selfsup.train(cfg, RUNS / name, overwrite=resume is None, resume=resume, show_progress=False,
                          data=dataset).metrics
        result = load("cpu_methods") or result  # another queue may have written rows meanwhile
        runs = result.setdefault("runs", {})
        quiet = {k: v for k, v in runs.get(name, {}).items() if k.startswith("quiet_")}  # measured on its own
        runs[name] = dict(**{k: m[k] for k in SCORES}, method=method, method_args=method_args, config=extra,
                          backbone=m["backbone"], **env, **quiet)
        print(f"{name}: kNN {m['knn_top1']:.3f} linear {m['linear_top1']:.3f} (random {m['random_init_knn_top1']:.3f}"
              f" / {m['random_init_linear_top1']:.3f}), {m['samples_per_second']:.0f} samples/s", flush=True)
        save(result, "cpu_methods")


def cpu_bounds(args: argparse.Namespace) -> None:
    """The table's lower bounds for the small convnet (seed 0, the methods' own initial trunk): random init and
    random rescaled (Krähenbühl et al., ICLR 2016: rescaled within and between layers on 128 training images)."""
    from selfsup.engine.build import build_method
    from selfsup.evaluate import probe
    from selfsup.evaluate.rescale import random_rescaled

    dataset, env = load_data(args.data), environment()
    cfg = method_config("simclr", args.data, 1, 256)
    size = dataset.native_size
    rows = {}
    for name in ("random init", "random rescaled"):
        encoder = build_method(cfg, size, dataset.num_classes).encoder()
        if name == "random rescaled":
            random_rescaled(encoder, dataset.train.images, size)
        rows[name] = dict(**probe(encoder, dataset.train, dataset.test, image_size=size), **env)
        print(f"{name}: kNN {rows[name]['knn_top1']:.3f} linear {rows[name]['linear_top1']:.3f}", flush=True)
    save(dict(name="cpu-bounds", backbone="small", dataset="CIFAR-10 (JPEG folders)", rows=rows), "cpu_bounds")


def cpu_layers(args: argparse.Namespace) -> None:
    """The seeds' per-layer table for rows of ``cpu-methods`` whose finished runs are kept in :data:`RUNS`: a linear
    probe on every stage of the trained encoder (``stages`` in the row) and, where the row's lower bound is not the
    table's trunk (another backbone or other inputs), of that encoder at random init (``random_init_stages``); the
    table's trunk at random init once (``random_init_stages`` at the top). ``--force`` probes again."""
    from selfsup import evaluate
    from selfsup.engine.build import build_method, method_from_checkpoint

    names = args.methods.split(",")
    _require_finished(names)
    dataset, env = load_data(args.data), environment()

    def probe(tag: str, encoder: torch.nn.Module) -> dict[str, float]:
        return evaluate.layers(encoder, dataset.train, dataset.test, device="cpu",
                               progress=lambda m: print(f"{tag}: {m}", flush=True))

    result = load("cpu_methods")
    if "random_init_stages" not in result or args.force:  # the table's trunk, seed 0, as cpu-bounds builds it
        cfg = method_config("simclr", args.data, 1, 256)
        trunk = build_method(cfg, dataset.native_size, dataset.num_classes).encoder()
        result = dict(load("cpu_methods"), random_init_stages=probe("random init", trunk))
        save(result, "cpu_methods")
    for name in names:
        if "stages" in load("cpu_methods")["runs"][name] and not args.force:
            continue
        update = dict(stages=probe(name, method_from_checkpoint(RUNS / name)[0].encoder()), layers_commit=env["commit"])
        if own_bound((runs := load("cpu_methods")["runs"])[name], runs["simclr"]):
            update["random_init_stages"] = probe(f"{name} (random init)",
                                                 method_from_checkpoint(RUNS / name, trained=False)[0].encoder())
        result = load("cpu_methods")  # another queue may have written rows meanwhile
        result["runs"][name].update(update)
        print(f"{name}: " + ", ".join(f"{s} {v * 100:.1f}" for s, v in update["stages"].items()), flush=True)
        save(result, "cpu_methods")



def cpu_fid(args: argparse.Namespace) -> None:
    """FID of the generative rows of ``--methods`` against the test images, every one in the features of the same
    kept run (``--features``, a row of this table: no Inception weights can be downloaded here), so that the rows
    compare with each other; written into each row (``fid``, replacing numbers from other feature networks)."""
    from selfsup.engine.build import method_from_checkpoint
    from selfsup.use.fid import feature_network, sample_fid

    names = args.methods.split(",")
    _require_finished([*names, args.features])
    net, size, _ = feature_network(str(RUNS / args.features))
    real, env = load_data(args.data, size).test, environment()
    ref = load("cpu_methods")["runs"][args.features]
    features = (f"the {args.features} row's network (kNN {ref['knn_top1'] * 100:.1f} / linear "
                f"{ref['linear_top1'] * 100:.1f}, commit {ref['commit']})")
    for name in names:
        value = sample_fid(method_from_checkpoint(RUNS / name)[0], real, net, size, args.samples, "cpu")
        result = load("cpu_methods")
        row = result["runs"][name]
        for key in [k for k in row if k.startswith("fid")]:
            del row[key]
        row.update(fid=round(value, 2), fid_samples=min(args.samples, len(real)), fid_features=features,
                   fid_commit=env["commit"])
        print(f"{name}: FID {value:.2f} in the features of {args.features}", flush=True)
        save(result, "cpu_methods")


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run (one that was not kept holds none)."""
    try:
        return bool(load_checkpoint(folder).get("finished"))
    except UserError:
        return False


def _require_finished(names: list[str]) -> None:
    unfinished = [n for n in names if not finished(RUNS / n)]
    if unfinished:
        raise SystemExit(f"no finished run in {RUNS} for {', '.join(unfinished)}: run cpu-methods for it first")
