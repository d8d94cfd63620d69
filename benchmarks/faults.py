"""Fault injection (``python benchmarks/run.py faults``): what a user can rely on when runs are killed, disks fill
up, folders are read-only and two runs share a folder. Every case runs the real CLI in a subprocess on digits and
checks the run folder afterwards; the counts go to ``benchmarks/results/faults.json``.

- kill -9 at random moments, and the moment a checkpoint's temporary file appears (mid-write): the checkpoint
  left behind always loads, ``--resume`` finishes the run, and its weights equal an uninterrupted run's;
- a full disk (a tmpfs just large enough for one checkpoint) and a read-only one (a tmpfs mounted read-only): one
  line and exit code 2, no temporary file left, the previous checkpoint intact, and the run resumes once the
  disk has room (needs root for the mounts; skipped otherwise);
- two runs started on one folder at once: one is refused before writing anything, the other completes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import environment, save
from selfsup.engine.checkpoint import FILENAME, load_checkpoint

TRAIN = ["--steps", "40", "--batch-size", "256", "--image-size", "8", "--log-every", "1", "--no-eval", "--quiet"]
STEPS = 40  # 5 steps per epoch on digits: a checkpoint every 5 steps


def cli(*args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "-m", "selfsup", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def train(out: Path, *extra: str, wait: bool = True):
    return cli("train", *TRAIN, "--out", str(out), *extra, wait=wait)


def max_difference(a: Path, b: Path) -> float:
    sa, sb = load_checkpoint(a)["state"], load_checkpoint(b)["state"]
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel())


def kill_trials(work: Path, reference: Path, n: int, during_writes: bool, rng: random.Random) -> dict:
    """``n`` runs killed with SIGKILL (at a random moment, or as a checkpoint write starts), then resumed."""
    held, lost, diffs = 0, [], []
    for i in range(n):
        out = work / f"kill{int(during_writes)}-{i}"
        proc = train(out, wait=False)
        if during_writes:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if out.is_dir() and any(p.name.startswith(f".{FILENAME}.tmp") for p in os.scandir(out)):
                    break
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(2.0, 8.0))  # start-up takes ~3 s: some kills land before the first checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ok = True
        if (out / FILENAME).exists():
            try:
                step = load_checkpoint(out)["step"]
            except Exception:  # noqa: BLE001 - a corrupt checkpoint is exactly what is counted here
                ok, step = False, 0
            lost.append(max(0, _logged_steps(out) - step))
            done = cli("train", "--resume", str(out), "--quiet") if ok else None
        else:
            lost.append(_logged_steps(out))
            done = train(out, "--overwrite")  # killed before the first checkpoint: start again
        if ok and done.returncode == 0:
            diffs.append(max_difference(out, reference))
            ok = diffs[-1] == 0.0
        held += ok
        shutil.rmtree(out, ignore_errors=True)
    return dict(tried=n, held=held, steps_lost_max=max(lost, default=0), resume_max_difference=max(diffs, default=0.0))


def _logged_steps(out: Path) -> int:
    rows = (out / "metrics.csv").read_text().splitlines()[1:] if (out / "metrics.csv").exists() else []
    return int(rows[-1].split(",")[0]) if rows else 0


@contextlib.contextmanager
def tmpfs(size: str, read_only: bool = False):
    path = Path(tempfile.mkdtemp())
    options = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def disk_cases(reference: Path) -> dict:
    """A disk that fills up after the first checkpoint, then gets room; a read-only disk."""
    cases = {}
    with tmpfs("7m") as disk:  # one checkpoint (~4.8 MB) fits, a second one's temporary file does not
        if disk is None:
            return dict(skipped="mounting a tmpfs needs root")
        out = disk / "run"
        first = train(out)
        one_line = first.returncode == 2 and first.stderr.count("\n") == 1 and "No space left" in first.stderr
        debris = [p.name for p in out.iterdir() if p.name.startswith(f".{FILENAME}.tmp") or p.name == ".lock"]
        intact = load_checkpoint(out)["step"] == 5
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = cli("train", "--resume", str(out), "--quiet")
        exact = resumed.returncode == 0 and max_difference(out, reference) == 0.0
        cases["full_disk"] = dict(held=one_line and not debris and intact and exact, message=first.stderr.strip(),
                                  temporary_files_left=len(debris), previous_checkpoint_intact=intact,
                                  resumed_exactly=exact)
    with tmpfs("64m", read_only=True) as disk:
        run = train(disk / "run")
        resume = cli("train", "--resume", str(disk / "run"), "--quiet")
        cases["read_only"] = dict(held=run.returncode == 2 and run.stderr.count("\n") == 1 and resume.returncode == 2,
                                  message=run.stderr.strip())
    return cases


def concurrent_runs(work: Path) -> dict:
    """Two runs on one folder at once: exactly one is refused, the other's files are whole."""
    held = 0
    trials = 5
    for i in range(trials):
        out = work / f"twice{i}"
        a, b = train(out, wait=False), train(out, wait=False)
        codes = sorted([a.wait(), b.wait()])
        errors = a.stderr.read() + b.stderr.read()
        steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
        ok = codes == [0, 2] and "another run" in errors and steps == list(range(1, STEPS + 1))
        held += ok and load_checkpoint(out)["finished"]
        shutil.rmtree(out, ignore_errors=True)
    return dict(tried=trials, held=held)


def faults(args: argparse.Namespace) -> None:
    env, rng = environment(), random.Random(args.seed)
    work = Path(tempfile.mkdtemp())
    reference = work / "reference"
    if train(reference).returncode:
        raise SystemExit("the reference run failed")
    result = dict(name="faults", **env, setting=f"selfsup train (SimCLR, digits) {' '.join(TRAIN)}",
                  kill_random=kill_trials(work, reference, args.kills, False, rng),
                  kill_during_write=kill_trials(work, reference, args.kills, True, rng),
                  disk=disk_cases(reference), concurrent=concurrent_runs(work))
    shutil.rmtree(work, ignore_errors=True)
    print({k: v for k, v in result.items() if k.startswith(("kill", "disk", "concurrent"))}, flush=True)
    save(result, "faults")

