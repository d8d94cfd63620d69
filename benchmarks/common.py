"""What every target shares: the environment recorded with each result, saving a result (and the table),
the trainer's log windows, and lightly's SimCLR run side by side (lightly lives in its own virtualenv)."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.tables import RESULTS, write_table
from selfsup.backbones import build_backbone
from selfsup.data.sources import Dataset
from selfsup.evaluate import probe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def environment() -> dict:
    """Command, commit and hardware, recorded with every result. ``$SELFSUP_BENCH_COMMIT`` names the commit
    where the checkout's .git cannot (a copy of the working tree on another machine whose .git lags)."""
    named = os.environ.get("SELFSUP_BENCH_COMMIT")
    commit = named or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout
    # results written by earlier targets do not make the code dirty; a lagging .git cannot say anything
    dirty = not named and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                          ":!benchmarks/results"], capture_output=True, text=True,
                                         cwd=ROOT).stdout.strip()
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(command=" ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
                commit=commit.strip() + ("+dirty" if dirty else ""), cpu=cpu, cpu_cores=os.cpu_count(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                gpu_count=torch.cuda.device_count(), torch=torch.__version__, python=platform.python_version(),
                date=time.strftime("%Y-%m-%d %H:%M:%S"))


def save(result: dict, name: str) -> None:
    """``results/<name>.json``, then the Markdown table rebuilt from every JSON file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_table()


def median(values: list[float]) -> float:
    """The upper median (the middle value of an odd count), as every table here reports it."""
    return sorted(values)[len(values) // 2]


def log_windows(out: Path) -> list[float]:
    """Samples/s of every ``log_every`` window of the run in ``out`` (its metrics.csv), in order."""
    with open(out / "metrics.csv") as f:
        return [float(r["samples_per_second"]) for r in csv.DictReader(f)]


def run_lightly(python: str, data: str, steps: int, batch_size: int, out: Path, quiet: bool = False,
                **options: object) -> dict:
    """lightly's SimCLR (``lightly_simclr.py`` under ``python``) for ``steps`` steps; ``options`` are its other
    flags (``workers=16`` is ``--workers 16``). Returns its timing.json; its backbone is in ``out/backbone.pt``."""
    flags = [str(x) for k, v in options.items() for x in (f"--{k.replace('_', '-')}", v)]
    subprocess.run([python, str(HERE / "lightly_simclr.py"), "--data", data, "--steps", str(steps), "--batch-size",
                    str(batch_size), "--out", str(out), *flags], check=True,
                   stdout=subprocess.DEVNULL if quiet else None)
    return json.loads((out / "timing.json").read_text())


def probe_lightly(out: Path, backbone: str, dataset: Dataset, device: str) -> dict[str, float]:
    """kNN and linear top-1 of the backbone a :func:`run_lightly` run left in ``out``, by selfsup's own probe."""
    model = build_backbone(backbone)
    model.load_state_dict(torch.load(out / "backbone.pt", map_location="cpu"))
    return probe(model.to(device), dataset.train, dataset.test, image_size=dataset.train.images.shape[-1],
                 device=device)
