"""The README's two commands: the main job runs as written and shows a real gain; CI runs the test command."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_install_and_run_then_install_and_test():
    main_job, tests = quick_start()[:2]
    assert "pip install -e ." in main_job and main_job.endswith("selfsup train")
    assert "pip install -e \".[test]\"" in tests and tests.endswith("python -m pytest")
    assert tests.replace("pip install -e", "pip install -q -e") in (ROOT / ".ci" / "run").read_text()


def test_main_job_as_written(tmp_path):
    """`selfsup train` with no arguments: SimCLR on digits, then the table with a visible kNN gain."""
    command = quick_start()[0].rsplit("&&", 1)[1].split()
    assert command == ["selfsup", "train"]
    env = {**os.environ, "SELFSUP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "selfsup", *command[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # no time limit: a slow machine is not a wrong result
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("  ")[0].strip(): line.split()[-2:] for line in proc.stdout.splitlines() if "  " in line}
    trained = next(v for k, v in rows.items() if k.startswith("simclr"))
    random = rows["random init"]
    assert float(trained[0]) > float(random[0]) + 3  # kNN top-1 gain in points
    run = next((tmp_path / "runs").iterdir())
    for name in ("config.yaml", "checkpoint.pt", "metrics.csv", "metrics.json", "loss.png", "embedding.png",
                 "retrieval.png", "tb", "train.log"):
        assert (run / name).exists(), name
