"""The run folder: what a run writes there, and the lock that keeps a second run out of it."""

from __future__ import annotations

import os
import shutil
import socket
from datetime import datetime
from pathlib import Path

from selfsup.config import TrainConfig
from selfsup.engine.checkpoint import FILENAME, remove_partial_writes
from selfsup.errors import UserError

RUN_FILES = ("config.yaml", FILENAME, "metrics.csv", "metrics.json")
OUTPUTS = "outputs.png"  # Method.outputs on fixed test images, redrawn at every checkpoint (engine.loop)
PLOTS = ("tb", "loss.png", "embedding.png", "retrieval.png", OUTPUTS)
LOCK = ".lock"


def default_out(cfg: TrainConfig) -> Path:
    name = Path(cfg.data.rstrip("/")).name or "data"
    return Path("runs") / f"{cfg.method}-{name}-{datetime.now():%Y%m%d-%H%M%S}"


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in RUN_FILES)


def prepare_folder(out: Path, cfg: TrainConfig, clear: bool, pictures: tuple[str, ...]) -> None:
    """Write the resolved config into ``out`` (locked), after removing an earlier run's files if ``clear`` and
    the temporary files of a killed checkpoint write in any case."""
    try:
        if clear:
            for f in RUN_FILES + PLOTS + pictures:
                p = out / f
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        remove_partial_writes(out)
        cfg.save(out / "config.yaml")
    except OSError as e:
        raise UserError(f"cannot write to the run folder '{out}': {e.strerror or e}") from None


class RunLock:
    """``out/.lock`` holds the pid and host of the run writing to ``out``: taken before anything is written,
    released at the end. A second run is refused while the first one lives; the lock of a process that died
    (same host, pid gone) is taken over, so a crash never leaves a folder locked for good."""

    def __init__(self, out: Path) -> None:
        self.path, self.held = out / LOCK, False

    def acquire(self) -> None:
        created = not self.path.parent.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(2):  # a stale lock is removed once, then taken
                try:
                    self._create()
                except FileExistsError:
                    if not self._stale():
                        raise UserError(self._holder_message()) from None
                    self.path.unlink(missing_ok=True)
                    continue
                self.held = True
                return
        except OSError as e:
            if created:
                shutil.rmtree(self.path.parent, ignore_errors=True)
            raise UserError(f"cannot write to the run folder '{self.path.parent}': {e.strerror or e}") from None
        raise UserError(self._holder_message())

    def _create(self) -> None:
        """The lock file, with its content, in one step: written beside it, then hard-linked into place (which
        fails if it exists), so that no other run ever reads a lock half-written and takes it for a dead one's.
        Where the file system has no hard links, an exclusive create, then the content."""
        mine = f"{os.getpid()} {socket.gethostname()}\n"
        tmp = self.path.with_name(f"{LOCK}.{os.getpid()}")
        tmp.write_text(mine)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:  # no hard links here
            with os.fdopen(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "w") as f:
                f.write(mine)
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> tuple[int, str] | None:
        try:
            pid, host = self.path.read_text().split()
            return int(pid), host
        except (OSError, ValueError):
            return None

    def _stale(self) -> bool:
        holder = self._holder()
        if holder is None:  # unreadable: a broken file (locks appear whole, see _create)
            return True
        pid, host = holder
        if host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _holder_message(self) -> str:
        pid, host = self._holder() or (0, "?")
        return (f"another run (process {pid} on {host}) is writing to '{self.path.parent}'; wait for it to end or "
                f"choose another --out (if no such run exists, delete {self.path})")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
