"""benchmarks/cpu.py on the CPU table's kept runs, 2 steps on a few hundred digits into a temporary results and runs
folder. ``cpu-layers``: the stages equal a direct probe, a row fed other inputs gets its own random-init stages, a
measured row is not probed again, and the Markdown section shows every row. ``cpu-fid``: every generative row's FID
in one kept run's features, as ``selfsup eval fid`` computes it."""

import json

import pytest
import torch

from benchmarks import common, cpu, tables
from benchmarks.run import parser
from selfsup import evaluate
from selfsup.data import load_data
from selfsup.data.sources import Dataset
from selfsup.engine.build import method_from_checkpoint
from selfsup.use.fid import feature_network, sample_fid


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """``run.py`` with its results and runs under tmp_path, on 256 + 100 digits; returns (run, data)."""
    for module in (tables, common):  # save() writes where tables reads
        monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(cpu, "RUNS", tmp_path / "runs")
    digits = load_data("digits")  # a few hundred of them keep the probes to seconds
    first = lambda images, n: images.subset(torch.arange(n))  # noqa: E731
    data = Dataset("digits", pretrain=first(digits.pretrain, 256), train=first(digits.train, 256),
                   test=first(digits.test, 100))
    monkeypatch.setattr(cpu, "load_data", lambda spec, size=None: data)

    def run(*argv: str) -> dict:
        args = parser().parse_args(argv)
        args.fn(args)
        return json.loads((tmp_path / "results" / "cpu_methods.json").read_text())

    return run, data


def test_every_stage_of_the_kept_runs_is_probed_and_tabled(bench, tmp_path):
    run, data = bench
    run("cpu-methods", "--data", "digits", "--steps", "2", "--batch-size", "16", "--methods", "simclr,colorization")
    with pytest.raises(SystemExit, match="no finished run .* for rotnet"):
        run("cpu-layers", "--data", "digits", "--methods", "rotnet")
    result = run("cpu-layers", "--data", "digits", "--methods", "simclr,colorization")
    encoder = method_from_checkpoint(tmp_path / "runs" / "colorization")[0].encoder()
    direct = evaluate.layers(encoder, data.train, data.test, device="cpu")
    runs = result["runs"]
    assert runs["colorization"]["stages"] == pytest.approx(direct, abs=2 / len(data.test))
    assert list(result["random_init_stages"]) == list(direct) and len(direct) > 1
    # colourisation's trunk sees the L channel: its own lower bound; SimCLR's is the table's trunk
    assert "random_init_stages" in runs["colorization"] and "random_init_stages" not in runs["simclr"]
    section = (tmp_path / "results" / "README.md").read_text()
    assert "## Linear probe per stage of the CPU table's runs" in section
    for name in ("simclr", "colorization", "colorization: its encoder at random init", "random init (the table's"):
        assert f"| {name}" in section
    # measured rows are kept: a marker in the JSON survives a second call without --force
    runs["simclr"]["stages"] = {k: 0.5 for k in runs["simclr"]["stages"]}
    common.save(result, "cpu_methods")
    again = run("cpu-layers", "--data", "digits", "--methods", "simclr")
    assert set(again["runs"]["simclr"]["stages"].values()) == {0.5}


def test_generative_rows_get_their_fid_in_one_kept_runs_features(bench, tmp_path):
    run, data = bench
    run("cpu-methods", "--data", "digits", "--steps", "2", "--batch-size", "16", "--methods", "simclr,ssgan")
    with pytest.raises(SystemExit, match="no finished run .* for rotnet"):
        run("cpu-fid", "--data", "digits", "--methods", "ssgan")  # the default features: the RotNet row's run
    result = run("cpu-fid", "--data", "digits", "--methods", "ssgan", "--features", "simclr", "--samples", "50")
    row = result["runs"]["ssgan"]
    net, size, _ = feature_network(str(tmp_path / "runs" / "simclr"))
    expected = sample_fid(method_from_checkpoint(tmp_path / "runs" / "ssgan")[0], data.test, net, size, 50)
    assert row["fid"] == pytest.approx(expected, abs=0.01) and row["fid_samples"] == 50
    assert row["fid_features"].startswith("the simclr row's network")
    assert f"ssgan {row['fid']:.1f}" in (tmp_path / "results" / "README.md").read_text()
