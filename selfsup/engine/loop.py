"""The step loop of a run: batches, phases, dynamics, logging, the kNN monitor, checkpoints at epoch ends (only of a
model whose every number is finite), the NaN stop and the time limit."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import record_function

from selfsup.config import TrainConfig
from selfsup.data.ops.base import resize
from selfsup.data.sources import Dataset
from selfsup.distributed import all_reduce_mean, average_bn_statistics
from selfsup.engine.batches import batches as step_batches
from selfsup.engine.checkpoint import FILENAME, CheckpointWriter
from selfsup.engine.epoch import Epoch
from selfsup.engine.logger import StepLogger
from selfsup.engine.runfolder import OUTPUTS
from selfsup.engine.step import Stepper, autocast
from selfsup.errors import TrainingDiverged
from selfsup.evaluate import knn
from selfsup.evaluate.pictures import draw_panels
from selfsup.methods import Method
from selfsup.methods.panels import Panel

OUTPUTS_COUNT, OUTPUTS_SEED = 8, 0  # the test images and the seed of outputs.png


def all_finite(method: Method, optimizers: dict[str, torch.optim.Optimizer], device: torch.device) -> bool:
    """Whether every parameter, buffer and optimiser state tensor is finite, on every rank (one host sync)."""
    tensors = [t for t in method.state_dict().values() if t.is_floating_point()]
    tensors += [t for o in optimizers.values() for s in o.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.is_floating_point()]
    bad = torch.stack([t.isfinite().all().logical_not() for t in tensors]).any().float() if tensors else \
        torch.zeros(())
    return not bool(all_reduce_mean(bad.to(device)) > 0)


@dataclass
class Loop:
    """Everything the loop needs; :meth:`run` trains from ``start`` to ``last`` and returns the step it reached."""

    cfg: TrainConfig
    out: Path
    method: Method
    stepper: Stepper
    optimizers: dict[str, torch.optim.Optimizer]
    data: Dataset
    device: torch.device
    per_epoch: int
    total: int
    start: int
    logger: StepLogger
    local_bn: bool
    main: bool
    baseline: dict
    weights: torch.Tensor | None = None
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # writes while the next steps run

    def __post_init__(self) -> None:
        pretrain, cuda = self.data.pretrain, self.device.type == "cuda"
        # in memory, the images and labels move to the GPU once, as uint8
        self.images = pretrain.images.to(self.device) if cuda and not pretrain.streamed else pretrain.images
        self.labels = pretrain.labels.to(self.device) if pretrain.labels is not None and not pretrain.streamed \
            else None
        self.fields = {k: v.to(self.device) for k, v in pretrain.fields.items()} if cuda else pretrain.fields

    def epoch_start(self, epoch: int) -> torch.Tensor | None:
        ctx = Epoch(epoch, self.images, self.method, self.optimizers, self.device, self.cfg.seed, self.fields)
        with autocast(self.device), record_function("on_epoch_start"):
            self.method.on_epoch_start(ctx)
        self.weights = ctx.weights
        return self.weights

    def checkpoint(self, step: int, finished: bool = False) -> None:
        """Write the state after ``step`` in the background (rank 0); a model that holds an infinite or NaN number
        anywhere is never written: the run stops and the last checkpoint stays the last good one."""
        if not all_finite(self.method, self.optimizers, self.device):
            self.diverged(f"the weights, batch-norm statistics or optimiser state became NaN/inf by step {step}")
        if not self.main:
            return
        self.writer.save(self.out / FILENAME, dict(
            config=self.cfg.to_dict(), step=step, epoch=step // self.per_epoch, finished=finished,
            state=self.method.state_dict(), optimizers={n: o.state_dict() for n, o in self.optimizers.items()},
            sampling_weights=self.weights, baseline=self.baseline, train_seconds=self.logger.train_seconds,
            image_size=self.cfg.image_size, num_classes=self.data.num_classes, num_samples=len(self.data.pretrain)))
        if not finished:  # the finished checkpoint holds the weights of the last one
            self.draw_outputs(step)

    def draw_outputs(self, step: int) -> None:
        """Rank 0: :data:`OUTPUTS`, what :meth:`~selfsup.methods.base.Method.outputs` makes of the first test
        images (the same images and seed every time), and the same picture in TensorBoard; nothing for methods
        without outputs."""
        split = self.data.test or self.data.pretrain
        if not isinstance(split.images, torch.Tensor):
            return
        images = split.images[:OUTPUTS_COUNT].to(self.device)
        method, was_training = self.method, self.method.training
        method.eval()
        try:
            with torch.no_grad(), autocast(self.device):
                generator = torch.Generator(self.device).manual_seed(OUTPUTS_SEED)
                fields = {k: v[:OUTPUTS_COUNT].to(self.device) for k, v in split.fields.items()}
                panels = method.outputs(images, generator, fields=fields) if method.needs_fields else \
                    method.outputs(images, generator)
        finally:
            method.train(was_training)
        if panels:
            rows = [Panel("the images", resize(images, self.cfg.image_size)), *panels]
            picture = draw_panels(rows, f"{self.cfg.method}: what the network makes of test images, step {step}")
            self.logger.picture(self.out / OUTPUTS, picture, step)

    def diverged(self, what: str) -> None:
        self.logger.close()
        self.writer.wait()
        path = self.out / FILENAME
        kept = f"last good checkpoint: {path}" if path.exists() else "no checkpoint was written"
        raise TrainingDiverged(f"{what}; stopped ({kept})")

    def run(self, last: int, started: float, time_limit: float | None) -> int:
        """Train until step ``last`` (or the time limit's first log line); checkpoints at every epoch end."""
        cfg, method = self.cfg, self.method
        # no checkpoint thread may run while a stream forks its DataLoader workers
        source = step_batches(self.data.pretrain, self.images, self.labels, cfg, self.start, self.total,
                              self.per_epoch, self.device, self.writer.wait, self.epoch_start, self.weights,
                              self.fields)
        method.train()
        try:
            for step, batch in enumerate(source, self.start):
                epoch, pos = divmod(step, self.per_epoch)
                rates = self.stepper.set_rates(step)
                values = self.stepper.run(batch)
                with record_function("after_step"):
                    method.after_step((step + 1) / self.total)
                epoch_end = pos == self.per_epoch - 1 or step + 1 == last
                if epoch_end and self.local_bn:  # before the kNN monitor and the checkpoint: every rank, one model
                    average_bn_statistics(method)
                if self.logger.add(values, flush=epoch_end):
                    monitor = cfg.knn_every and epoch_end and (epoch + 1) % cfg.knn_every == 0 and self.data.evaluable
                    score = knn(method.encoder(), self.data.train, self.data.test, image_size=cfg.image_size,
                                device=self.device) if monitor else None
                    self.logger.write(step + 1, epoch, rates, score)
                    if not math.isfinite(self.logger.last_loss):
                        self.diverged(f"loss became {self.logger.last_loss} by step {step + 1}")
                    if time_limit is not None and step + 1 < last and _out_of_time(started, time_limit, self.device):
                        last = step + 1
                        if not epoch_end and self.local_bn:
                            average_bn_statistics(method)
                        epoch_end = True
                if epoch_end:
                    self.checkpoint(step + 1)
                if step + 1 == last:
                    break
        finally:
            source.close()
            self.writer.wait()
        self.logger.close()
        return max(last, self.start)


def _out_of_time(started: float, minutes: float, device: torch.device) -> bool:
    """Whether any process has used up ``minutes`` since ``started`` (all processes agree)."""
    late = torch.tensor(float(time.monotonic() - started > 60 * minutes), device=device)
    return bool(all_reduce_mean(late) > 0)
