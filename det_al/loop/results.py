"""The loop's results table: one CSV row per round, and what is read out of it.

:class:`RowsWriter` appends ``results.csv`` rows (:data:`CSV_FIELDS`) flushed and synced one by
one, :func:`read_rows` reads the complete ones back (a crash's torn last line is dropped), and
:func:`summarise`, :func:`format_summary`, :func:`plot_learning_curves`,
:func:`label_efficiency` and :func:`format_efficiency` turn rows into mean ± std learning
curves, the labels each strategy *adds* to match the reference and its paired AULC difference. The paired
comparisons of the label-efficiency benchmark are built from :func:`labels_to_reach` (labels
added until a curve reaches a target), :func:`aulc` (area under a learning curve) and
:func:`mean_ci95` (mean and 95 % t-interval over seeds).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from det_al.data.files import atomic_open
from det_al.errors import InputError
from det_al.loop.error_capture import mean_ci

CSV_FIELDS = (
    "strategy",
    "seed",
    "round",
    "labelled_images",
    "labelled_boxes",
    "map",
    "map50",
    "pool_images",
    "selected_images",
    "selected_boxes",
    "selected_domains",
    "seconds",
    "selected",
)


# --------------------------------------------------------------------------- results file


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The complete rows of a results CSV (a torn last line from a crash is dropped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(complete))
    if reader.fieldnames is not None and tuple(reader.fieldnames) != CSV_FIELDS:
        raise InputError(f"not a det_al loop results file (columns {reader.fieldnames})", path)
    for row in reader:
        try:
            rows.append(_parse_row(row))
        except (TypeError, ValueError) as e:
            raise InputError(f"malformed row {reader.line_num}: {e}", path) from e
    return rows


def _parse_row(row: Mapping[str, str]) -> dict:
    out: dict[str, Any] = dict(row)
    for key in ("seed", "round", "labelled_images", "labelled_boxes", "pool_images", "selected_images", "selected_boxes"):
        out[key] = int(row[key])
    for key in ("map", "map50", "seconds"):
        out[key] = float(row[key])
    out["selected"] = [int(i) for i in row["selected"].split()] if row["selected"] else []
    return out


class RowsWriter:
    """Appends rows to the results CSV, flushed and synced one by one."""

    def __init__(self, path: str | os.PathLike, rows: Sequence[dict]):
        self.path = Path(path)
        # rewrite what is complete (drops a torn line), then append
        with atomic_open(self.path) as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(_format_row(row))

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n").writerow(_format_row(row))
            f.flush()
            os.fsync(f.fileno())


def _format_row(row: Mapping[str, Any]) -> dict:
    out = {k: row[k] for k in CSV_FIELDS}
    out["selected"] = " ".join(str(i) for i in row["selected"])
    out["map"], out["map50"] = f"{row['map']:.6f}", f"{row['map50']:.6f}"
    out["seconds"] = f"{row['seconds']:.1f}"
    return out


# --------------------------------------------------------------------------- summaries and plot


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict]]:
    """Per strategy, per round: mean labelled images and boxes, mean and std of mAP over seeds.

    Returns ``{strategy: [{"round", "images", "boxes", "map", "std", "n"}, ...]}`` by round;
    ``std`` is the sample standard deviation (0 for a single seed).
    """
    groups: dict[str, dict[int, list[Mapping[str, Any]]]] = {}
    for row in rows:
        groups.setdefault(row["strategy"], {}).setdefault(int(row["round"]), []).append(row)
    out: dict[str, list[dict]] = {}
    for strategy, rounds in groups.items():
        out[strategy] = []
        for r in sorted(rounds):
            maps = np.array([float(x["map"]) for x in rounds[r]])
            out[strategy].append(
                {
                    "round": r,
                    "images": float(np.mean([x["labelled_images"] for x in rounds[r]])),
                    "boxes": float(np.mean([x["labelled_boxes"] for x in rounds[r]])),
                    "map": float(maps.mean()),
                    "std": float(maps.std(ddof=1)) if len(maps) > 1 else 0.0,
                    "n": len(maps),
                }
            )
    return out


def format_curves(rows: Sequence[Mapping[str, Any]], arms: Sequence[str], title: str) -> list[str]:
    """The lines of a table of mean ± std mAP per arm and round (:func:`summarise`), under ``title``."""
    summary = summarise(rows)
    rounds = sorted({p["round"] for points in summary.values() for p in points})
    head = f"{'arm':<22}" + "".join(f"{f'round {r}':>16}" for r in rounds)
    lines = [title, head, "-" * len(head)]
    for s in arms:
        points = {p["round"]: p for p in summary.get(s, [])}
        lines.append(f"{s:<22}" + "".join(
            f"{points[r]['map']:.4f} ± {points[r]['std']:.4f}".rjust(16) if r in points else f"{'-':>16}" for r in rounds))
    return lines


def plot_learning_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Learning curves (mean +- std of bbox mAP over seeds vs labelled images) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    try:
        for strategy, points in summarise(rows).items():
            x = np.array([p["images"] for p in points])
            y = np.array([p["map"] for p in points])
            s = np.array([p["std"] for p in points])
            (line,) = ax.plot(x, y, marker="o", label=strategy)
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("labelled images")
        ax.set_ylabel("bbox mAP (COCO AP@[.5:.95])")
        ax.set_title(title or "learning curves (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """One table: per strategy and round, labelled images and mAP mean ± std."""
    summary = summarise(rows)
    lines = [f"{'strategy':<16} {'round':>5} {'images':>7} {'boxes':>7} {'mAP':>7} {'± std':>7} {'seeds':>5}"]
    for strategy, points in summary.items():
        for p in points:
            lines.append(
                f"{strategy:<16} {p['round']:>5} {p['images']:>7.1f} {p['boxes']:>7.1f} "
                f"{p['map']:>7.4f} {p['std']:>7.4f} {p['n']:>5}"
            )
    return "\n".join(lines)


def label_efficiency(rows: Sequence[Mapping[str, Any]], reference: str = "random") -> dict[str, dict[str, Any]]:
    """What each strategy's labels bought, on the base a user pays for: the labels *added*
    beyond the labelled set every strategy starts from.

    For each strategy, the mean curve over seeds (labels added -> mean mAP) is walked until it
    first reaches the reference strategy's final-round mean mAP (:func:`labels_to_reach`,
    linearly interpolated). Returns ``{strategy: {"added" (None: never reached), "percent" (of
    the labels the reference added), "reached", "aulc" (:func:`mean_ci95` of each seed's
    :func:`aulc`), "aulc_diff" (paired over the seeds both ran: this strategy's AULC minus the
    reference's, :func:`mean_ci95`), "below_rounds" (rounds where the strategy's mean is below
    the reference's by more than one std: the larger of the two strategies' stds over seeds at
    that round), "meaningful"}}``. ``meaningful`` is False when the reference's final mean mAP
    is not above its first round's: then every curve "reaches" the target at once and the
    percentages say nothing.
    """
    summary = summarise(rows)
    if reference not in summary:
        return {}
    ref = summary[reference]
    start = {s: points[0]["images"] for s, points in summary.items()}
    target, ref_added = ref[-1]["map"], ref[-1]["images"] - start[reference]
    meaningful = len(ref) > 1 and target > ref[0]["map"]
    ref_by_round = {p["round"]: p for p in ref}
    areas = {s: {seed: aulc(*xy) for seed, xy in by_seed.items()} for s, by_seed in seed_curves(rows).items()}
    out: dict[str, dict[str, Any]] = {}
    for strategy, points in summary.items():
        added = labels_to_reach([p["images"] - start[strategy] for p in points], [p["map"] for p in points], target)
        below = [
            p["round"]
            for p in points
            if p["round"] in ref_by_round
            and p["map"] < ref_by_round[p["round"]]["map"] - max(ref_by_round[p["round"]]["std"], p["std"])
        ]
        out[strategy] = {
            "added": added,
            "percent": None if added is None or ref_added == 0 else 100.0 * added / ref_added,
            "reached": added is not None,
            "aulc": mean_ci95(list(areas[strategy].values())),
            "aulc_diff": paired_diff(areas[strategy], areas[reference]),
            "below_rounds": below,
            "meaningful": meaningful,
        }
    return out


def verdict(diff: Mapping[str, Any]) -> str:
    """``+0.0123 [-0.0010, +0.0256] no difference`` (better / worse when the CI excludes 0)."""
    if diff["mean"] is None:
        return "-"
    if diff["ci95"] is None:
        return f"{diff['mean']:+.4f} (one seed: no CI)"
    lo, hi = diff["ci95"]
    word = "better" if lo > 0 else "worse" if hi < 0 else "no difference"
    return f"{diff['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] {word}"


def format_efficiency(efficiency: Mapping[str, Mapping[str, Any]], reference: str = "random") -> str:
    """The table of :func:`label_efficiency`: labels added to reach the reference's final mAP,
    and the paired AULC difference against it (mean [95 % CI] over seeds)."""
    lines = [f"label efficiency against {reference} (labels added beyond the shared start; AULC = mean mAP over them)"]
    if efficiency and not next(iter(efficiency.values()))["meaningful"]:
        lines.append(f"  (added-to-reach is not meaningful: {reference}'s final mAP is not above its first round's)")
    lines.append(f"  {'strategy':<20} {'added to reach':>16} {'AULC':>8}  AULC - {reference} (paired, 95 % CI)")
    for strategy, e in efficiency.items():
        reach = "-" if not e["meaningful"] else "never" if e["added"] is None else f"{e['added']:.1f}"
        if e["meaningful"] and e["percent"] is not None:
            reach += f" ({e['percent']:.0f}%)"
        diff = "0 (reference)" if strategy == reference else verdict(e["aulc_diff"])
        below = ", ".join(str(r) for r in e["below_rounds"])
        lines.append(
            f"  {strategy:<20} {reach:>16} {e['aulc']['mean']:>8.4f}  {diff}"
            + (f"; below {reference} by > 1 std in round {below}" if below else "")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- paired comparisons


def labels_to_reach(added: Sequence[float], maps: Sequence[float], target: float) -> float | None:
    """Labels added when the curve ``maps`` over ``added`` (ascending) first reaches ``target``.

    The crossing is interpolated linearly between the two points around it; ``None`` if the
    curve never reaches it.

    >>> labels_to_reach([0, 10, 20], [0.1, 0.2, 0.4], 0.3)
    15.0
    >>> labels_to_reach([0, 10], [0.1, 0.2], 0.3) is None
    True
    """
    for k, (x, y) in enumerate(zip(added, maps)):
        if y >= target:
            if k == 0 or y == maps[k - 1]:
                return float(x)
            x0, y0 = added[k - 1], maps[k - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0))
    return None


def aulc(added: Sequence[float], maps: Sequence[float]) -> float:
    """Area under the learning curve ``maps`` over ``added`` (trapezoids), divided by the
    range of ``added``: the curve's mean mAP over the labelling budget (one point: its mAP).

    >>> aulc([0, 10, 20], [0.1, 0.3, 0.3])
    0.25
    """
    x, y = np.asarray(added, dtype=float), np.asarray(maps, dtype=float)
    if len(x) == 1 or x[-1] == x[0]:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def mean_ci95(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "ci95": [lo, hi], "n"}``: the mean and its 95 % Student-t interval (``None``
    for fewer than two values); for paired differences over seeds.

    >>> r = mean_ci95([1.0, 3.0])  # std sqrt(2), t(0.975, df=1) = 12.7062: 2 +- 12.7062
    >>> r["mean"], [round(x, 4) for x in r["ci95"]], r["n"]
    (2.0, [-10.7062, 14.7062], 2)
    """
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean, low, high = mean_ci(np.asarray(values, dtype=float))
    return {"mean": mean, "ci95": None if n < 2 else [low, high], "n": n}


def seed_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, tuple[list[float], list[float]]]]:
    """``{strategy: {seed: (labels added, mAP)}}`` by round; labels added count from the
    strategy's round 0 of that seed."""
    out: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        for seed in sorted({r["seed"] for r in rows if r["strategy"] == strategy}):
            mine = sorted((r for r in rows if r["strategy"] == strategy and r["seed"] == seed), key=lambda r: r["round"])
            start = mine[0]["labelled_images"]
            out.setdefault(strategy, {})[seed] = ([r["labelled_images"] - start for r in mine], [r["map"] for r in mine])
    return out


def paired_diff(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    """:func:`mean_ci95` of ``a[seed] - b[seed]`` over the seeds both have.

    >>> round(paired_diff({0: 0.3, 1: 0.5, 2: 0.9}, {0: 0.2, 1: 0.2})["mean"], 6)  # (0.1 + 0.3) / 2
    0.2
    """
    seeds = sorted(set(a) & set(b))
    return mean_ci95([a[s] - b[s] for s in seeds])
