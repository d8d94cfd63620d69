"""Bad input gets one clear line on stderr, exit code 2, no traceback, and nothing overwritten."""

import subprocess
import sys

import pytest
import torch

from selfsup.cli import main
from selfsup.methods import METHODS
from tests.helpers import class_folder, write_images

QUICK = ["--steps", "2", "--batch-size", "8", "--quiet", "--no-eval"]


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err.strip()


def assert_one_line_error(capsys, args, fragment):
    code, err = run_cli(capsys, *args)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert fragment in err, err


@pytest.mark.parametrize("args, fragment", [
    (["train", "--method", "nope"], "unknown method 'nope'"),
    (["train", "--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    (["train", "--data", "imagenet21k"], "unknown dataset 'imagenet21k'"),
    (["train", "--steps", "0"], "steps must be a positive integer"),
    (["train", "--epochs", "-3"], "epochs must be a positive integer"),
    (["train", "--lr", "0"], "lr must be a positive number"),
    (["train", "--lr", "-1"], "lr must be a positive number"),
    (["train", "--optimizer", "rmsprop"], "optimizer must be one of sgd, lars, adam, adamw"),
    (["train", "--backbone", "timm:resnet_nope"], "unknown timm model 'resnet_nope'"),
    (["train", "--method", "deepcluster", "--method-arg", "num_clusters=5000"], "5000 clusters is more than"),
    (["train", "--method", "ssgan", "--method-arg", "n_dis=0"], "n_dis (discriminator phases per step) must be"),
    (["train", "--batch-size", "5000", "--steps", "1"], "larger than the dataset (1347 images)"),
    (["train", "--not-a-flag"], "unrecognized arguments"),
    (["train", "--steps", "1", "--epochs", "1"], "not allowed with argument"),
])
def test_bad_train_arguments(capsys, tmp_path, args, fragment):
    assert_one_line_error(capsys, args + ["--out", str(tmp_path / "run")], fragment)
    assert not (tmp_path / "run").exists()


def test_missing_empty_and_imageless_folders(capsys, tmp_path):
    assert_one_line_error(capsys, ["train", "--data", str(tmp_path / "absent")], "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(capsys, ["train", "--data", str(tmp_path / "empty")], "no images found")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello")
    assert_one_line_error(capsys, ["train", "--data", str(tmp_path / "text")], "no images found")


def test_corrupt_images_are_skipped_counted_and_reported_once(capsys, tmp_path):
    root = class_folder(tmp_path / "data", classes=2, per_class=8)
    (root / "class0" / "broken.png").write_bytes(b"not a png at all")
    good = write_images(tmp_path / "tmp", 1)[0].read_bytes()
    (root / "class1" / "truncated.png").write_bytes(good[: len(good) // 2])
    code, err = run_cli(capsys, "train", "--data", str(root), "--out", str(tmp_path / "run"), *QUICK)
    assert code == 0, err
    assert err.count("skipped 2 unreadable image(s)") == 1


def test_unknown_config_key_is_named(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: simclr\nbatchsize: 12\n")
    assert_one_line_error(capsys, ["train", "--config", str(cfg)], "unknown key batchsize")


def test_config_of_a_run_replays_it(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--out", str(tmp_path / "a"), "--image-size", "8", *QUICK)
    assert code == 0, err
    code, err = run_cli(capsys, "train", "--config", str(tmp_path / "a" / "config.yaml"), "--out",
                        str(tmp_path / "b"), "--quiet", "--no-eval")
    assert code == 0, err
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["config"] == b["config"]
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def test_output_folder_with_a_run_is_refused_and_untouched(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", str(out), "--image-size", "8", *QUICK)[0] == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert_one_line_error(capsys, ["train", "--out", str(out), *QUICK], "holds another run")
    assert (out / "checkpoint.pt").read_bytes() == before
    again = ["train", "--out", str(out), "--overwrite", "--image-size", "8", "--seed", "1", *QUICK]
    assert run_cli(capsys, *again)[0] == 0
    assert (out / "checkpoint.pt").read_bytes() != before


def test_resume_of_a_finished_run_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", str(out), "--image-size", "8", *QUICK)[0] == 0
    assert_one_line_error(capsys, ["train", "--resume", str(out)], "already finished")


def test_time_limit_then_resume(capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--image-size", "8", "--time-limit", "0", *QUICK, "--steps", "20"])
    printed = capsys.readouterr().out
    assert code == 0 and f"continue with selfsup train --resume {out}" in printed, printed
    assert run_cli(capsys, "train", "--resume", str(out))[0] == 0
    assert_one_line_error(capsys, ["train", "--resume", str(out)], "already finished")


def test_checkpoint_that_is_not_ours(capsys, tmp_path):
    foreign = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert_one_line_error(capsys, ["eval", "knn", "--checkpoint", str(foreign), "--data", "digits"],
                          "is not a selfsup checkpoint")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01garbage")
    assert_one_line_error(capsys, ["eval", "linear", "--checkpoint", str(garbage), "--data", "digits"],
                          "is not a selfsup checkpoint")
    assert_one_line_error(capsys, ["train", "--resume", str(foreign)], "is not a selfsup checkpoint")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(capsys, tmp_path):
    assert_one_line_error(capsys, ["train", "--device", "cuda", "--out", str(tmp_path / "r")], "no CUDA GPU")


def test_supervised_needs_labels(capsys, tmp_path):
    flat = tmp_path / "flat"
    write_images(flat, 10)
    assert_one_line_error(capsys, ["train", "--method", "supervised", "--data", str(flat), *QUICK], "needs labels")


def test_methods_lists_every_method_with_its_paper(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("simclr", "byol", "rotnet", "supervised"):
        assert name in out
    assert "ICML 2020" in out and "NeurIPS 2020" in out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_name_prints_the_options_with_their_defaults(capsys, name):
    from selfsup.engine.build import method_options

    assert main(["methods", name]) == 0
    out = capsys.readouterr().out
    assert METHODS[name].paper in out
    for key, default in method_options(METHODS[name]).items():
        assert f"  {key} = {default!r}" in out


def test_method_arg_and_augment_flags_reach_the_run(capsys, tmp_path):
    import yaml

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--image-size", "8", "--method", "npid", "--method-arg", "loss=nce",
            "--method-arg", "temperature=0.5", "--augment", "crop_scale=[0.2, 1.0]", "--augment", "gray_p=0", *QUICK]
    assert run_cli(capsys, *args)[0] == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method_args"] == {"loss": "nce", "temperature": 0.5}
    assert cfg["augment"]["crop_scale"] == [0.2, 1.0] and cfg["augment"]["gray_p"] == 0


@pytest.mark.parametrize("flags,fragment", [
    (["--method-arg", "temperature"], "--method-arg takes KEY=VALUE"),
    (["--method-arg", "depth=3"], "has no option(s) depth"),
    (["--augment", "crop_scale=[0.2"], "cannot read the value"),
    (["--augment", "zoom=2"], "unknown augment option(s) zoom"),
])
def test_bad_method_arg_or_augment_is_one_line(capsys, tmp_path, flags, fragment):
    assert_one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *flags, *QUICK], fragment)
    assert not (tmp_path / "run").exists()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "selfsup", "train", "--method", "nope"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"selfsup: error: unknown method 'nope'; choose one of: {', '.join(METHODS)}"


def test_eval_of_several_runs_shows_each_next_to_its_own_random_init_and_rescaled_with_its_backbone(tmp_path, capsys):
    for name, backbone in (("a", "small"), ("b", "nin")):
        assert main(["train", "--steps", "2", "--image-size", "8", "--backbone", backbone, "--no-eval", "--quiet",
                     "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "a"), "--checkpoint", str(tmp_path / "b"),
                 "--data", "digits"]) == 0
    out = capsys.readouterr()
    rows = [line for line in out.out.splitlines() if "px" in line]
    assert [" ".join(r.split()[:2]) for r in rows] == ["simclr (a)", "random init", "random rescaled", "simclr (b)",
                                                        "random init", "random rescaled"]
    assert all("small, 8 px" in r for r in rows[:3]) and all("nin, 8 px" in r for r in rows[3:])
    assert "knn: simclr (b) (nin, 8 px)" in out.err  # a line per row while it works


def test_eval_layers_draws_a_curve_per_run_and_per_random_init(tmp_path, capsys, monkeypatch):
    from selfsup.evaluate import report

    assert main(["train", "--steps", "2", "--image-size", "8", "--no-eval", "--quiet", "--out",
                 str(tmp_path / "a")]) == 0
    drawn = {}
    real = report.plot_layers
    monkeypatch.setattr(report, "plot_layers", lambda curves, out, title: drawn.update(curves=curves) or
                        real(curves, out, title))
    assert main(["eval", "layers", "--checkpoint", str(tmp_path / "a"), "--data", "digits", "--plot",
                 str(tmp_path / "layers.png")]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines() if "px" in line]
    (run, stages, values), (lower, lower_stages, lower_values), (rescaled, *_) = drawn["curves"]
    assert run == "simclr (a)" and lower == "simclr (a): random init" and stages == lower_stages
    assert rescaled == "simclr (a): random rescaled"
    assert [f"{v * 100:.1f}" for v in values] == table[0][-len(stages):]  # the plotted values are the table's
    assert [f"{v * 100:.1f}" for v in lower_values] == table[1][-len(stages):]
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert_one_line_error(capsys, ["eval", "knn", "--checkpoint", str(tmp_path / "a"), "--data", "digits", "--plot",
                                   str(tmp_path / "k.png")], "--plot draws the per-stage curves")


def tiny_run(tmp_path, monkeypatch) -> str:
    """A 2-step run of a quarter-width small convnet on 8 px digits; its random rescaled row keeps its random init
    (rescaling is tested in test_rescale.py and takes seconds)."""
    from selfsup.evaluate import rescale

    monkeypatch.setattr(rescale, "random_rescaled", lambda net, *args, **kwargs: net)
    (tmp_path / "tiny.yaml").write_text("backbone_args: {width: 0.25}\n")
    run = str(tmp_path / "a")
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--steps", "2", "--image-size", "8", "--no-eval",
                 "--quiet", "--out", run]) == 0
    return run


def test_eval_few_label_shows_each_fraction_for_each_run_and_its_lower_bounds_and_refuses_bad_subsets(tmp_path, capsys,
                                                                                                       monkeypatch):
    run = tiny_run(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["eval", "few-label", "--checkpoint", run, "--data", "digits", "--fraction", "0.02,0.05", "--draws",
                 "2", "--finetune", "--epochs", "1"]) == 0
    out = capsys.readouterr()
    rows = [line.split() for line in out.out.splitlines() if "px" in line]
    assert [(" ".join(r[:2]), r[-10]) for r in rows] == [("simclr (a)", "2%"), ("simclr (a)", "5%"),
                                                          ("random init", "2%"), ("random init", "5%"),
                                                          ("random rescaled", "2%"), ("random rescaled", "5%")]
    assert all(r.count("±") == 3 for r in rows), out.out  # kNN, linear, fine-tune: mean ± std over 2 draws
    assert "mean ± std over 2 class-balanced draws" in out.out and "draw 2 of 2" in out.err
    base = ["eval", "few-label", "--checkpoint", run, "--data", "digits"]
    assert_one_line_error(capsys, base + ["--fraction", "0"], "must be fractions in (0, 1]")
    assert_one_line_error(capsys, base + ["--fraction", "1.5"], "must be fractions in (0, 1]")
    assert_one_line_error(capsys, base + ["--fraction", "0.001"], "--fraction 0.001 leaves class")
    assert_one_line_error(capsys, base + ["--draws", "0"], "argument --draws: must be a positive integer")
    assert_one_line_error(capsys, base + ["--fraction", "0.1", "--per-class", "3"], "not allowed with argument")
    flat = tmp_path / "flat"
    write_images(flat, 10)
    assert_one_line_error(capsys, ["eval", "few-label", "--checkpoint", run, "--data", str(flat)],
                          "has no labeled train and test splits")


def test_eval_knn_over_frames_of_clips_and_its_errors(tmp_path, capsys, monkeypatch):
    run = tiny_run(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["eval", "linear", "--checkpoint", run, "--data", "moving-objects:motion", "--frames", "0,7"]) == 0
    out = capsys.readouterr().out
    assert "linear top-1 % (frames 0,7)" in out and len([line for line in out.splitlines() if "px" in line]) == 3
    base = ["eval", "knn", "--checkpoint", run]
    assert_one_line_error(capsys, base + ["--data", "moving-objects", "--frames", "0,x"], "must be 'all' or frame")
    assert_one_line_error(capsys, base + ["--data", "digits", "--frames", "all"], "a probe over frames needs clips")
    assert_one_line_error(capsys, ["eval", "layers", "--checkpoint", run, "--data", "moving-objects", "--frames",
                                   "all"], "--frames is an option of 'eval knn' and 'eval linear'")


def test_eval_finetune_reports_top1_and_draws_a_curve_per_row(tmp_path, capsys, monkeypatch):
    from selfsup.evaluate import report

    run = tiny_run(tmp_path, monkeypatch)
    drawn = {}
    real = report.plot_curves
    monkeypatch.setattr(report, "plot_curves", lambda curves, out, title: drawn.update(curves=curves) or
                        real(curves, out, title))
    capsys.readouterr()
    assert main(["eval", "finetune", "--checkpoint", run, "--data", "digits", "--epochs", "2", "--lr", "0.1",
                 "--plot", str(tmp_path / "curve.png")]) == 0
    out = capsys.readouterr()
    table = [line.split() for line in out.out.splitlines() if "px" in line]
    assert [" ".join(r[:2]) for r in table] == ["simclr (a)", "random init", "random rescaled"]
    names = [name for name, _ in drawn["curves"]]
    assert names == ["simclr (a)", "simclr (a): random init", "simclr (a): random rescaled"]
    assert all(len(curve) == 2 for _, curve in drawn["curves"])
    assert [f"{c[-1] * 100:.1f}" for _, c in drawn["curves"]] == [r[-1] for r in table]  # the table's last epoch
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch 2/2: train loss" in out.err
    assert main(["eval", "finetune", "--checkpoint", run, "--data", "digits", "--epochs", "1", "--init",
                 "random"]) == 0
    assert [line.split()[:4] for line in capsys.readouterr().out.splitlines() if "px" in line] == [
        ["simclr", "(a):", "random", "init"]]
    assert_one_line_error(capsys, ["eval", "finetune", "--checkpoint", run, "--data", "digits", "--init", "best"],
                          "invalid choice: 'best'")
    assert_one_line_error(capsys, ["eval", "finetune", "--checkpoint", run, "--data", "digits", "--plot",
                                   str(tmp_path / "c.pdf")], "--plot draws the fine-tuning curves into a .png")
