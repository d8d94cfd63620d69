"""The README's printed outputs, regenerated (``python benchmarks/run.py readme``): the quick start's result block is
what ``selfsup train`` prints in a fresh folder with a fresh cache, with the commit and machine it ran on."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import environment

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(A typical result of the first command[^\n]*\n\n```\n)(.*?)(```\n)", re.S)


def quick_start_output() -> str:
    """``selfsup train`` with no arguments, as the README's first command runs it; stdout without timings' noise."""
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "SELFSUP_CACHE": str(work / "cache")}
    proc = subprocess.run([sys.executable, "-m", "selfsup", "train", "--quiet"], cwd=work, env=env,
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip() + "\n"


def readme(_: argparse.Namespace) -> None:
    env = environment()
    text = README.read_text()
    if not BLOCK.search(text):
        raise SystemExit("README.md has no quick-start result block to regenerate")
    out = quick_start_output()
    head = f"A typical result of the first command ({env['cpu']}, commit {env['commit']}, {env['date'][:10]}):\n\n```\n"
    README.write_text(BLOCK.sub(lambda m: head + out + m.group(3), text, count=1))
    print(out)
