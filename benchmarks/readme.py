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


BENCH = re.compile(r"(<!-- bench:(\w+) -->\n)(.*?)(<!-- /bench:\2 -->\n)", re.S)


def readme_bench(args: argparse.Namespace) -> None:
    """The README's bench section from a ``selfsup bench`` folder: its report's table between the markers
    ``<!-- bench:BUDGET -->`` and ``<!-- /bench:BUDGET -->``, its plots and its cells' JSON copied to
    ``results/bench_BUDGET/``, so the README's numbers are the report's, not typed, and outlive the bench folder."""
    import shutil

    bench, budget, readme_file = Path(args.bench), args.budget, Path(getattr(args, "readme", None) or README)
    report = bench / "report.md"
    if not report.exists():
        raise SystemExit(f"{report} does not exist: run selfsup bench --out {bench} first")
    lines = report.read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    pictures = readme_file.parent / "benchmarks" / "results" / f"bench_{budget}"
    pictures.mkdir(parents=True, exist_ok=True)
    plots = []
    for line in lines:
        if line.startswith("![") and (bench / (name := line[line.index("(") + 1 : -1])).exists():
            shutil.copy(bench / name, pictures / name)
            plots.append(f"![{name}](benchmarks/results/bench_{budget}/{name})")
    shutil.copy(report, pictures / "report.md")
    shutil.copytree(bench / "cells", pictures / "cells", dirs_exist_ok=True)  # kept with the report it backs
    body = (f"From `selfsup bench --budget {budget}` ({bench.name}/report.md, copied to "
            f"`benchmarks/results/bench_{budget}/`; every cell's command and commit are listed there):\n\n"
            + "\n".join(table) + "\n\n" + "\n".join(plots) + ("\n" if plots else ""))
    text = readme_file.read_text()
    marked = [m for m in BENCH.finditer(text) if m.group(2) == budget]
    if not marked:
        raise SystemExit(f"{readme_file} has no <!-- bench:{budget} --> ... <!-- /bench:{budget} --> section")
    m = marked[0]
    readme_file.write_text(text[: m.start(3)] + body + text[m.end(3):])
    print(body)
