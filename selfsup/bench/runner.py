"""``selfsup bench``: pretrain every method of a budget (finished runs kept, interrupted ones resumed), evaluate each
next to the lower and upper bounds, and keep the report current after every cell."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import selfsup
from selfsup.bench.cells import Context, cell_names, compute, read_cell
from selfsup.bench.report import write_report
from selfsup.bench.rows import BUDGETS, LOWER, method_rows, row_config, same_run
from selfsup.data import load_data
from selfsup.engine.build import build_method, method_from_checkpoint
from selfsup.engine.checkpoint import load_checkpoint, resolve_checkpoint
from selfsup.errors import UserError


class Progress:
    """Says what is done, what runs and what is left, with the time left estimated from the finished tasks of the
    same kind (a pretraining, or an evaluation of one name); also into ``progress.md`` of the bench folder."""

    def __init__(self, out: Path, tasks: list[tuple[str, str]], say: Callable[[str], None]) -> None:
        self.out, self.tasks, self.say = out, tasks, say
        self.done: dict[tuple[str, str], float] = {}

    def finish(self, task: tuple[str, str], seconds: float | None) -> None:
        self.done[task] = seconds if seconds is not None else float("nan")

    def start(self, task: tuple[str, str]) -> None:
        left = [t for t in self.tasks if t not in self.done and t != task]
        eta = sum(self._estimate(t[1]) for t in [task, *left])
        line = (f"bench: {len(self.done)} of {len(self.tasks)} done; now {task[0]}: {task[1]}; {len(left)} left"
                + (f", about {_duration(eta)} to go at the pace so far" if eta == eta and eta > 0 else ""))
        self.say(line)
        rows = [f"- [x] {r}: {k}" for r, k in self.done] + [f"- [ ] **{task[0]}: {task[1]}** (running)"] + \
            [f"- [ ] {r}: {k}" for r, k in left]
        (self.out / "progress.md").write_text(f"# selfsup bench progress\n\n{line}\n\n" + "\n".join(rows) + "\n")

    def _estimate(self, kind: str) -> float:
        same = [s for (_, k), s in self.done.items() if k == kind and s == s]
        return sum(same) / len(same) if same else float("nan")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _existing(name: str, cfg: selfsup.TrainConfig, folder: Path) -> dict | None:
    """The checkpoint of ``name``'s row in ``folder`` (None if there is none); another config's is refused."""
    try:
        resolve_checkpoint(folder)
    except UserError:
        return None  # no run yet
    ckpt = load_checkpoint(folder)
    if not same_run(ckpt["config"], cfg):
        raise UserError(f"'{folder}' holds another run of {name} (a different config); pass --force to train it "
                        "again, or choose another --out")
    return ckpt


def _pretrain(cfg: selfsup.TrainConfig, folder: Path, data, resume: bool) -> float:
    """Train (or resume) a row's run into ``folder``; returns the seconds it took."""
    started = time.monotonic()
    selfsup.train(cfg, folder, overwrite=not resume, resume=folder if resume else None, show_progress=False,
                  data=data)
    return time.monotonic() - started


def _bounds(budget_cfg: selfsup.TrainConfig, size: int, data) -> dict[str, nn.Module]:
    """The lower bounds: the budget's backbone at its initial weights (seed 0), as is and random rescaled."""
    from selfsup.evaluate.rescale import random_rescaled

    encoders = {}
    for name in LOWER:
        encoder = build_method(budget_cfg, size, data.num_classes).encoder()
        if name == "random rescaled":
            random_rescaled(encoder, data.train.images, size)
        encoders[name] = encoder
    return encoders


def bench(methods: str = "all", data: str = "cifar10", budget: str = "cpu", evaluations: str = "knn,linear",
          out: str | Path = "runs/bench", transfer: str | None = None, force: bool = False,
          device: str | None = None, download: bool = False, say: Callable[[str], None] = print) -> Path:
    """Build the seeds' tables: every method of ``methods`` pretrained at ``budget`` on ``data`` (run folders
    ``out/<method>``), each evaluated by ``evaluations`` next to random init, random rescaled and supervised;
    one JSON file per cell under ``out/cells``, ``out/report.md`` and ``out/report.html`` (returned) rewritten
    after every cell. Interrupted, it resumes where it stopped; ``force`` trains and evaluates everything again."""
    if budget not in BUDGETS:
        raise UserError(f"unknown --budget '{budget}'; choose from {', '.join(BUDGETS)}")
    b, out = BUDGETS[budget], Path(out)
    cells = cell_names(evaluations)
    dataset = load_data(data, None, download)
    if not dataset.evaluable:
        raise UserError(f"'{data}' has no labeled train and test splits: the bench's tables need labels")
    transfer_set = load_data(transfer, None, download) if transfer else None
    if "transfer" in cells and (transfer_set is None or not transfer_set.evaluable):
        raise UserError("the transfer evaluation needs --transfer DATA with labeled train and test splits")
    names = method_rows(methods, dataset)
    dev = torch.device(device or (b.device if b.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"the {budget} budget trains on a GPU and none is available; use --budget cpu or --device cpu")
    out.mkdir(parents=True, exist_ok=True)
    rows = [*LOWER, *names]
    tasks = [(n, "pretrain") for n in names] + [(r, c) for r in rows for c in cells]
    progress = Progress(out, tasks, say)
    for task in tasks:
        if task[1] != "pretrain" and not force and (cell := read_cell(out, *task)) is not None:
            progress.finish(task, cell.get("seconds"))
    configs = {name: row_config(name, b, data, out) for name in names}
    existing = {} if force else {name: _existing(name, cfg, out / name) for name, cfg in configs.items()}
    for name, ckpt in existing.items():
        if ckpt is not None and ckpt.get("finished"):
            progress.finish((name, "pretrain"), ckpt.get("train_seconds"))
    size = None
    for name, cfg in configs.items():
        cfg.device = str(dev)
        if (name, "pretrain") not in progress.done:
            progress.start((name, "pretrain"))
            progress.finish((name, "pretrain"), _pretrain(cfg, out / name, dataset, existing.get(name) is not None))
        size = size or load_checkpoint(out / name)["image_size"]
    context = Context(dataset, size or dataset.native_size, b, dev, transfer_set, lambda m: say("  " + m))
    bounds = _bounds(row_config("supervised", b, data, out), context.size, dataset)
    for row in rows:
        todo = [c for c in cells if (row, c) not in progress.done]
        if not todo:
            continue
        encoder = bounds[row] if row in bounds else method_from_checkpoint(out / row)[0].encoder()
        for c in todo:
            progress.start((row, c))
            # the bounds' cells come with any method's bench: the command names the upper bound's
            command = shlex.join(["selfsup", "bench", "--methods", row if row not in bounds else "supervised",
                                  "--data", data, "--budget", budget, "--evaluations",
                                  "knn,linear" if c == "probe" else c, "--out", str(out)]
                                 + (["--transfer", transfer] if c == "transfer" else []))
            record = compute(out, row, c, encoder.to(dev), context, command)
            progress.finish((row, c), record["seconds"])
            write_report(out, rows, cells)
    report = write_report(out, rows, cells)
    say(f"bench: all {len(tasks)} tasks done; report {report}")
    return report
