"""Report plots as inline SVG strings (matplotlib, Agg backend; text drawn as paths, not markup).

- :func:`informativeness_histogram`: pool vs selection counts over the same bins.
- :func:`class_histogram`: share of predicted boxes per class, selection vs pool.
- :func:`read_loop_csv` + :func:`learning_curves`: a loop's metric per round, one line per
  strategy (mean over seeds, min-max band).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from det_al.errors import InputError  # noqa: E402

logger = logging.getLogger(__name__)

POOL_COLOUR = "#b8bec9"
SELECTION_COLOUR = "#d9480f"
_ID_COLUMNS = {"strategy", "seed", "round", "n_images", "n_boxes", "n_labelled", "time", "seconds"}


def figure_to_svg(fig: plt.Figure) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, no date), ready to inline in HTML."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _style(ax: plt.Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)


def informativeness_histogram(edges: np.ndarray, pool: np.ndarray, selection: np.ndarray,
                              threshold: float | None) -> str:
    """Bars of ``pool`` counts with the ``selection`` counts (a subset) drawn over them.

    ``edges`` [B+1] bin edges; ``pool``, ``selection`` [B] counts; ``threshold`` the lowest
    informativeness in the selection (dashed line), or None.
    """
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    widths = np.diff(edges)
    ax.bar(edges[:-1], pool, widths, align="edge", color=POOL_COLOUR, label=f"pool ({int(pool.sum())})")
    ax.bar(edges[:-1], selection, widths, align="edge", color=SELECTION_COLOUR,
           label=f"top N ({int(selection.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="#333333", linestyle="--", linewidth=1)
    ax.set_xlabel("informativeness")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncols=2)
    _style(ax)
    return figure_to_svg(fig)


def class_histogram(names: list[str], pool: list[int], selection: list[int], max_classes: int = 20) -> str:
    """Horizontal bars: percent of predicted boxes per class in the selection and in the pool.

    Classes are sorted by pool count; past ``max_classes`` the rest are summed as "other".
    """
    order = sorted(range(len(names)), key=lambda i: (-pool[i], names[i]))
    if len(order) > max_classes:
        head, tail = order[: max_classes - 1], order[max_classes - 1:]
        names = [names[i] for i in head] + [f"other ({len(tail)} classes)"]
        pool = [pool[i] for i in head] + [sum(pool[i] for i in tail)]
        selection = [selection[i] for i in head] + [sum(selection[i] for i in tail)]
    else:
        names, pool, selection = ([seq[i] for i in order] for seq in (names, pool, selection))
    pool_share = 100 * np.asarray(pool, float) / max(sum(pool), 1)
    sel_share = 100 * np.asarray(selection, float) / max(sum(selection), 1)
    shown = [n if len(n) <= 28 else n[:27] + "…" for n in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.2, 0.9 + 0.32 * max(len(names), 1)))
    ax.barh(y - 0.2, sel_share, 0.4, color=SELECTION_COLOUR, label=f"top N ({sum(selection)} boxes)")
    ax.barh(y + 0.2, pool_share, 0.4, color=POOL_COLOUR, label=f"pool ({sum(pool)} boxes)")
    ax.set_yticks(y, shown, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of predicted boxes")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", alpha=0.3)
    return figure_to_svg(fig)


def read_loop_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a loop CSV (header names and values stripped); InputError if unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise InputError("empty CSV (no header)", path)
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                    for row in reader]
    except FileNotFoundError as e:
        raise InputError("file not found", path) from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read CSV: {e}", path) from e
    return rows


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def curve_columns(rows: list[dict[str, str]]) -> tuple[str | None, list[str], str | None]:
    """``(x column, metric columns, strategy column)`` of a loop CSV, names matched ignoring case.

    x is ``n_images`` (else ``round``); metrics are numeric columns named like ``map``/``ap``
    (else every other numeric column), at most 4; the strategy column may be absent (None).
    """
    if not rows:
        return None, [], None
    by_lower = {c.lower(): c for c in rows[0]}
    x = next((by_lower[c] for c in ("n_images", "round") if c in by_lower), None)
    numeric = [c for c in rows[0] if c.lower() not in _ID_COLUMNS and c != x
               and any(_number(r.get(c, "")) is not None for r in rows)]
    metrics = [c for c in numeric
               if "map" in c.lower() or c.lower().startswith("ap") or "ap5" in c.lower()]
    return x, (metrics or numeric)[:4], by_lower.get("strategy")


def learning_curves(rows: list[dict[str, str]]) -> str | None:
    """Small multiples, one per metric column: mean over seeds per strategy, min-max band.

    Returns None when the rows hold no x column or no numeric metric.
    """
    x_col, metrics, strategy_col = curve_columns(rows)
    if x_col is None or not metrics:
        return None
    strategy_of = (lambda r: r.get(strategy_col, "") or "run") if strategy_col else (lambda r: "run")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.0), squeeze=False)
    strategies = sorted({strategy_of(r) for r in rows})
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics):
        for i, strategy in enumerate(strategies):
            points: dict[float, list[float]] = defaultdict(list)
            for r in rows:
                if strategy_of(r) != strategy:
                    continue
                xv, yv = _number(r.get(x_col, "")), _number(r.get(metric, ""))
                if xv is not None and yv is not None:
                    points[xv].append(yv)
            if not points:
                continue
            xs = sorted(points)
            mean = [float(np.mean(points[v])) for v in xs]
            colour = colours(i % 10)
            ax.plot(xs, mean, marker="o", markersize=3, color=colour, label=strategy)
            if any(len(points[v]) > 1 for v in xs):
                ax.fill_between(xs, [min(points[v]) for v in xs], [max(points[v]) for v in xs],
                                color=colour, alpha=0.15, linewidth=0)
        ax.set_xlabel(x_col.replace("_", " "))
        ax.set_title(metric, fontsize=10)
        _style(ax)
    axes[0][-1].legend(frameon=False, fontsize=8)
    return figure_to_svg(fig)
