"""benchmarks/layers.py (``run.py layers``, the seeds' per-layer table on one backbone): every stage of the trained
encoder and of its random init probed; an interrupted run resumes, and a finished run whose probes were cut off
is probed without training again (a NIN method takes hours on a CPU)."""

import json

import pytest
import torch

import selfsup
from benchmarks import common, layers, tables
from benchmarks.run import parser
from selfsup import evaluate
from selfsup.data import load_data
from selfsup.data.sources import Dataset
from selfsup.engine.build import method_from_checkpoint
from selfsup.engine.checkpoint import load_checkpoint


@pytest.fixture
def table(tmp_path, monkeypatch):
    """``run.py layers`` (small backbone, 4 steps of 16) on 256 + 100 digits, results and runs under tmp_path;
    returns (run, data)."""
    for module in (tables, common, layers):  # save() writes where tables reads, the plot beside it
        monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    digits = load_data("digits")
    first = lambda images, n: images.subset(torch.arange(n))  # noqa: E731
    data = Dataset("digits", pretrain=first(digits.pretrain, 256), train=first(digits.train, 256),
                   test=first(digits.test, 100))
    monkeypatch.setattr(layers, "load_data", lambda spec, size=None: data)

    def run(*argv: str) -> dict:
        args = parser().parse_args(["layers", "--data", "digits", "--backbone", "small", "--steps", "4",
                                    "--batch-size", "16", "--out", str(tmp_path / "runs"), *argv])
        args.fn(args)
        return json.loads((tmp_path / "results" / "layers_small.json").read_text())

    return run, data


def test_every_stage_of_the_trained_encoder_and_of_its_random_init(table, tmp_path):
    run, data = table
    row = run("--methods", "rotnet")["runs"]["rotnet"]
    folder = tmp_path / "runs" / "small" / "rotnet"
    trained, initial = (method_from_checkpoint(folder, trained=t)[0].encoder() for t in (True, False))
    tol = 2 / len(data.test)
    assert row["stages"] == pytest.approx(evaluate.layers(trained, data.train, data.test, device="cpu"), abs=tol)
    assert row["random_init"] == pytest.approx(evaluate.layers(initial, data.train, data.test, device="cpu"), abs=tol)
    assert list(row["stages"]) == list(row["random_init"]) and len(row["stages"]) > 1
    assert (tmp_path / "results" / "layers_small.png").exists()


def test_an_interrupted_run_resumes_and_a_finished_one_is_not_trained_again(table, tmp_path):
    run, data = table
    folder = tmp_path / "runs" / "small" / "rotnet"
    cfg = selfsup.TrainConfig(method="rotnet", data="digits", backbone="small", steps=4, batch_size=16,
                              device="cpu")
    selfsup.train(cfg, folder, show_progress=False, data=data, stop_at=2)
    run("--methods", "rotnet")
    assert load_checkpoint(folder)["step"] == 4 and "resuming" in (folder / "train.log").read_text()
    # the run finished but its probes were cut off (no row in the JSON): probed, not trained again
    path = tmp_path / "results" / "layers_small.json"
    result = json.loads(path.read_text())
    del result["runs"]["rotnet"]
    path.write_text(json.dumps(result))
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("checkpoint*")}
    assert "rotnet" in run("--methods", "rotnet")["runs"]
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
