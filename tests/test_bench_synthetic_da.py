"""benchmarks/synthetic_da.py (``python benchmarks/run.py synthetic-da``): synthetic multi-task with and without the
adversarial domain term, 2 steps on tiny generated scenes with digits as the real photos, into a temporary results
folder: the JSON, the probes on the real photos' splits, and the Markdown section."""

import json

from benchmarks import common, synthetic_da, tables
from benchmarks.run import parser
from selfsup.data import load_data
from selfsup.data.scenes import scenes


def test_both_variants_and_random_init_are_probed_on_the_real_photos_and_tabled(tmp_path, monkeypatch):
    for module in (tables, common):  # save() writes where tables reads
        monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(synthetic_da, "load_data",
                        lambda spec, size=None: scenes(train=64, test=16, size=16) if spec == "scenes"
                        else load_data(spec, size))
    def run(*extra: str) -> dict:
        args = parser().parse_args(["synthetic-da", "--data", "digits", "--steps", "2", "--batch-size", "8",
                                    "--image-size", "16", "--train-per-class", "5", "--test-per-class", "3",
                                    "--device", "cpu", *extra])
        args.fn(args)
        return json.loads((tmp_path / "results" / "synthetic_da.json").read_text())

    result = run()
    assert (result["train_images"], result["test_images"], result["steps"]) == (50, 30, 2)
    runs = result["runs"]
    assert list(runs) == ["random init", "tasks only", "tasks + adversarial (weight 0.1)"]
    for name, scores in runs.items():
        assert 0.0 <= scores["knn_top1"] <= 1.0 and 0.0 <= scores["linear_top1"] <= 1.0
        assert ("train_seconds" in scores) == (name != "random init")
        # a test split of 30 images: every score is a whole number of hits
        assert abs(scores["knn_top1"] * 30 - round(scores["knn_top1"] * 30)) < 1e-4
    section = (tmp_path / "results" / "README.md").read_text()
    assert "## Synthetic multi-task: does domain adaptation help" in section
    for name, scores in runs.items():
        assert f"| {name} | {100 * scores['knn_top1']:.1f} | {100 * scores['linear_top1']:.1f} |" in section
    # another weight: the variants measured with the same settings are kept, the new one is added
    again = run("--adversarial-weight", "0.1,0.5")["runs"]
    assert list(again) == [*runs, "tasks + adversarial (weight 0.5)"]
    assert all(again[name] == runs[name] for name in ("tasks only", "tasks + adversarial (weight 0.1)"))
