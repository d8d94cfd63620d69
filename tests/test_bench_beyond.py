"""benchmarks/beyond.py (``python benchmarks/run.py beyond``): a video row and an image-text row, 2 steps each on
tiny generated sets, into a temporary results folder: the JSON rows, the Markdown table, and the resume."""

import json

import pytest

import selfsup
from benchmarks import beyond, common, tables
from benchmarks.run import parser
from selfsup.data.moving_objects import moving_objects
from selfsup.data.scenes import scenes
from selfsup.engine.build import method_from_checkpoint
from selfsup.evaluate import probe

ROWS = "tracking,clip,supervised"


def tiny(spec: str, image_size: int | None = None):
    """The rows' data sets, small: 100 clips and 200 scenes at 16 px."""
    if spec.startswith("moving-objects"):
        return moving_objects(clips_per_class=25, size=16, labels=spec.partition(":")[2] or "object")
    return scenes(train=160, test=40, size=16)


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """``run.py beyond`` with its results and runs under tmp_path; returns a function running its command line."""
    for module in (tables, common):  # save() writes where tables reads
        monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(beyond, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(beyond, "load_data", tiny)

    def run(*argv: str) -> dict:
        args = parser().parse_args(["beyond", *argv])
        args.fn(args)
        return json.loads((tmp_path / "results" / "beyond.json").read_text())

    return run


def test_rows_are_written_with_their_probes_and_tabled_and_a_rerun_resumes(bench, tmp_path, monkeypatch):
    result = bench("--rows", ROWS, "--steps", "2")
    runs = result["runs"]
    assert list(runs) == ROWS.split(",")
    for name, row in runs.items():
        data, method, method_args, extra = beyond.BEYOND_ROWS[name]
        assert (row["data"], row["method"], row["method_args"]) == (data, method, method_args)
        assert (row["steps"], row["batch_size"], row["image_size"]) == (2, extra["batch_size"], 16)
        assert row["samples_per_second"] > 0 and row["train_seconds"] > 0 and row["commit"]
        for scores in (row, *row["other_labels"].values()):
            assert all(0 <= scores[p + k] <= 1 for p in ("", "random_init_") for k in ("knn_top1", "linear_top1"))
    assert set(runs["tracking"]["other_labels"]) == {"motion", "motion, 8 frames"}
    assert runs["clip"]["other_labels"] == {}
    assert 0 <= runs["clip"]["zero_shot_top1"] <= 1 and "zero_shot_top1" not in runs["tracking"]
    assert runs["supervised"]["method"] == "supervised" and runs["supervised"]["data"] == "moving-objects"
    for row in runs.values():  # a probe on every stage, trained and at random init
        assert list(row["stages"]) == list(row["random_init_stages"]) == ["block1", "block2", "block3", "block4"]
        assert all(0 <= v <= 1 for v in (*row["stages"].values(), *row["random_init_stages"].values()))

    # the motion column's random init is the network the engine's own random-init probe saw
    shapes = tiny("moving-objects")
    initial = method_from_checkpoint(tmp_path / "runs" / "tracking", trained=False)[0].encoder()
    lower = probe(initial, shapes.train, shapes.test, image_size=16, device="cpu")
    assert {k: runs["tracking"][f"random_init_{k}"] for k in lower} == lower
    # the motion labels are not the shape labels: the probes on them are their own
    motion = tiny("moving-objects:motion")
    assert not (motion.test.labels == shapes.test.labels).all()
    assert runs["tracking"]["other_labels"]["motion"]["random_init_knn_top1"] == probe(
        initial, motion.train, motion.test, image_size=16, device="cpu")["knn_top1"]
    assert runs["tracking"]["other_labels"]["motion, 8 frames"]["random_init_linear_top1"] == probe(
        initial, motion.train, motion.test, image_size=16, device="cpu", frames="all")["linear_top1"]

    md = (tmp_path / "results" / "README.md").read_text()
    assert "## Beyond one image" in md and "### `moving-objects`" in md and "### `scenes`" in md
    track = next(line for line in md.splitlines() if line.startswith("| tracking |"))
    m = runs["tracking"]["other_labels"]["motion"]
    assert f"{100 * m['knn_top1']:.1f} ({100 * m['random_init_knn_top1']:.1f})" in track
    assert "motion: kNN %" in md and "zero-shot %" in md and "best layer %" in md
    best = max(runs["tracking"]["stages"], key=runs["tracking"]["stages"].get)
    assert f"| {100 * runs['tracking']['stages'][best]:.1f} {best} (" in track
    clip = next(line for line in md.splitlines() if line.startswith("| clip |"))
    assert f"| {100 * runs['clip']['zero_shot_top1']:.1f} | 2 | 128 | 16 |" in clip

    def untrainable(*args, **kwargs):
        raise AssertionError("a row already in the JSON was trained again")

    monkeypatch.setattr(selfsup, "train", untrainable)
    assert bench("--rows", ROWS, "--steps", "2")["runs"] == runs  # resumed: nothing left to run
    # a row measured before the per-stage probes gets them from its kept run, without training again
    result = json.loads((tmp_path / "results" / "beyond.json").read_text())
    for key in ("stages", "random_init_stages"):
        del result["runs"]["tracking"][key]
    common.save(result, "beyond")
    again = bench("--rows", "tracking", "--steps", "2")["runs"]["tracking"]
    assert again["stages"] == pytest.approx(runs["tracking"]["stages"], abs=1e-6)
    assert again["random_init_stages"] == pytest.approx(runs["tracking"]["random_init_stages"], abs=1e-6)


def test_unknown_rows_are_refused(bench):
    with pytest.raises(SystemExit, match="unknown --rows nope"):
        bench("--rows", "tracking,nope")
