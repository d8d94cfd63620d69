"""The training loop: one readable function from config to a trained, evaluated run folder.

A run folder holds ``config.yaml`` (replayable with ``--config``), ``checkpoint.pt`` (written
atomically at every epoch end), ``metrics.csv`` (one row per ``log_every`` steps), TensorBoard
events in ``tb/``, ``loss.png``, ``embedding.png``, ``retrieval.png``, the method's own pictures and
``metrics.json``.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from selfsup.config import TrainConfig, config_from_dict, validate
from selfsup.data.sources import FIELD_SOURCES, Dataset, load_data
from selfsup.distributed import broadcast_object, convert_sync_batchnorm, init_from_env, is_main_process, world_size
from selfsup.engine.build import build_method, check_method_args, load_state, optimizer_settings, resolve_config
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.logger import RunLog, StepLogger, summarise_tensorboard
from selfsup.engine.loop import Loop
from selfsup.engine.optim import build_optimizer
from selfsup.engine.runfolder import RunLock, default_out, holds_run, prepare_folder
from selfsup.engine.step import Stepper
from selfsup.errors import UserError
from selfsup.evaluate import extract_features, probe, scores
from selfsup.evaluate.neighbours import plot_retrieval
from selfsup.evaluate.report import format_table, plot_embedding, plot_loss
from selfsup.methods import Method, get_method

# buffers stay equal on every rank by construction (queues, banks, BN statistics under global BN) or are
# averaged at every epoch end (BN statistics of per-rank batch norm: average_bn_statistics)
NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                  else {"broadcast_buffers": False})


@dataclass
class Run:
    """A finished (or resumed and finished) pretraining run."""

    out: Path
    config: TrainConfig
    method: Method
    data: Dataset
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> nn.Module:
        return self.method.backbone

    @property
    def encoder(self) -> nn.Module:
        """What evaluation uses: the backbone on RGB for most methods (see Method.encoder)."""
        return self.method.encoder()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def schedule(cfg: TrainConfig, n_images: int) -> tuple[int, int]:
    """(steps per epoch, total steps). Default budget: 100 epochs."""
    if cfg.batch_size > n_images:
        raise UserError(f"batch size {cfg.batch_size} is larger than the dataset ({n_images} images)")
    per_epoch = n_images // cfg.batch_size
    total = cfg.steps if cfg.steps is not None else per_epoch * (cfg.epochs or 100)
    return per_epoch, total


def prepare_run(cfg: TrainConfig, out: str | Path | None, overwrite: bool = False,
                resume: str | Path | None = None) -> tuple[TrainConfig, Path, dict | None]:
    """Validate everything that can be checked before touching the disk."""
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.get("finished"):
            raise UserError(f"run '{resume}' already finished ({ckpt['step']} steps); nothing to resume")
        cfg = config_from_dict(ckpt["config"])
        out = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    validate(cfg)
    check_method_args(get_method(cfg.method), cfg.method_args)
    optimizer_settings(cfg)  # unknown optimiser names and missing rates, before any data is read
    resolve_device(cfg.device)
    out = Path(out) if out is not None else default_out(cfg)
    if ckpt is None and holds_run(out) and not overwrite:
        raise UserError(f"output folder '{out}' holds another run; pass --overwrite (overwrite=True in Python) or "
                        "choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path '{out}' is a file, not a folder")
    return cfg, out, ckpt


def train(cfg: TrainConfig, out: str | Path | None = None, overwrite: bool = False, resume: str | Path | None = None,
          backbone: nn.Module | None = None, evaluate: bool = True, show_progress: bool = True,
          data: Dataset | None = None, stop_at: int | None = None, time_limit: float | None = None) -> Run:
    """Pretrain ``cfg.method`` and (if the data has labels) evaluate against random init.

    ``stop_at`` ends the session after that many steps with a resumable checkpoint, as an
    interruption would (the resume tests). ``time_limit`` (minutes, counted from this call) does the
    same at the first log line past it, so a job with a wall-clock allowance (SLURM, a lent GPU) ends
    cleanly and the next one resumes; every process stops at the same step.
    """
    started = time.monotonic()
    device = init_from_env(cfg.device) or resolve_device(cfg.device)
    cfg, out, ckpt = prepare_run(cfg, out, overwrite, resume)
    world, main = world_size(), is_main_process()
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the {world} processes")
    if cfg.batch_size // world < 2:
        raise UserError(f"--batch-size {cfg.batch_size} gives each of the {world} processes fewer than 2 images; batch "
                        "norm and the losses compare the images of a batch (SimCLR's negatives are the others)")
    data = data or load_data(cfg.data, cfg.image_size, cfg.download, cfg.stream)
    cls = get_method(cfg.method)
    if cls.needs_labels and not data.pretrain.labeled:
        raise UserError(f"method '{cfg.method}' needs labels, but '{cfg.data}' has none (use class subfolders)")
    cfg = resolve_config(cfg, data)
    per_epoch, total = schedule(cfg, len(data.pretrain))
    if backbone is not None and not cfg.backbone.startswith("custom"):
        cfg.backbone = f"custom:{type(backbone).__name__}"
    method, model, local_bn = build_model(cfg, data, backbone, device)
    # the built method's fields: a multi-task run needs its tasks'
    lacking = [f for f in method.needs_fields if f not in data.pretrain.field_names]
    if lacking:
        where = "; ".join(dict.fromkeys(FIELD_SOURCES[f] for f in lacking if f in FIELD_SOURCES))
        raise UserError(f"method '{cfg.method}' trains on the field{'s' * (len(lacking) > 1)} {', '.join(lacking)} "
                        f"of every sample, which '{cfg.data}' lacks" + (f"; use {where}" if where else ""))
    settings = optimizer_settings(cfg)
    params = {name: [p for p in method.parameters_of(name) if p.requires_grad] for name in settings}
    optimizers = {name: build_optimizer(params[name], s, fused=device.type == "cuda" and s.optimizer != "lars")
                  for name, s in settings.items()}
    stepper = Stepper(method, model, optimizers, settings, params, total, per_epoch, device)

    # only now, after every check on every rank, is anything written (by rank 0 alone)
    lock = _lock(out, main, lambda: _written_meanwhile(out, ckpt, overwrite))
    try:
        if main:
            prepare_folder(out, cfg, clear=ckpt is None and overwrite, pictures=cls.pictures)
        log = RunLog(out, show_progress, main)
        log.say(f"{'resuming' if ckpt else 'training'} {cfg.method} ({cfg.backbone}, {cfg.image_size} px) on "
                f"{cfg.data}: {total} steps of {cfg.batch_size} images ({total / per_epoch:.3g} epochs of "
                f"{len(data.pretrain)}) on {device}, {world} process{'es' * (world > 1)}; run folder {out}")
        start, baseline, weights = 0, {}, None
        if ckpt is not None:
            load_state(method, ckpt["state"], out)
            states = ckpt.get("optimizers") or {next(iter(optimizers)): ckpt.get("optimizer")}  # one optimiser
            for name, opt in optimizers.items():
                load_state(opt, states.get(name), out)
            start, baseline, weights = ckpt["step"], ckpt.get("baseline", {}), ckpt.get("sampling_weights")
        elif evaluate and data.evaluable:  # the lower bound: this very encoder before any training
            log.say(f"random init: kNN and linear probe on {len(data.train)} + {len(data.test)} images ...")
            initial = probe(method.encoder(), data.train, data.test, image_size=cfg.image_size, device=device)
            baseline = {f"random_init_{k}": v for k, v in initial.items()}
            log.say(f"random init: kNN {initial['knn_top1'] * 100:.1f}%, linear {initial['linear_top1'] * 100:.1f}%")
        logger = StepLogger(out, start, total, cfg, show_progress and main, log,
                            ckpt.get("train_seconds", 0.0) if ckpt else 0.0, main)
        loop = Loop(cfg, out, method, stepper, optimizers, data, device, per_epoch, total, start, logger, local_bn,
                    main, baseline, weights)
        last = loop.run(total if stop_at is None else min(total, stop_at), started, time_limit)
        if last < total:  # stopped early on request: resumable, not evaluated
            return Run(out, cfg, method, data, dict(steps=last, total_steps=total, stopped=True))
        run = _finish(cfg, out, method, data, device, logger.train_seconds, baseline, evaluate, per_epoch, main, log)
        loop.checkpoint(total, finished=True)  # only now: a run killed during its evaluation can be resumed
        loop.writer.wait()
        return run
    finally:
        lock.release()


def _written_meanwhile(out: Path, ckpt: dict | None, overwrite: bool) -> str | None:
    """Why ``out`` is no longer this run's to write, now that it is locked: another run wrote it after this one's
    checks (two runs started at once, the other one quicker); None if it still is."""
    if ckpt is None:
        if holds_run(out) and not overwrite:
            return (f"output folder '{out}' received another run while this one started; pass --overwrite "
                    "(overwrite=True in Python) or choose another --out")
        return None
    if load_checkpoint(out)["step"] != ckpt["step"]:
        return f"the run in '{out}' went on while this resume started (another process resumed it); resume again"
    return None


def _lock(out: Path, main: bool, check: Callable[[], str | None]) -> RunLock:
    """Rank 0 locks the run folder and then asks ``check`` whether it is still this run's to write (see
    :func:`_written_meanwhile`); every rank learns the answer (a refusal is every rank's UserError)."""
    lock = RunLock(out)
    refusal = None
    if main:
        try:
            lock.acquire()
            refusal = check()
        except UserError as e:
            refusal = str(e)
        if refusal:
            lock.release()
    refusal = broadcast_object(refusal)
    if refusal:
        raise UserError(refusal)
    return lock


def build_model(cfg: TrainConfig, data: Dataset, backbone: nn.Module | None,
                 device: torch.device) -> tuple[Method, nn.Module, bool]:
    """The method on its device (channels-last, compiled, global BN as asked), the module a one-phase step calls
    (DDP-wrapped under torch.distributed), and whether batch norm stays per rank."""
    world, cls = world_size(), get_method(cfg.method)
    method = build_method(cfg, cfg.image_size, data.num_classes, backbone, len(data.pretrain)).to(device)
    method.check_batch(cfg.batch_size)
    local_bn = world > 1 and not (cfg.sync_bn and cls.global_bn)  # each rank's BN sees its own batches
    if world > 1 and not local_bn:
        method = convert_sync_batchnorm(method)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    if cfg.compile:
        method.backbone.compile()  # in place: state_dict keys and checkpoints are unchanged
    # one phase: DDP reduces the gradients during backward; several: the Stepper reduces each phase's own
    model = DDP(method, device_ids=[device.index] if device.type == "cuda" else None,
                **NO_BUFFER_SYNC) if world > 1 and len(method.phases) == 1 else method
    return method, model, local_bn


def _finish(cfg: TrainConfig, out: Path, method: Method, data: Dataset, device: torch.device, train_seconds: float,
            baseline: dict, evaluate: bool, per_epoch: int, main: bool, log: RunLog) -> Run:
    """Final evaluation (every rank joins the feature extraction), plots, metrics.json and the TensorBoard
    summary (rank 0)."""
    total = cfg.steps or per_epoch * cfg.epochs
    metrics: dict[str, Any] = dict(method=cfg.method, backbone=cfg.backbone, data=cfg.data, steps=total,
                                   epochs=round(total / per_epoch, 2), batch_size=cfg.batch_size,
                                   image_size=cfg.image_size, train_seconds=round(train_seconds, 2),
                                   samples_per_second=round(total * cfg.batch_size / train_seconds, 1),
                                   device=str(device), processes=world_size(), **baseline)
    if evaluate and data.evaluable:  # every rank embeds its share; all get the same numbers
        log.say(f"final evaluation: kNN and linear probe on {len(data.train)} + {len(data.test)} images ...")
        train_feats, test_feats = (extract_features(method.encoder(), s.images, cfg.image_size, device=device)
                                   for s in (data.train, data.test))
        metrics.update(scores(train_feats, data.train.labels, test_feats, data.test.labels))
    if not main:
        return Run(out, cfg, method, data, metrics)
    if evaluate and data.evaluable:
        log.say("pictures: t-SNE map of the test set and nearest neighbours ...")
        plot_embedding(test_feats, data.test.labels, out / "embedding.png", data.test.classes,
                       title=f"{cfg.method} {cfg.backbone}: test embeddings (t-SNE)")
        plot_retrieval(data.train, train_feats, data.test, test_feats, out / "retrieval.png",
                       title=f"{cfg.method} {cfg.backbone}: test images and their nearest train images")
    metrics.update(method.report(out, data))
    plot_loss(out / "metrics.csv", out / "loss.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    summarise_tensorboard(out, cfg, metrics, ("loss.png", "embedding.png", "retrieval.png", *method.pictures))
    if "knn_top1" in metrics:
        log.say("\n" + results_table(metrics), echo=False)  # the caller prints it
    return Run(out, cfg, method, data, metrics)


def results_table(metrics: dict[str, Any]) -> str:
    """The table `selfsup train` prints: trained backbone next to its random init (a run started with
    ``--no-eval`` and resumed with evaluation has no random-init row)."""
    rows = [[f"{metrics['method']} ({metrics['steps']} steps)", metrics["knn_top1"], metrics["linear_top1"]]]
    if "random_init_knn_top1" in metrics:
        rows.append(["random init", metrics["random_init_knn_top1"], metrics["random_init_linear_top1"]])
    return format_table([f"{metrics['backbone']} on {metrics['data']}", "kNN top-1 %", "linear top-1 %"], rows)
