"""A static HTML report of a scored pool: ``index.html`` + ``thumbnails/``, opened from disk.

:func:`write_report` reads the outputs of ``det-al score`` (``ranking.jsonl``,
``pseudo_labels.json``, ``passes.jsonl``, ``skipped.json``, ``run.json``) and optionally a loop's
CSV, and writes:

- a gallery of the top N images (thumbnails drawn by :mod:`det_al.report.draw`: pseudo-label
  boxes and mask outlines coloured by uncertainty, plus a second thumbnail with the boxes of the
  individual stochastic passes);
- per image: informativeness, its components (``class``, ``box``, ``mask``, ``presence``,
  ``novelty`` or any other numeric field of the ranking record), ``certain`` and ``empty``;
- histograms of informativeness and of predicted classes, top N vs pool, and learning curves
  (:mod:`det_al.report.plots`); the page itself is :mod:`det_al.report.html`.

Large pools: the ranking is streamed twice (top N, then histogram counts) and only the top N
images get thumbnails. The site is built in a temporary folder beside ``out_dir`` and renamed into
place, so a failed run never leaves half a report.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from det_al.errors import InputError
from det_al.data.files import iter_jsonl, read_json
from det_al.data.images import ImageReadError, read_image
from det_al.report.draw import DrawnObject, draw_objects, draw_passes, placeholder, write_jpeg
from det_al.report.html import render_index
from det_al.report.plots import class_histogram, informativeness_histogram, learning_curves, read_loop_csv
from det_al.data.segmentation import segmentation_to_mask

logger = logging.getLogger(__name__)

#: Ranking fields that are not informativeness components.
NOT_COMPONENTS = {"image_id", "file_name", "rank", "informativeness", "n_objects", "n_detections",
                  "n_candidates", "certain", "empty"}
#: Components shown first, in this order; other numeric fields follow alphabetically.
COMPONENT_ORDER = ("class", "box", "mask", "presence", "novelty")
HISTOGRAM_BINS = 20
#: Objects listed per card and numbered in its thumbnail (all are drawn).
LISTED_OBJECTS = 12


@dataclass
class RankingSummary:
    """What the report needs from ``ranking.jsonl``: the top records and pool-wide counts."""

    top: list[dict]
    n_images: int
    n_certain: int
    n_empty: int
    edges: np.ndarray            # [B+1] informativeness bin edges
    pool_counts: np.ndarray      # [B] images per bin, whole pool
    top_counts: np.ndarray       # [B] images per bin, top N only


@dataclass
class Labels:
    """What the report needs from ``pseudo_labels.json``."""

    category_names: dict[int, str]
    images: dict[Any, dict]                     # image id -> image dict, top N only
    annotations: dict[Any, list[dict]]          # image id -> annotations, top N only
    pool_class_counts: Counter = field(default_factory=Counter)
    max_uncertainty: float = 0.0

    def name(self, category_id: Any) -> str:
        """The category's name; ``"id N"`` for an id missing from the categories."""
        return self.category_names.get(category_id, f"id {category_id}")


def iter_ranking(path: Path) -> Iterator[dict]:
    """Stream the records of ``ranking.jsonl`` (blank lines skipped); InputError on a bad line."""
    for line_no, record in iter_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("image_id"), (int, str)):
            raise InputError(f"line {line_no}: expected an object with an image_id", path)
        value = _float(record.get("informativeness"))
        if value is None:
            raise InputError(f"line {line_no}: informativeness is not a number", path)
        record["informativeness"] = value
        rank = _float(record.get("rank", line_no))
        if rank is None:
            raise InputError(f"line {line_no}: rank is not a number", path)
        record["rank"] = int(rank) if rank.is_integer() else rank
        yield record


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def scan_ranking(path: Path, top: int, bins: int = HISTOGRAM_BINS) -> RankingSummary:
    """Two streaming passes over ``ranking.jsonl``: the ``top`` best-ranked records and
    pool statistics, then histogram counts. Memory is O(top), whatever the pool size."""
    heap: list[tuple[float, int, dict]] = []   # max-heap on rank (negated) of the best `top`
    n = n_certain = n_empty = 0
    lo, hi = math.inf, -math.inf
    for i, record in enumerate(iter_ranking(path)):
        n += 1
        n_certain += bool(record.get("certain"))
        n_empty += bool(record.get("empty"))
        lo, hi = min(lo, record["informativeness"]), max(hi, record["informativeness"])
        key = (-float(record["rank"]), -i, record)
        if len(heap) < top:
            heapq.heappush(heap, key)
        elif key[:2] > heap[0][:2]:
            heapq.heapreplace(heap, key)
    if n == 0:
        raise InputError("no ranked images", path)
    best = [r for _, _, r in sorted(heap, key=lambda k: (-k[0], -k[1]))]
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    pool_counts = np.zeros(bins, np.int64)
    chunk: list[float] = []
    for record in iter_ranking(path):
        chunk.append(record["informativeness"])
        if len(chunk) >= 65536:
            pool_counts += np.histogram(chunk, edges)[0]
            chunk.clear()
    pool_counts += np.histogram(chunk, edges)[0]
    top_counts = np.histogram([r["informativeness"] for r in best], edges)[0]
    return RankingSummary(best, n, n_certain, n_empty, edges, pool_counts, top_counts)


def read_labels(path: Path, top_ids: set) -> Labels:
    """Category names, per-class box counts over the pool, and the top images' annotations."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise InputError("expected a COCO object with images, annotations and categories lists", path)
    names = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c:
            raise InputError("every category needs an id", path)
        names[c["id"]] = str(c.get("name", c["id"]))
    images = {im.get("id"): im for im in data["images"] if isinstance(im, dict) and im.get("id") in top_ids}
    labels = Labels(names, images, {i: [] for i in top_ids})
    for a in data["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("bbox"), list) or len(a["bbox"]) != 4:
            raise InputError(f"annotation {a.get('id') if isinstance(a, dict) else a!r}: "
                             "expected a bbox [x, y, w, h]", path)
        labels.pool_class_counts[a.get("category_id")] += 1
        u = _float(a.get("uncertainty"))
        if u is not None:
            labels.max_uncertainty = max(labels.max_uncertainty, u)
        if a.get("image_id") in labels.annotations:
            labels.annotations[a["image_id"]].append(a)
    return labels


def read_passes(path: Path, top_ids: set) -> dict[Any, list[list[tuple[float, float, float, float]]]]:
    """Stream ``passes.jsonl``; per top image, each pass's boxes as xyxy pixels. {} if absent."""
    if not path.exists():
        logger.info("%s not found: no pass thumbnails", path)
        return {}
    found = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record["image_id"] not in top_ids:
                    continue
                found[record["image_id"]] = [
                    [(float(x), float(y), float(x) + float(w), float(y) + float(h))
                     for x, y, w, h, *_ in boxes]
                    for boxes in record["passes"]
                ]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"line {line_no}: expected {{image_id, passes: [[[x, y, w, h, "
                                 f"category_id, score], ...], ...]}} ({e})", path) from e
    return found


def _annotation_mask(ann: dict, height: int, width: int) -> np.ndarray | None:
    """The annotation's mask as [H, W] bool, or None when it has none or it cannot be decoded."""
    if not ann.get("segmentation"):
        return None
    try:
        return segmentation_to_mask(ann["segmentation"], height, width)
    except Exception as e:  # a malformed segmentation should not stop the report
        logger.warning("annotation %s: cannot draw its mask (%s)", ann.get("id"), e)
        return None


def components_of(record: dict) -> list[tuple[str, float]]:
    """``(name, value)`` of the record's numeric components: known ones first, then the rest."""
    numeric = {k: _float(v) for k, v in record.items() if k not in NOT_COMPONENTS}
    numeric = {k: v for k, v in numeric.items() if v is not None}
    order = [k for k in COMPONENT_ORDER if k in numeric] + sorted(set(numeric) - set(COMPONENT_ORDER))
    return [(k, numeric[k]) for k in order]


def _card(position: int, record: dict, labels: Labels, passes: dict, image_root: Path,
          site: Path, vmax: float, max_side: int) -> dict:
    """Draw one top image's thumbnails into ``site/thumbnails`` and return its gallery entry."""
    image_id = record["image_id"]
    info = labels.images.get(image_id, {})
    file_name = str(record.get("file_name") or info.get("file_name") or image_id)
    anns = sorted(labels.annotations.get(image_id, []),
                  key=lambda a: -(_float(a.get("uncertainty")) or 0.0))
    thumb = f"thumbnails/{position:05d}.jpg"
    passes_thumb = f"thumbnails/{position:05d}_passes.jpg" if image_id in passes else None
    error = None
    try:
        image = read_image(image_root / file_name)
    except ImageReadError as e:
        error = e.reason
        logger.warning("report: %s: %s", file_name, e.reason)
        write_jpeg(str(site / thumb), placeholder(info.get("width", 4), info.get("height", 3), max_side))
        passes_thumb = None
    if error is None:
        height, width = image.shape[:2]
        if (info.get("width"), info.get("height")) not in ((width, height), (None, None)):
            logger.warning("report: %s is %dx%d but pseudo_labels.json says %sx%s", file_name,
                           width, height, info.get("width"), info.get("height"))
        drawn = []
        for a in anns:
            x, y, w, h = (float(v) for v in a["bbox"])
            drawn.append(DrawnObject((x, y, x + w, y + h), _float(a.get("uncertainty")) or 0.0,
                                     _annotation_mask(a, height, width)))
        write_jpeg(str(site / thumb), draw_objects(image, drawn, vmax, max_side, LISTED_OBJECTS))
        if passes_thumb:
            write_jpeg(str(site / passes_thumb),
                       draw_passes(image, passes[image_id], drawn, max_side, LISTED_OBJECTS))
    class_counts = Counter(labels.name(a.get("category_id")) for a in anns)
    return {
        "rank": record["rank"],
        "image_id": image_id,
        "file_name": file_name,
        "informativeness": record["informativeness"],
        "components": components_of(record),
        "n_objects": int(_float(record.get("n_objects", len(anns))) or 0),
        "certain": bool(record.get("certain")),
        "empty": bool(record.get("empty")),
        "classes": [name for name, _ in sorted(class_counts.items(), key=lambda kv: (-kv[1], kv[0]))],
        "objects": [{"category": labels.name(a.get("category_id")), "score": _float(a.get("score")),
                     "uncertainty": _float(a.get("uncertainty"))}
                    for a in anns[:LISTED_OBJECTS]],
        "n_boxes": len(anns),
        "n_passes": len(passes.get(image_id, [])),
        "thumb": thumb,
        "passes_thumb": passes_thumb,
        "error": error,
    }


def _run_summary(run: Any) -> list[tuple[str, str]]:
    """Flat ``(key, value)`` rows of ``run.json``'s scalars and small dicts of scalars."""
    rows = []
    if not isinstance(run, dict):
        return rows
    for key, value in run.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            rows.append((str(key), str(value)))
        elif isinstance(value, dict) and 0 < len(value) <= 12 and all(
                isinstance(v, (str, int, float, bool)) for v in value.values()):
            rows.append((str(key), ", ".join(f"{k}={v}" for k, v in value.items())))
    return rows


def _write_site(site: Path, scores_dir: Path, image_root: Path, top: int,
                loop_rows: list[dict] | None, max_side: int) -> int:
    ranking = scan_ranking(scores_dir / "ranking.jsonl", top)
    top_ids = {r["image_id"] for r in ranking.top}
    labels = read_labels(scores_dir / "pseudo_labels.json", top_ids)
    passes = read_passes(scores_dir / "passes.jsonl", top_ids)
    skipped_path = scores_dir / "skipped.json"
    skipped = read_json(skipped_path) if skipped_path.exists() else []
    if not isinstance(skipped, list):
        raise InputError("expected a list of {image_id, file_name, reason}", skipped_path)
    run = read_json(scores_dir / "run.json") if (scores_dir / "run.json").exists() else {}
    vmax = labels.max_uncertainty if labels.max_uncertainty > 0 else 1.0

    (site / "thumbnails").mkdir()
    cards = [_card(i, r, labels, passes, image_root, site, vmax, max_side)
             for i, r in enumerate(ranking.top, start=1)]

    top_class_counts: Counter = Counter()
    for anns in labels.annotations.values():
        top_class_counts.update(a.get("category_id") for a in anns)
    class_ids = sorted(set(labels.pool_class_counts), key=str)
    class_names = [labels.name(c) for c in class_ids]
    plots = {
        "informativeness": informativeness_histogram(
            ranking.edges, ranking.pool_counts, ranking.top_counts,
            min(r["informativeness"] for r in ranking.top)),
        "classes": class_histogram(class_names, [labels.pool_class_counts[c] for c in class_ids],
                                   [top_class_counts[c] for c in class_ids]) if class_ids else None,
        "curves": learning_curves(loop_rows) if loop_rows else None,
    }
    html = render_index(
        title=f"det_al report: {scores_dir.resolve().name}",
        cards=cards,
        stats={"n_images": ranking.n_images, "n_top": len(cards), "n_certain": ranking.n_certain,
               "n_empty": ranking.n_empty, "n_skipped": len(skipped),
               "n_boxes": sum(labels.pool_class_counts.values())},
        plots=plots,
        vmax=vmax,
        skipped=[s for s in skipped if isinstance(s, dict)],
        run=_run_summary(run),
        loop_given=loop_rows is not None,
    )
    (site / "index.html").write_text(html, encoding="utf-8")
    return len(cards)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not (out / "index.html").exists():
        raise InputError("exists, is not empty and is not a det_al report: refusing to replace it", out)


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "report")
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old / "report", out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_report(scores_dir: str | os.PathLike, image_root: str | os.PathLike | None,
                 out_dir: str | os.PathLike, top: int = 50,
                 loop_csv: str | os.PathLike | None = None, max_side: int = 360) -> Path:
    """Write the report of a scored pool to ``out_dir`` (replacing a previous report there).

    ``top`` images get thumbnails (longer side ``max_side`` px); the rest of the pool appears only
    in the summaries. ``image_root`` ``None``: the root the scores remember (``run.json``).
    Returns the path of ``index.html``.
    """
    scores_dir, out = Path(scores_dir), Path(out_dir)
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    if not scores_dir.is_dir():
        raise InputError("not a folder of det-al score outputs", scores_dir)
    if image_root is None:
        run = read_json(scores_dir / "run.json") if (scores_dir / "run.json").exists() else {}
        if not run.get("image_root"):
            raise InputError("the scores record no image root (images scored in memory?): give --image-root", scores_dir)
        image_root = run["image_root"]
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise InputError("image root is not a folder", image_root)
    _check_out_dir(out)
    loop_rows = read_loop_csv(loop_csv) if loop_csv is not None else None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        site = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise InputError(f"cannot write the report here: {e.strerror}", out.parent) from e
    try:
        n = _write_site(site, scores_dir, image_root, top, loop_rows, max_side)
        site.chmod(0o755)
        _replace_dir(site, out)
    except BaseException as e:
        shutil.rmtree(site, ignore_errors=True)
        if isinstance(e, OSError):
            raise InputError(f"cannot write the report: {e}", out) from e
        raise
    logger.info("report of %d images written to %s", n, out / "index.html")
    return out / "index.html"
