"""metrics.csv rows, TensorBoard scalars and the progress bar, with one host sync per log window."""

from __future__ import annotations

import csv
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from selfsup.config import TrainConfig
from selfsup.distributed import all_reduce_mean

#: the columns every run has; named loss terms go after "loss", other optimisers' rates after "lr"
FIRST, LAST = ["step", "epoch", "loss"], ["samples_per_second", "elapsed_seconds", "knn_top1"]


class RunLog:
    """What a run says while it works: one line per phase (the random-init probe, the final evaluation, the
    pictures), the kNN monitor and the results, on stderr (when progress is shown) and in ``train.log`` in the
    run folder (rank 0), so that no phase longer than a few seconds is silent."""

    def __init__(self, out: Path, show: bool, main: bool) -> None:
        self.path, self.show, self.main = out / "train.log", show, main

    def say(self, message: str, echo: bool = True) -> None:
        """``message`` into train.log, and on stderr too when progress is shown and ``echo``."""
        if not self.main:
            return
        if self.show and echo:
            tqdm.write(message, file=sys.stderr)
        try:
            with open(self.path, "a") as f:
                f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S}  {message}\n")
        except OSError:
            pass  # the log is a convenience: a full disk is reported where it matters (the checkpoint)


class StepLogger:
    """Accumulates a step's named scalars (the total ``loss`` and any loss terms) on the device and writes a
    row every ``log_every`` steps: the window's means, synchronised with the host (and averaged over ranks)
    once per window."""

    def __init__(self, out: Path, start: int, total: int, cfg: TrainConfig, show_progress: bool, log: RunLog,
                 train_seconds: float = 0.0, main: bool = True) -> None:
        self.main, self.path, self.log = main, out / "metrics.csv", log
        self.fields = _trim_csv(self.path, start) if main else None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=start or None)
        self.bar = tqdm(total=total, initial=start, disable=not show_progress, unit="step", dynamic_ncols=True,
                        desc=cfg.method, mininterval=1.0)
        self.batch_size, self.every = cfg.batch_size, cfg.log_every
        self.train_seconds = self.logged_seconds = train_seconds
        self.last_loss = 0.0
        self._reset()

    def _reset(self) -> None:
        self.window: dict[str, torch.Tensor | float] = {}
        self.window_steps, self.window_start = 0, time.perf_counter()
        self.logged_seconds = self.train_seconds

    def add(self, values: dict[str, torch.Tensor], flush: bool) -> bool:
        """Accumulate one step's scalars (detached, on the device); True when a row is due (window full or
        ``flush``)."""
        for k, v in values.items():
            self.window[k] = v + self.window.get(k, 0.0)
        self.window_steps += 1
        if self.window_steps < self.every and not flush:
            return False
        self.train_seconds += time.perf_counter() - self.window_start
        return True

    def write(self, step: int, epoch: int, rates: dict[str, float], knn_top1: float | None = None) -> None:
        """Write the window's row (``rates``: each optimiser's current lr, the first one logged as ``lr``)."""
        keys = list(self.window)
        means = all_reduce_mean(torch.stack([torch.as_tensor(self.window[k]).float() for k in keys]))
        values = dict(zip(keys, (v / self.window_steps for v in means.tolist()), strict=True))  # the one sync
        self.last_loss = values["loss"]
        if not self.main:
            self._reset()
            return
        names = list(rates)
        row = dict(step=step, epoch=epoch, **{k: round(v, 6) for k, v in values.items()}, lr=rates[names[0]],
                   **{f"lr/{n}": rates[n] for n in names[1:]},
                   samples_per_second=round(self.window_steps * self.batch_size / max(
                       self.train_seconds - self.logged_seconds, 1e-9), 1),
                   elapsed_seconds=round(self.train_seconds, 2),
                   knn_top1="" if knn_top1 is None else round(knn_top1, 4))
        self._write_row(row)
        for k, v in row.items():
            if k not in ("step", "epoch", "samples_per_second", "elapsed_seconds") and v != "":
                self.writer.add_scalar(k, v, step)
        if knn_top1 is not None:
            self.log.say(f"step {step}: kNN top-1 {knn_top1 * 100:.1f}%")
        terms = {k: f"{v:.3g}" for k, v in values.items() if k != "loss"}  # loss terms, phase by phase
        self.bar.set_postfix(loss=f"{self.last_loss:.4f}", **terms, samples_s=f"{row['samples_per_second']:.0f}")
        self.bar.update(self.window_steps)
        self._reset()

    def picture(self, path: Path, picture: Image.Image, step: int) -> None:
        """Write ``picture`` to ``path`` (whole: beside it, then renamed) and into TensorBoard at ``step``."""
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        picture.save(tmp, format="PNG")
        os.replace(tmp, path)
        self.writer.add_image(path.stem, np.asarray(picture.convert("RGB")), step, dataformats="HWC")

    def _write_row(self, row: dict) -> None:
        if self.fields is None:  # the first row of a run fixes the columns
            self.fields = [k for k in row if k not in LAST] + LAST
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        self.bar.close()
        if self.main:
            self.writer.close()


def _trim_csv(path: Path, step: int) -> list[str] | None:
    """On resume, drop log rows written after the checkpoint we resume from; the file's columns (None for a
    new run: the first row writes the header)."""
    if step == 0 or not path.exists():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if int(r["step"]) <= step]
        fields = list(reader.fieldnames or FIRST + ["lr"] + LAST)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    return fields


def summarise_tensorboard(out: Path, cfg: TrainConfig, metrics: dict, pictures: tuple[str, ...]) -> None:
    """The run's final scores as scalars and as TensorBoard hparams (with its config), and its pictures."""
    from torch.utils.tensorboard import SummaryWriter

    scores = {k: v for k, v in metrics.items() if k.endswith("top1") and isinstance(v, float)}
    hparams = {k: v for k, v in cfg.to_dict().items() if isinstance(v, int | float | str | bool)}
    with SummaryWriter(str(out / "tb")) as writer:
        for k, v in scores.items():
            writer.add_scalar(f"final/{k}", v, metrics.get("steps", 0))
        if scores:
            writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in scores.items()}, run_name=".")
        for name in pictures:
            if (out / name).exists():
                writer.add_image(name, np.asarray(Image.open(out / name).convert("RGB")), dataformats="HWC")
