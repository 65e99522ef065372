"""Report plots (PNG) with matplotlib's Agg canvas: no display, no pyplot global state.

The building blocks are data-only: a :class:`Series` is one labelled line, a :class:`Panel` one
set of axes, and :func:`plot_panels` draws panels side by side into a PNG with labelled axes and
each panel's legend below its axes (never over the data). :func:`plot_report` is the demo's
report built from model-version metadata; other reports (e.g. a prequential evaluation over
time) build their own panels and call :func:`plot_panels`.

>>> plot_panels([Panel("held-out Recall@10", "version", "Recall@10",
...                    [Series("model", [1, 2], [0.42, 0.43])], integer_x=True)],
...             "recall.png")                                             # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# the objective's name in titles: what it minimises and how (docs/notation.md)
OBJECTIVE_NAMES = {
    "squared": "squared loss on observed scores (the original matrix-completion objective, ALS)",
    "implicit": "confidence-weighted squared loss over all cells (weighted ALS)",
    "bce": "binary cross-entropy, sampled negatives (sparse Adagrad)",
}


@dataclass
class Series:
    """One line: ``label`` in the legend, points ``(xs[k], ys[k])``; None values are skipped.

    ``style`` is passed to matplotlib's ``Axes.plot`` (e.g. ``{"linestyle": "--"}``)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    style: dict = field(default_factory=dict)


@dataclass
class Panel:
    """One set of axes. ``integer_x`` puts ticks on whole numbers only (versions, sweeps);
    ``y_from_zero`` starts the y axis at 0 (metrics, where the distance from 0 matters)."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    integer_x: bool = False
    y_from_zero: bool = False


def plot_panels(panels: Sequence[Panel], path, *, title: str | None = None,
                panel_size: tuple[float, float] = (5.0, 4.2), dpi: int = 110) -> Path:
    """Draw ``panels`` side by side (:func:`draw_panels`) into the PNG at ``path``; return it."""
    fig = draw_panels(panels, title=title, panel_size=panel_size, dpi=dpi)
    path = Path(path)
    fig.savefig(path)
    return path


def draw_panels(panels: Sequence[Panel], *, title: str | None = None,
                panel_size: tuple[float, float] = (5.0, 4.2), dpi: int = 110):
    """A matplotlib ``Figure`` (Agg canvas) with one axes per panel, side by side.

    Each panel's legend sits below its axes, so no line runs through it; a panel without data
    says so instead of drawing empty axes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(panels))
    fig = Figure(figsize=(panel_size[0] * n, panel_size[1]), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=False):
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
        drawn, xs = 0, set()
        for s in panel.series:
            pts = [(x, y) for x, y in zip(s.xs, s.ys, strict=False) if y is not None]
            if not pts:
                continue
            style = {"marker": "o", "markersize": 4, **s.style}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=s.label, **style)
            xs.update(p[0] for p in pts)
            drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        if panel.integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(xs) <= 3:
                ax.margins(x=0.12)  # few points: keep the end markers off the frame
        if panel.y_from_zero:
            ax.set_ylim(bottom=0)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False,
                  fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _metric(meta: dict, row: str, name: str) -> float | None:
    v = ((meta.get("evaluation") or {}).get(row) or {}).get(name)
    return None if v is None else float(v)


def report_panels(metas: Sequence[dict], comparisons: dict[str, Sequence[dict]] | None = None
                  ) -> list[Panel]:
    """The demo's panels from the metadata of the published versions.

    Parameters
    ----------
    metas : metadata of the published versions, oldest first (``version`` an int, ``objective``,
        ``training.history`` with ``epoch`` and ``loss``, ``evaluation`` with ``model`` and
        ``popular`` rows).
    comparisons : objective -> metadata of a version of that objective trained on the same
        triples as each published version (key ``compared_with`` = the published version).

    Returns
    -------
    Loss per sweep for each version; held-out Recall@10 and NDCG@10 per version for the model,
    "most popular" and each comparison objective.
    """
    comparisons = comparisons or {}
    objectives = sorted({str(m.get("objective", "?")) for m in metas})
    named = "; ".join(f"{o}: {OBJECTIVE_NAMES.get(o, o)}" for o in objectives)
    loss = []
    for m in metas:
        hist = (m.get("training") or {}).get("history") or []
        pts = [(h["epoch"], h["loss"]) for h in hist if h.get("loss") is not None]
        warm = (m.get("warm_start") or {}).get("from_version")
        label = f"version {m['version']}" + (f" (warm start from {warm})" if warm else "")
        loss.append(Series(label, [p[0] for p in pts], [p[1] for p in pts]))
    panels = [Panel(f"training loss per sweep\n{named}", "sweep", "training loss (objective value)",
                    loss, integer_x=True)]
    versions = [m["version"] for m in metas]
    for metric, label in (("recall@10", "Recall@10"), ("ndcg@10", "NDCG@10")):
        series = [Series(f"model ({'/'.join(objectives)})", versions,
                         [_metric(m, "model", metric) for m in metas], {"linewidth": 2}),
                  Series("most popular (baseline, same run)", versions,
                         [_metric(m, "popular", metric) for m in metas],
                         {"linestyle": "--", "marker": "s"})]
        for objective, cms in sorted(comparisons.items()):
            by_version = {c.get("compared_with"): c for c in cms}
            who = "the squared-error baseline" if objective == "squared" else f"{objective} objective"
            series.append(Series(f"{who}, same triples (not served)", versions,
                                 [_metric(by_version[v], "model", metric) if v in by_version
                                  else None for v in versions],
                                 {"linestyle": ":", "marker": "^"}))
        against = ", ".join("the squared-error baseline" if c == "squared" else f"the {c} objective"
                            for c in sorted(comparisons))
        panels.append(Panel(f"held-out {label} per version\n{'/'.join(objectives)} objective vs "
                            "most popular" + (f"\nand {against}" if against else ""),
                            "model version", label, series,
                            integer_x=True, y_from_zero=True))
    return panels


def plot_report(metas: Sequence[dict], path, comparisons: dict[str, Sequence[dict]] | None = None
                ) -> Path:
    """The demo's report.png: :func:`report_panels` drawn by :func:`plot_panels`."""
    return plot_panels(report_panels(metas, comparisons), path, panel_size=(5.2, 4.6))


def plot_prequential(curve: dict, path, *, k: int = 10, title: str = "") -> Path:
    """Cumulative Recall@k over a prequential replay (``mcrecall.train.prequential``), one line per
    strategy: ``curve`` maps a strategy to ``[(events replayed, cumulative Recall@k), ...]``."""
    series = [Series(name, [x for x, _ in pts], [y for _, y in pts]) for name, pts in curve.items()]
    panel = Panel(title or f"prequential Recall@{k} (test, then train)", "events replayed",
                  f"cumulative Recall@{k}", series, y_from_zero=True)
    return plot_panels([panel], path, panel_size=(7.0, 4.6))
