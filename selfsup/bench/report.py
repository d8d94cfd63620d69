"""The bench's report, rebuilt from its cell files: Markdown tables (``report.md``), an HTML page with the plots and
the runs' own pictures (``report.html``), every cell traceable to its command and commit."""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from selfsup.bench.cells import read_cell
from selfsup.bench.rows import LOWER
from selfsup.evaluate.report import format_table, plot_curves, plot_layers

#: the pictures of a run folder the page shows per method (t-SNE map, retrieval grid, what the network makes)
RUN_PICTURES = ("embedding.png", "retrieval.png", "outputs.png")


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v * 100:.1f}"


def _mean_std(values: list[float]) -> str:
    mean = f"{statistics.fmean(values) * 100:.1f}"
    return mean if len(values) < 2 else f"{mean} ± {statistics.stdev(values) * 100:.1f}"


def _columns(cells: list[str], fractions: list[str]) -> list[str]:
    cols = {"probe": ["kNN %", "linear %"], "layers": ["best layer %"],
            "few-label": [f"{f} labels {how} %" for f in fractions for how in ("linear", "fine-tune")],
            "finetune": ["fine-tune %"],
            "transfer": ["transfer kNN %", "transfer linear %"], "dense": ["scenes mIoU %", "scenes mAP@0.5 %"]}
    return [c for cell in cells for c in cols[cell]]


def _values(out: Path, row: str, cells: list[str], fractions: list[str]) -> tuple[list[str], set[str]]:
    """The table cells of ``row`` and the commits they came from."""
    values, commits = [], set()
    for cell in cells:
        rec = read_cell(out, row, cell)
        res = rec["result"] if rec else None
        if rec:
            commits.add(rec["commit"])
        if cell in ("probe", "transfer"):
            values += [_pct(res and res["knn_top1"]), _pct(res and res["linear_top1"])]
        elif cell == "layers":
            best = max(res, key=res.get) if res else None
            values.append(f"{res[best] * 100:.1f} ({best})" if res else "")
        elif cell == "few-label":
            values += [_mean_std(res[f][key]) if res and key in res.get(f, {}) else "" for f in fractions
                       for key in ("linear_top1", "finetune_top1")]
        elif cell == "finetune":
            values.append(_pct(res and res["top1"]))
        elif cell == "dense":
            values += [_pct(res and res["miou"]), _pct(res and res["map50"])]
    return values, commits


def _train_seconds(out: Path, row: str) -> float | None:
    try:
        return json.loads((out / row / "metrics.json").read_text())["train_seconds"]
    except (OSError, ValueError, KeyError):
        return None


def _plots(out: Path, rows: list[str], cells: list[str]) -> list[str]:
    """The report's line plots from the cells that exist; returns the files written."""
    written = []
    recs = {c: {r: rec for r in rows if (rec := read_cell(out, r, c))} for c in cells}
    if recs.get("layers"):
        plot_layers([(r, list(x["result"]), list(x["result"].values())) for r, x in recs["layers"].items()],
                    out / "layers.png", "linear probe per stage")
        written.append("layers.png")
    if recs.get("few-label"):
        curves = [(f"{r}{how}", list(x["result"]), [statistics.fmean(v[key]) for v in x["result"].values()])
                  for r, x in recs["few-label"].items() for key, how in (("linear_top1", ""), ("finetune_top1",
                                                                                            " fine-tuned"))
                  if all(key in v for v in x["result"].values())]
        plot_layers(curves, out / "few_label.png", "few labels: linear probe and fine-tuning (mean of 3 draws)",
                    xlabel="fraction of the train labels", ylabel="test top-1 %")
        written.append("few_label.png")
    if recs.get("finetune"):
        plot_curves([(r, x["result"]["curve"]) for r, x in recs["finetune"].items()], out / "finetune.png",
                    "fine-tuning: pretrained vs from scratch (random init) and random rescaled")
        written.append("finetune.png")
    if recs.get("probe"):
        points = [(r, s, x["result"]["linear_top1"]) for r, x in recs["probe"].items()
                  if (s := _train_seconds(out, r)) is not None]
        if points:
            _plot_time(points, out / "time.png")
            written.append("time.png")
    return written


def _plot_time(points: list[tuple[str, float, float]], path: Path) -> None:
    """Linear-probe top-1 against pretraining time, one labelled point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, seconds, top1 in points:
        ax.scatter(seconds / 60, top1 * 100)
        ax.annotate(name, (seconds / 60, top1 * 100), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="pretraining minutes (log)", ylabel="linear probe top-1 %", title="accuracy vs training time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, rows: list[str], cells: list[str]) -> Path:
    """``report.md`` and ``report.html`` from the cells in ``out``; returns the HTML page's path."""
    few = next((read_cell(out, r, "few-label") for r in rows if read_cell(out, r, "few-label")), None)
    fractions = list(few["result"]) if few else []
    header = ["method", *_columns(cells, fractions), "pretrain min", "commit"]
    table = []
    for row in rows:
        values, commits = _values(out, row, cells, fractions)
        seconds = _train_seconds(out, row)
        minutes = "" if seconds is None else f"{seconds / 60:.{0 if seconds >= 600 else 1}f}"
        table.append([row, *values, minutes, ", ".join(sorted(commits))])
    commands = [(r, c, rec["command"]) for r in rows for c in cells if (rec := read_cell(out, r, c))]
    plots = _plots(out, rows, cells)
    md = ["# selfsup bench", "", f"Lower bounds: {' and '.join(LOWER)} (the budget's backbone at its initial "
          "weights, seed 0); upper bound: supervised. Each cell's JSON (result, command, commit, seconds) is in "
          "`cells/<method>/<evaluation>.json`.", "", format_table(header, table, markdown=True), ""]
    md += [f"![{p}]({p})" for p in plots] + ["", "## Commands", ""] + [f"- {r}, {c}: `{cmd}`" for r, c, cmd in commands]
    (out / "report.md").write_text("\n".join(md) + "\n")
    pictures = "".join(
        f"<h3>{html.escape(r)}</h3>" + "".join(f'<img src="{r}/{p}" height="260">' for p in RUN_PICTURES
                                               if (out / r / p).exists())
        for r in rows if any((out / r / p).exists() for p in RUN_PICTURES))
    page = ("<!doctype html><meta charset='utf-8'><title>selfsup bench</title><style>body{font-family:sans-serif}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style>"
            "<h1>selfsup bench</h1>" + _html_table(header, table)
            + "".join(f'<p><img src="{p}"></p>' for p in plots) + "<h2>The runs</h2>" + pictures
            + "<h2>Commands</h2><ul>" + "".join(f"<li>{html.escape(r)}, {c}: <code>{html.escape(cmd)}</code></li>"
                                                for r, c, cmd in commands) + "</ul>")
    (out / "report.html").write_text(page)
    return out / "report.html"
