"""Result tables (plain text / Markdown) and the plots a run folder gets."""

from __future__ import annotations

import csv
from pathlib import Path

import torch


def format_table(header: list[str], rows: list[list], markdown: bool = False) -> str:
    """Align rows under a header; floats print as percentages with one decimal."""
    cells = [[f"{v * 100:.1f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in cells])


def plot_loss(metrics_csv: Path, out: Path) -> None:
    """Training loss (and learning rate) against step, from metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [float(r["lr"]) for r in rows], color="tab:orange", alpha=0.5, label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.set_title(out.parent.name)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_embedding(features: torch.Tensor, labels: torch.Tensor, out: Path, classes: list[str] | None = None,
                   max_points: int = 2000, title: str = "test embeddings (t-SNE)") -> None:
    """A 2-D t-SNE map of (a subsample of) the features, coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(features), generator=g)[:max_points]
    feats = torch.nn.functional.normalize(features[idx].float(), dim=1).numpy()
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, len(idx) / 4), random_state=0).fit_transform(feats)
    lab = labels[idx].numpy()
    n = int(lab.max()) + 1
    fig, ax = plt.subplots(figsize=(5.5, 5))
    # up to 20 classes: distinct colours and a legend; more: a continuous map (no colour repeats) and no legend
    cmap = "tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=lab, cmap=cmap, vmin=0, vmax=max(n - 1, 1), s=6)
    if n <= 20:
        names = classes if classes and len(classes) >= n else [str(i) for i in range(n)]
        handles = [plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i)), label=names[i]) for i in range(n)]
        ax.legend(handles=handles, fontsize=7, loc="best", markerscale=0.8)
    else:
        title += f"\n{n} classes, coloured along one colour map (too many for a legend)"
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


#: the lower bounds' labels and line styles
LOWER_BOUNDS = {"random init": "--", "random rescaled": ":"}


def plot_layers(curves: list[tuple[str, list[str], list[float]]], out: Path, title: str = "",
                xlabel: str = "stage (input -> output)", ylabel: str = "linear probe top-1 %") -> None:
    """The per-layer story as the seeds draw it: linear-probe top-1 against depth, one line per run (``label``,
    its stage names, its scores in [0, 1]); runs labelled ``... random init`` (dashed) or ``... random rescaled``
    (dotted) are lower bounds, in the colour of the run before them (grey when the label is just the bound's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours, colour = iter(plt.get_cmap("tab10").colors * 3), None
    for label, _, values in curves:
        bound = next((b for b in LOWER_BOUNDS if label.endswith(b)), None)  # "RUN: random init": the run's colour
        colour = "grey" if label == bound else colour if bound and colour is not None else next(colours)
        ax.plot(range(1, len(values) + 1), [v * 100 for v in values], marker="o", ls=LOWER_BOUNDS.get(bound, "-"),
                color=colour, alpha=0.6 if bound else 1.0, label=label)
    longest = max(curves, key=lambda c: len(c[1]))[1]
    ax.set_xticks(range(1, len(longest) + 1), longest, rotation=30 if len(longest) > 6 else 0)
    _save(fig, ax, out, xlabel, ylabel, title or "linear probe per stage")


def plot_curves(curves: list[tuple[str, list[float]]], out: Path, title: str = "",
                ylabel: str = "test top-1 %") -> None:
    """Test top-1 against epoch, one line per run (``label``, its per-epoch scores in [0, 1]): pretrained vs from
    scratch as the seeds compare them; labels ending in a lower bound of :data:`LOWER_BOUNDS` (random init, random
    rescaled) are drawn in its line style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, values in curves:
        bound = next((b for b in LOWER_BOUNDS if label.endswith(b)), None)
        ax.plot(range(1, len(values) + 1), [v * 100 for v in values], marker="o" if len(values) < 30 else None,
                ls=LOWER_BOUNDS.get(bound, "-"), label=label)
    _save(fig, ax, out, "epoch", ylabel, title or "fine-tuning")


def plot_heatmap(rows: dict[str, list[float]], columns: list[str], out: Path, title: str) -> None:
    """A row x column table of values >= 0 (``rows``: each row's name and its values, one per column) drawn as a
    heatmap, values written in: e.g. the multi-task lasso's |gate| of every stage, per task."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array(list(rows.values()))
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2, 0.6 * len(rows) + 1.5))
    ax.imshow(values, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), list(rows))
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < values.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _save(fig, ax, out: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid, legend and title ``ax``, write ``fig`` to ``out`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
