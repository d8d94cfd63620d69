"""benchmarks/host.py: every CIFAR-10 recipe's ATen ops per step, counted through the engine's Stepper (every phase)
and the method's after_step, after the trainer's epoch hook; and its table in benchmarks/results/README.md."""

import pytest
import torch

import selfsup.data.ops.base
from benchmarks.host import _OpCounter, count_steps, engine_for, gpu_code_path, recipe_config, recipe_ops, tiny_data
from benchmarks.tables import _recipe_ops_lines, recipe_total
from selfsup.methods import Batch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # as the benchmark counts (conftest restores the default after each test)


def _parts(row: dict) -> int:
    return sum(p["forward"] + p["backward"] + p["step"] for p in row["phases"]) + row["after_step"]


def test_a_one_phase_step_is_cut_where_its_forward_and_backward_are(tmp_path):
    cfg, why = recipe_config("rotnet", 8, tmp_path)
    assert why == {}
    with gpu_code_path():
        loop = engine_for(cfg, tiny_data(64), tmp_path)
        row = count_steps(loop)
        assert row["method"] == "rotnet" and [p["optimizer"] for p in row["phases"]] == ["main"]
        assert row["total"] == _parts(row) and row["phases"][0]["step"] > 0
        # the same step, counted by hand: its forward, then its backward from cleared gradients
        images = loop.images[:8]
        batch = Batch(images, loop.labels[:8], torch.arange(8), torch.Generator().manual_seed(5), 0.5)
        loop.optimizers["main"].zero_grad(set_to_none=True)
        with _OpCounter() as forward:
            loss = loop.method(batch)
        with _OpCounter() as backward:
            loss.backward()
    assert (forward.n, backward.n) == (row["phases"][0]["forward"], row["phases"][0]["backward"])
    assert not selfsup.data.ops.base.accelerated(torch.zeros(1))  # the CPU's own code path again


def test_a_gan_recipe_counts_each_phase_and_they_add_up_to_the_step(tmp_path):
    row = recipe_ops("ssgan", 8, tmp_path)
    assert [p["optimizer"] for p in row["phases"]] == ["discriminator", "discriminator", "generator"]  # n_dis: 2
    first, second, generator = row["phases"]
    assert first == second  # the same work on the other half of the batch
    assert generator["forward"] > 0 and generator["backward"] > 0 and generator["step"] > 0
    assert recipe_total(row) == row["total"] == _parts(row)
    assert "overrides" not in row


def test_the_epoch_hook_runs_before_the_counted_steps_and_overrides_are_said(tmp_path):
    cfg, why = recipe_config("exemplar", 8, tmp_path)
    assert why["overrides"] == {"seeds": 256} and "4000" in why["note"] and cfg.method_args["seeds"] == 256
    with gpu_code_path():
        loop = engine_for(cfg, tiny_data(), tmp_path)
        assert (loop.method.seed_class < 0).all()
        row = count_steps(loop)
    assert (loop.method.seed_class >= 0).all() and loop.weights is not None  # seeds drawn, sampling set by the hook
    assert row["total"] == _parts(row) > 0


def test_the_table_has_a_row_per_recipe_most_ops_first_with_phases_and_old_rows():
    gan = dict(method="ssgan", total=31, after_step=1, phases=[
        dict(optimizer="discriminator", forward=5, backward=3, step=2)] * 2 + [
        dict(optimizer="generator", forward=4, backward=3, step=3)])
    exemplar = dict(method="exemplar", total=20, after_step=0, overrides={"seeds": 256}, note="too few images",
                    phases=[dict(optimizer="main", forward=10, backward=8, step=2)])
    tasks = dict(exemplar, method="multi-task", total=19, overrides={"task_args": {"exemplar": {"seeds": 256}}})
    old = dict(forward=20, backward=10, optimizer_and_after_step=6)  # a row from before the engine's Stepper
    recipes = {"exemplar": exemplar, "ssgan": gan, "simclr": old, "multi-task": tasks}
    history = {"abc": dict(simclr=36, moco=99), "def": dict(simclr=36, ssgan=31, exemplar=20)}
    r = dict(batch=8, image_size=32, recipe_images=256, recipe_ops_per_step=recipes, recipe_history=history)
    text = "\n".join(_recipe_ops_lines(r))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split("|")[1].strip() for line in rows[1:5]] == ["simclr", "ssgan", "exemplar", "multi-task"]
    assert "| ssgan | ssgan | 31 | 14 | 9 | 8 | discriminator 2 x 10 + generator 10 |" in text
    assert "| exemplar | exemplar | 20 | 10 | 8 | 2 |  | seeds=256 |" in text
    assert "| multi-task | multi-task | 19 | 10 | 8 | 2 |  | task_args.exemplar.seeds=256 |" in text
    assert "exemplar / multi-task: too few images" in text  # a note said once for the recipes it holds for
    assert "| moco | 99 |  |" in text  # a recipe only an old commit counted keeps its row
