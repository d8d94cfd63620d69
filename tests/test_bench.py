"""``selfsup bench``: rows and budgets, cells written once and kept, interrupted runs resumed, the report."""

import json
from pathlib import Path

import pytest
import torch

import selfsup
import selfsup.engine.build
from selfsup.bench import bench
from selfsup.bench.cells import cell_names, read_cell
from selfsup.bench.rows import BUDGETS, method_rows, row_config, same_run
from selfsup.cli import main
from selfsup.data import load_data
from selfsup.data.sources import Dataset, ImageSet
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.errors import UserError

DIGITS = load_data("digits")


def test_rows_all_leave_out_what_the_data_cannot_train_and_end_with_the_upper_bound():
    rows = method_rows("all", DIGITS)
    assert rows[-1] == "supervised" and rows.index("rotnet") < rows.index("bownet")  # the teacher first
    unlabeled = Dataset("x", ImageSet(DIGITS.pretrain.images))
    assert "supcon" not in method_rows("all", unlabeled) and "supervised" not in method_rows("all", unlabeled)
    with pytest.raises(UserError, match="needs labels"):
        method_rows("supcon", unlabeled)
    with pytest.raises(UserError, match="unknown method nope"):
        method_rows("simclr,nope", DIGITS)


def test_the_rows_of_the_cpu_budget_are_the_cpu_tables_configs(tmp_path):
    cfg = row_config("ssgan", BUDGETS["cpu"], "cifar10", tmp_path)
    assert (cfg.backbone, cfg.steps, cfg.batch_size) == ("small", 1000, 128)
    assert cfg.method_args == {"generator_width": 0.125}
    assert row_config("mae", BUDGETS["cpu"], "cifar10", tmp_path).backbone == "vit-tiny"
    bownet = row_config("bownet", BUDGETS["cpu"], "cifar10", tmp_path)
    assert bownet.method_args == {"teacher": str(tmp_path / "rotnet")}
    gpu = row_config("simclr", BUDGETS["gpu"], "cifar10", tmp_path)
    assert (gpu.backbone, gpu.epochs, gpu.steps) == ("resnet18", 200, None)
    assert same_run(cfg.to_dict(), cfg) and not same_run({**cfg.to_dict(), "steps": 999}, cfg)


def test_evaluation_names():
    assert cell_names("knn,linear") == ["probe"] and cell_names("finetune,knn") == ["probe", "finetune"]
    with pytest.raises(UserError, match="unknown evaluation dense2"):
        cell_names("knn,dense2")


def test_bench_trains_evaluates_keeps_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    lines, finetunes = [], []
    finetune = selfsup.evaluate.finetune

    def recorded(encoder, train, test, **kw):  # the few-label cell's fine-tunings: subset size and epochs
        finetunes.append((len(train), kw["epochs"]))
        return finetune(encoder, train, test, **kw)

    monkeypatch.setattr(selfsup.evaluate, "finetune", recorded)
    # an interrupted run in the bench folder: the bench resumes it rather than starting over
    cfg = row_config("rotnet", BUDGETS["smoke"], "digits", out)
    selfsup.train(cfg, out / "rotnet", show_progress=False, data=DIGITS, stop_at=10)
    assert load_checkpoint(out / "rotnet")["step"] == 10
    report = bench("rotnet", "digits", "smoke", "knn,linear,few-label", out, say=lines.append)
    ckpt = load_checkpoint(out / "rotnet")
    assert ckpt["finished"] and ckpt["step"] == 30
    assert "resuming" in (out / "rotnet" / "train.log").read_text()
    rows = ["random init", "random rescaled", "rotnet", "supervised"]
    for row in rows:
        probe = read_cell(out, row, "probe")
        assert 0.1 < probe["result"]["knn_top1"] <= 1 and probe["commit"] and "--evaluations knn,linear" in \
            probe["command"]
        few = read_cell(out, row, "few-label")["result"]
        assert list(few) == ["1%", "10%"] and len(few["10%"]["linear_top1"]) == 3
        assert all(len(few[f]["finetune_top1"]) == 3 and 0 < min(few[f]["finetune_top1"]) for f in few)
    # every fine-tuning sees as many images as the budget's epochs over 10%: 1% fine-tunes ten times the epochs
    epochs = BUDGETS["smoke"].finetune_epochs
    small, large = min(n for n, _ in finetunes), max(n for n, _ in finetunes)
    assert len(finetunes) == 4 * 2 * 3 and large > 5 * small
    assert {e for n, e in finetunes if n < 2 * small} == {10 * epochs} and {e for n, e in finetunes if n > 5 *
                                                                           small} == {epochs}
    md = (out / "report.md").read_text()
    for row in rows:
        assert f"| {row} |" in md
    assert "10% labels fine-tune %" in md
    assert report.exists() and (out / "few_label.png").exists() and (out / "time.png").exists()
    assert any("2 left" in line for line in lines)  # the progress view counts down
    # the README's bench section is the report's table, between its markers, with the plots beside it
    import argparse

    from benchmarks.readme import readme_bench

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:smoke -->\nold\n<!-- /bench:smoke -->\nrest\n")
    readme_bench(argparse.Namespace(bench=str(out), budget="smoke", readme=str(readme)))
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n<!-- bench:smoke -->\n") and text.endswith("rest\n")
    assert "| rotnet |" in text and (tmp_path / "benchmarks/results/bench_smoke/few_label.png").exists()
    kept = tmp_path / "benchmarks/results/bench_smoke/cells"
    assert read_cell(kept.parent, "rotnet", "probe") == read_cell(out, "rotnet", "probe")
    # a second bench trains and evaluates nothing: every run finished, every cell kept
    stamps = {p: p.stat().st_mtime_ns for p in [*out.rglob("*.json"), out / "rotnet" / "checkpoint.pt"]}
    bench("rotnet", "digits", "smoke", "knn,linear,few-label", out, say=lines.append)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # a cell asked for later is added to the kept ones
    bench("rotnet", "digits", "smoke", "finetune", out, say=lines.append)
    assert len(read_cell(out, "rotnet", "finetune")["result"]["curve"]) == BUDGETS["smoke"].finetune_epochs
    assert "fine-tune %" in (out / "report.md").read_text()


def test_a_run_of_another_config_is_not_taken_for_the_rows(tmp_path):
    out = tmp_path / "bench"
    cfg = row_config("rotnet", BUDGETS["smoke"], "digits", out)
    cfg.steps = 5
    selfsup.train(cfg, out / "rotnet", show_progress=False, data=DIGITS, evaluate=False)
    with pytest.raises(UserError, match="another run of rotnet"):
        bench("rotnet", "digits", "smoke", "knn", out, say=lambda m: None)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["bench", "--data", "digits", "--budget", "smoke", "--evaluations", "transfer", "--methods", "rotnet",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--transfer" in err[0]
    assert main(["bench", "--data", "digits", "--methods", "rotnet", "--evaluations", "nope",
                 "--out", str(tmp_path)]) == 2
    assert "unknown evaluation nope" in capsys.readouterr().err


def test_a_cell_file_is_json_with_what_reproduces_it(tmp_path):
    from selfsup.bench.cells import write_cell

    write_cell(tmp_path, "random init", "probe", {"result": {"knn_top1": 0.5}})
    path = tmp_path / "cells" / "random-init" / "probe.json"
    assert json.loads(path.read_text())["result"]["knn_top1"] == 0.5 and not list(path.parent.glob("*.tmp"))
    path.write_text("{broken")
    assert read_cell(tmp_path, "random init", "probe") is None  # computed again, not a crash


def test_the_benchmarks_cpu_table_trains_the_benchs_cpu_rows(tmp_path, monkeypatch):
    """The CPU table's runs (benchmarks/cpu.py) are the bench's ``cpu`` rows, so a bench pointed at their folder
    evaluates them instead of training them again."""
    from benchmarks import cpu

    monkeypatch.setattr(cpu, "RUNS", tmp_path)
    for name, (method, _, _) in cpu.CPU_METHODS.items():
        if name == method:
            assert same_run(cpu.method_config(name, "cifar10", 1000, 256).to_dict(),
                            row_config(name, BUDGETS["cpu"], "cifar10", tmp_path)), name


def test_the_dense_cell_fine_tunes_on_the_scenes_at_the_runs_size(monkeypatch):
    from selfsup.bench import cells
    from selfsup.data import dense_sources
    from selfsup.data.dense import from_image_set
    from selfsup.data.scenes import render_scenes

    sizes = []

    def tiny(spec: str, size: int):
        sizes.append((spec, size))
        scenes = render_scenes(12, size=size, seed=1)
        return from_image_set(scenes.subset(torch.arange(8))), from_image_set(scenes.subset(torch.arange(8, 12)))

    monkeypatch.setattr(dense_sources, "load_dense", tiny)
    encoder = selfsup.engine.build.build_method(row_config("rotnet", BUDGETS["smoke"], "digits", Path(".")), 16,
                                                10).encoder()
    ctx = cells.Context(DIGITS, 16, BUDGETS["smoke"], torch.device("cpu"), progress=lambda m: None)
    result = cells.dense(encoder, ctx)
    assert sizes == [("scenes", 16)]
    assert 0 <= result["miou"] <= 1 and 0 <= result["map50"] <= 1
    assert len(result["segmentation_curve"]) == len(result["detection_curve"]) == BUDGETS["smoke"].finetune_epochs
