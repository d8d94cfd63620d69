"""torch.distributed on CPU: 2 gloo processes must give what one process gives on the whole batch."""

import json
import os
import subprocess
import sys

import torch

import selfsup
from selfsup.backbones import build_backbone
from selfsup.data import load_data
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.evaluate import probe
from tests.helpers import run_ranks


def cfg(**kw):
    base = dict(method="simclr", data="digits", batch_size=64, image_size=8, steps=4, log_every=2, lr=0.05)
    return selfsup.TrainConfig(**{**base, **kw})


def _train_rank(rank, out, stop_at):
    selfsup.train(cfg(), out, evaluate=False, show_progress=False, stop_at=stop_at)


def _state(path):
    return load_checkpoint(path)["state"]


def assert_same_weights(a, b, atol=2e-5):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def test_two_processes_train_like_one_process_with_the_global_batch(tmp_path):
    torch.set_num_threads(1)
    selfsup.train(cfg(), tmp_path / "one", evaluate=False, show_progress=False)
    run_ranks(_train_rank, 2, tmp_path / "two", None)
    one, two = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert any(not torch.equal(one[k], build_backbone("small").state_dict()[k.removeprefix("backbone.")])
               for k in one if k.startswith("backbone.") and one[k].is_floating_point())
    assert_same_weights(one, two)


def test_a_two_process_run_resumes_as_one_process(tmp_path):
    torch.set_num_threads(1)
    run_ranks(_train_rank, 2, tmp_path / "run", 2)
    assert load_checkpoint(tmp_path / "run")["step"] == 2
    resumed = selfsup.train(cfg(), resume=tmp_path / "run", evaluate=False, show_progress=False)
    assert resumed.metrics["steps"] == 4 and load_checkpoint(tmp_path / "run")["finished"]
    straight = selfsup.train(cfg(), tmp_path / "straight", evaluate=False, show_progress=False)
    assert_same_weights(straight.method.state_dict(), resumed.method.state_dict())


def _train_rank_with_own_time_limit(rank, out):
    """Only rank 1 runs out of time; both must stop at the same log line (or rank 0 would hang)."""
    selfsup.train(cfg(), out, evaluate=False, show_progress=False, time_limit=0.0 if rank == 1 else 60.0)


def test_a_time_limit_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    torch.set_num_threads(1)
    run_ranks(_train_rank_with_own_time_limit, 2, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 2 and not ckpt["finished"]


def _bn_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def _moco_rank(rank, out):
    """MoCo keeps per-rank BN (shuffle BN): each rank's statistics follow its own batches during training."""
    run = selfsup.train(cfg(method="moco", method_args={"queue_size": 128}), out, evaluate=False,
                        show_progress=False)
    torch.save(_bn_stats(run.method), out / f"bn{rank}.pt")


def test_per_rank_batch_norm_statistics_are_averaged_so_every_rank_evaluates_the_saved_model(tmp_path):
    torch.set_num_threads(1)
    run_ranks(_moco_rank, 2, tmp_path / "run")
    ranks = [torch.load(tmp_path / "run" / f"bn{r}.pt") for r in range(2)]
    saved = _bn_stats_of_checkpoint(tmp_path / "run")
    assert ranks[0].keys() == saved.keys() and len(saved) > 0
    for k in saved:
        assert torch.equal(ranks[0][k], ranks[1][k]) and torch.equal(ranks[0][k], saved[k]), k
    # and they did train: not the initial statistics
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in saved.items() if k.endswith("running_mean"))


def _bn_stats_of_checkpoint(path):
    return {k: v for k, v in _state(path).items() if k.endswith(("running_mean", "running_var"))}


def _probe_rank(rank, out):
    torch.manual_seed(0)
    data = load_data("digits")
    scores = probe(build_backbone("small"), data.train, data.test, image_size=8, device="cpu")
    if rank == 0:
        out.write_text(json.dumps(scores))


def test_knn_and_linear_probe_under_two_processes_equal_one(tmp_path):
    torch.manual_seed(0)
    data = load_data("digits")
    single = probe(build_backbone("small"), data.train, data.test, image_size=8, device="cpu")
    run_ranks(_probe_rank, 2, tmp_path / "scores.json")
    two = json.loads((tmp_path / "scores.json").read_text())
    assert two["knn_top1"] == single["knn_top1"]
    assert abs(two["linear_top1"] - single["linear_top1"]) < 1e-6


def test_cli_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFSUP_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "selfsup", "train", "--steps", "4", "--batch-size", "64", "--image-size", "8",
               "--out", str(tmp_path / "run"), "--quiet"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 4 and "knn_top1" in metrics
    assert proc.stdout.count("random init") == 1  # one table, from rank 0


def _tiny_rank(rank, out):
    from selfsup.evaluate import extract_features

    torch.manual_seed(0)
    feats = extract_features(build_backbone("small"), load_data("digits").test.images[:1], image_size=8,
                             device="cpu")
    if rank == 0:
        torch.save(feats, out)


def test_feature_extraction_with_more_processes_than_images(tmp_path):
    from selfsup.evaluate import extract_features

    torch.manual_seed(0)
    single = extract_features(build_backbone("small"), load_data("digits").test.images[:1], image_size=8,
                              device="cpu")
    run_ranks(_tiny_rank, 2, tmp_path / "f.pt")
    torch.testing.assert_close(torch.load(tmp_path / "f.pt"), single)


def test_global_bn_conversion_keeps_statistics_frozen_layers_and_modes():
    from torch import nn

    from selfsup.distributed import GlobalBatchNorm, convert_sync_batchnorm

    student, teacher = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
    teacher.running_mean.fill_(0.5)
    teacher.requires_grad_(False)
    teacher.eval()
    model = convert_sync_batchnorm(nn.ModuleDict(dict(student=nn.Sequential(student), teacher=teacher)))
    assert isinstance(model["student"][0], GlobalBatchNorm) and isinstance(model["teacher"], GlobalBatchNorm)
    assert all(p.requires_grad for p in model["student"].parameters())
    assert not any(p.requires_grad for p in model["teacher"].parameters()) and not model["teacher"].training
    assert torch.equal(model["teacher"].running_mean, torch.full((4,), 0.5))
