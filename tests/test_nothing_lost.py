"""Nothing lost, nobody in: safe checkpoint loading, finite checkpoints only, one run per folder, write failures
as one line with no debris, a run killed during its evaluation completes on resume, config types."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.engine.checkpoint import FILENAME, load_checkpoint
from selfsup.errors import TrainingDiverged, UserError
from tests.helpers import breaks_after

DIGITS = load_data("digits")


def cfg(**kw):
    base = dict(method="simclr", data="digits", batch_size=256, image_size=8, steps=15, log_every=1)
    return TrainConfig(**{**base, **kw})  # 5 steps per epoch: checkpoints at 5, 10, 15


class Evil:
    """Unpickling this object would write a file: a safe loader must refuse it before that."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("command", [["eval", "knn"], ["embed"], ["export"], ["retrieve"], ["train", "--resume"]])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys, command):
    target = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "selfsup-checkpoint", "version": 1, "payload": Evil(target)}, run / FILENAME)
    extra = {"eval": ["--checkpoint", str(run), "--data", "digits"], "embed": ["--checkpoint", str(run), "--data",
             str(tmp_path), "--out", str(tmp_path / "e.npy")], "export": ["--checkpoint", str(run), "--format", "onnx",
             "--out", str(tmp_path / "m.onnx")], "retrieve": ["--checkpoint", str(run), "--data", str(tmp_path),
             "--query", str(tmp_path), "--out", str(tmp_path / "g.png")], "train": [str(run)]}[command[0]]
    assert main(command + extra) == 2
    err = capsys.readouterr().err
    assert "is not a selfsup checkpoint (cannot be read safely" in err and err.count("\n") == 1
    assert not target.exists()


def test_a_checkpoint_like_dict_missing_keys_is_one_line(tmp_path):
    torch.save({"format": "selfsup-checkpoint", "version": 1, "config": {}}, tmp_path / FILENAME)
    with pytest.raises(UserError, match="damaged selfsup checkpoint .*step, state, image_size"):
        load_checkpoint(tmp_path)


def test_a_model_with_infinite_numbers_is_never_checkpointed_and_the_last_finite_one_is_kept(tmp_path):
    with pytest.raises(TrainingDiverged, match="became NaN/inf by step 10.*last good checkpoint"):
        selfsup.train(cfg(), tmp_path / "run", backbone=breaks_after(7, "statistics"), evaluate=False,
                      show_progress=False, data=DIGITS)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 5 and all(torch.isfinite(v).all() for v in ckpt["state"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_second_run_on_a_locked_folder_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    import socket

    (out / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live process holds it
    with pytest.raises(UserError, match=r"another run \(process \d+ on .*\) is writing to"):
        selfsup.train(cfg(steps=2), out, show_progress=False, data=DIGITS, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_the_lock_of_a_dead_run_is_taken_over_and_released_at_the_end(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (out / ".lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    (out / f".{FILENAME}.tmp12345").write_bytes(b"half a checkpoint")  # debris of a killed write
    selfsup.train(cfg(steps=2), out, evaluate=False, show_progress=False, data=DIGITS)
    assert not (out / ".lock").exists() and not (out / f".{FILENAME}.tmp12345").exists()


def test_a_full_disk_is_one_line_with_no_debris_and_the_run_resumes_once_there_is_room(tmp_path, capsys,
                                                                                         monkeypatch):
    real_save, calls = torch.save, []

    def full_at_second(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_second)
    out = tmp_path / "run"
    code = main(["train", "--steps", "15", "--batch-size", "256", "--image-size", "8", "--out", str(out),
                 "--no-eval", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left on device; the previous checkpoint is intact" in err
    assert load_checkpoint(out)["step"] == 5
    assert not any(p.name.startswith(f".{FILENAME}.tmp") or p.name == ".lock" for p in out.iterdir())
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert load_checkpoint(out)["finished"]


def test_an_unwritable_run_folder_is_one_line(tmp_path, capsys, monkeypatch):
    from selfsup.config import TrainConfig as C

    def refuse(self, path):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(C, "save", refuse)
    assert main(["train", "--steps", "2", "--image-size", "8", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to the run folder" in err and "Read-only file system" in err


def test_a_run_killed_during_its_final_evaluation_completes_on_resume(tmp_path, monkeypatch):
    import selfsup.engine.trainer as T

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "scores", killed)
    with pytest.raises(KeyboardInterrupt):
        selfsup.train(cfg(steps=5), tmp_path / "run", show_progress=False, data=DIGITS)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 5 and not ckpt["finished"] and not (tmp_path / "run" / "metrics.json").exists()
    monkeypatch.undo()
    run = selfsup.train(cfg(steps=5), resume=tmp_path / "run", show_progress=False, data=DIGITS)
    assert "knn_top1" in run.metrics and (tmp_path / "run" / "metrics.json").exists()
    assert load_checkpoint(tmp_path / "run")["finished"]


@pytest.mark.parametrize("values, fragment", [
    (dict(lr="fast"), "lr must be a positive number (got 'fast')"),
    (dict(seed="abc"), "seed must be a non-negative integer (got 'abc')"),
    (dict(data=5), "data must be a data set name, folder or wds: spec (got 5)"),
    (dict(steps=True), "steps must be a positive integer (got True)"),
    (dict(batch_size=2.5), "batch_size must be a positive integer (got 2.5)"),
    (dict(method_args=[1, 2]), "method_args must be a mapping of names to values"),
    (dict(augment="strong"), "augment must be a mapping of names to values"),
    (dict(download="yes"), "download must be true or false"),
    (dict(momentum=1.5), "momentum must be a number in [0, 1)"),
    (dict(weight_decay=float("nan")), "weight_decay must be a non-negative number"),
])
def test_config_values_of_the_wrong_type_are_one_line_naming_the_key(tmp_path, values, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        selfsup.train(cfg(**values), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_numbers_that_yaml_reads_as_strings_are_taken(tmp_path):
    run = selfsup.train(cfg(steps=2, lr="1e-2", weight_decay="5e-4"), tmp_path / "run", evaluate=False,
                        show_progress=False, data=DIGITS)
    assert run.config.lr == 0.01 and run.config.weight_decay == 5e-4


def test_a_batch_of_one_image_is_refused(tmp_path):
    with pytest.raises(UserError, match="fewer than 2 images"):
        selfsup.train(cfg(batch_size=1), tmp_path / "run", show_progress=False, data=DIGITS)


def test_a_run_started_with_a_quicker_one_on_the_same_folder_is_refused_once_it_holds_the_lock(tmp_path,
                                                                                                 monkeypatch):
    from selfsup.engine import trainer

    out, real = tmp_path / "run", trainer.build_model

    def quicker_run_finishes_first(*args, **kwargs):  # between this run's checks and its lock
        out.mkdir(exist_ok=True)
        (out / "config.yaml").write_text("the other run's\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_model", quicker_run_finishes_first)
    with pytest.raises(UserError, match="received another run while this one started"):
        selfsup.train(cfg(steps=2), out, evaluate=False, show_progress=False, data=DIGITS)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # untouched, and no lock left behind
    assert (out / "config.yaml").read_text() == "the other run's\n"


def test_a_resume_that_another_process_overtook_is_refused_once_it_holds_the_lock(tmp_path, monkeypatch):
    from selfsup.engine import trainer
    from selfsup.engine.checkpoint import save_checkpoint

    out, real = tmp_path / "run", trainer.build_model
    selfsup.train(cfg(), out, evaluate=False, show_progress=False, data=DIGITS, stop_at=5)

    def other_resume_goes_on(*args, **kwargs):
        ahead = load_checkpoint(out)
        ahead["step"] = 10
        save_checkpoint(out / FILENAME, {k: v for k, v in ahead.items() if k not in ("format", "version")})
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_model", other_resume_goes_on)
    with pytest.raises(UserError, match="went on while this resume started"):
        selfsup.train(cfg(), resume=out, evaluate=False, show_progress=False, data=DIGITS)
    assert load_checkpoint(out)["step"] == 10 and not (out / ".lock").exists()


def test_torchs_full_disk_error_is_named_as_a_full_disk(tmp_path, monkeypatch):
    import shutil

    from selfsup.engine.checkpoint import save_checkpoint

    path = tmp_path / FILENAME
    save_checkpoint(path, {"step": 1, "weights": torch.zeros(1000)})
    before = path.read_bytes()

    def writes_part_then_fails(obj, f, *args, **kwargs):
        open(f, "wb").write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2442624 vs 2442512")

    monkeypatch.setattr(torch, "save", writes_part_then_fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1000))
    with pytest.raises(UserError, match=r"No space left on the device \(0\.0 MB free.*previous checkpoint is intact"):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(1000)})
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME] and path.read_bytes() == before


def test_a_lock_appears_with_its_content_so_no_run_reads_it_half_written(tmp_path, monkeypatch):
    import socket

    from selfsup.engine.runfolder import RunLock

    seen, real_link = [], os.link

    def link(src, dst):  # the moment the lock appears: it must already hold the pid and host
        seen.append((Path(dst).exists(), Path(src).read_text()))
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert seen == [(False, f"{os.getpid()} {socket.gethostname()}\n")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # no temporary file left
    with pytest.raises(UserError, match="another run"):
        RunLock(tmp_path).acquire()
    lock.release()
    assert not list(tmp_path.iterdir())
