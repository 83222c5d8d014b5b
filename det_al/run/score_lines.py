"""Pool images to result lines: stochastic passes -> matched objects -> per-image values.

:func:`iter_results` reads the pool batch by batch, runs the passes (:mod:`det_al.inference`),
turns each image's passes into one :class:`~det_al.run.result_line.ResultLine`
(:func:`score_image`, with the pure maths of :mod:`det_al.scoring`) and applies the failure
policy: an image that cannot be read or that the model fails on is skipped with its reason,
unless every image that reaches the model fails the same way (then the model is at fault).
Its input is checked at the run's entry (:func:`det_al.run.checks.check_run`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from det_al.config import Config
from det_al.data.coco import xyxy_to_xywh
from det_al.data.datasets import PoolDataset, pool_collate
from det_al.data.pool import PoolImages, as_pool_images
from det_al.data.segmentation import mask_to_rle
from det_al.errors import InputError
from det_al.inference.passes import ImagePasses, run_passes
from det_al.models.build import has_masks
from det_al.run.ensemble import EnsemblePasses, as_members, join_passes, member_seed
from det_al.run.result_line import ResultLine
from det_al.scoring.dense import dense_scores
from det_al.scoring.informativeness import combine_image, image_informativeness
from det_al.scoring.matching import match_passes
from det_al.scoring.one_pass import one_pass_scores
from det_al.scoring.uncertainty import score_objects

logger = logging.getLogger(__name__)

# Per-object fields copied from score_objects() into each pseudo-label annotation.
OBJECT_FIELDS = (
    "uncertainty",
    "class_variance",
    "entropy",
    "mutual_information",
    "box_disagreement",
    "box_spread",
    "mask_disagreement",
    "presence",
)
COMPONENTS = ("class", "box", "mask", "presence")
#: A run stops when its first this many images that reach the model all fail with the same
#: error (a model-side fault: every other image would fail the same way), instead of skipping
#: the whole pool.
SAME_ERROR_STOP = 3


def image_seed(seed: int, image_id: int) -> int:
    """The dropout seed of one image: independent of batch composition, order and sharding."""
    return (seed * 1_000_003 + int(image_id) * 7_919) % (2**31 - 1)


def _round(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))


def _rle_area(rle: dict) -> float:
    from pycocotools import mask as mask_utils

    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return float(mask_utils.area(r))


def score_image(
    image_passes: ImagePasses, config: Config, categories: list[dict], with_masks: bool,
    image_id: int = 0, file_name: str = "", size: tuple[int, int] | None = None,
) -> ResultLine:
    """Match and score one image's passes into its result line (``size``: ``(width, height)``)."""
    anchor = image_passes.deterministic
    objects = match_passes(
        anchor,
        image_passes.passes,
        iou_threshold=config.matching.iou_threshold,
        class_aware=config.matching.class_aware,
    )
    values = score_objects(anchor, image_passes.passes, objects, config.scoring, masks=with_masks)
    image = image_informativeness(values, config.scoring, has_masks=with_masks)
    label_to_id = {i + 1: int(c["id"]) for i, c in enumerate(categories)}

    # Values are rounded with round() on the Python floats of .tolist() (exact widening of
    # float32): the same numbers as rounding each tensor element, at a fraction of the cost.
    annotations = []
    if len(anchor):
        labels = anchor.labels.tolist()
        scores = anchor.scores.double().tolist()
        columns = [(name, values[name].double().tolist()) for name in OBJECT_FIELDS if name in values]
        for k, (x, y, w, h) in enumerate(xyxy_to_xywh(anchor.boxes)):
            ann: dict[str, Any] = {
                "category_id": label_to_id.get(labels[k], -1),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2),
                "iscrowd": 0,
                "score": round(scores[k], 6),
            }
            for name, column in columns:
                ann[name] = round(column[k], 6)
            if anchor.masks is not None:
                rle = mask_to_rle(anchor.masks[k] > 0.5)
                ann["segmentation"] = rle
                ann["area"] = _round(_rle_area(rle), 2)
            annotations.append(ann)

    pass_boxes = []
    for det in image_passes.passes:
        rows = []
        if len(det):
            for (x, y, w, h), lab, s in zip(xyxy_to_xywh(det.boxes), det.labels.tolist(), det.scores.double().tolist()):
                rows.append([round(x, 1), round(y, 1), round(w, 1), round(h, 1), label_to_id.get(lab, -1), round(s, 4)])
        pass_boxes.append(rows)
    passes: dict[str, Any] = {"views": list(image_passes.views), "passes": pass_boxes}
    if isinstance(image_passes, EnsemblePasses):  # each pass's ensemble member
        passes["members"] = list(image_passes.members)

    one_pass = one_pass_scores(anchor)
    dense = dense_scores(image_passes.candidates, anchor.boxes, anchor.scores, config.scoring)
    record = {
        "informativeness": _round(image["informativeness"]),
        **{c: _round(image.get(c, 0.0)) for c in COMPONENTS},
        "n_objects": int(image["n_objects"]),
        "n_detections": len(anchor),
        "least_confidence": _round(one_pass["least_confidence"]),
        "max_entropy": _round(one_pass["max_entropy"]),
        **{k: v if isinstance(v, int) else _round(v) for k, v in dense.items()},
        "empty": bool(image["empty"]),
    }
    weights = config.scoring.image_weights
    if weights:  # the image-level combination (informativeness.IMAGE_COMPONENTS)
        record["objects"] = record["informativeness"]
        record["informativeness"] = _round(combine_image(record, weights))
        record["empty"] = bool(image["empty"] and not dense["n_candidates"])
    width, height = size if size is not None else (None, None)
    return ResultLine(
        image_id, file_name, width=width, height=height, record=record, annotations=annotations,
        passes=passes,
        embedding=[round(v, 5) for v in image_passes.embedding.detach().float().cpu().tolist()],
    )


def run_members(models: list[nn.Module], images: list[torch.Tensor], config, seeds: list[list[int]],
                device: str = "cpu", amp: bool = False) -> list[ImagePasses]:
    """``run_passes`` once per ensemble member (``seeds[m]``: member ``m``'s seed of each image),
    one member after the other, joined per image (:func:`det_al.run.ensemble.join_passes`); one
    member's passes as ``run_passes`` gives them."""
    runs = [run_passes(model, images, config, seeds=s, device=device, amp=amp) for model, s in zip(models, seeds)]
    return runs[0] if len(runs) == 1 else [join_passes(per_image) for per_image in zip(*runs)]


def _run_or_skip(models: list[nn.Module], items: list[dict], p, device: str, amp: bool) -> list[ImagePasses | str]:
    """Every member's passes on a batch (:func:`run_members`); if a model fails, image by image:
    a failing image gives its reason."""
    seeds = [[image_seed(member_seed(p.seed, m), it["image_id"]) for it in items] for m in range(len(models))]
    try:
        return run_members(models, [it["image"] for it in items], p, seeds, device=device, amp=amp)
    except Exception as e:
        if len(items) == 1:
            logger.debug("model failed on %s", items[0]["file_name"], exc_info=True)
            return [f"model failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"]
    return [r for it in items for r in _run_or_skip(models, [it], p, device, amp)]


def iter_results(
    model: nn.Module | Sequence[nn.Module],
    config: Config,
    categories: list[dict],
    images: PoolImages | list[dict],
    image_root: str | os.PathLike,
    device: str = "cpu",
    amp: bool = False,
    progress: bool = True,
    make_dataset: Callable[[PoolImages], torch.utils.data.Dataset] | None = None,
    batches: Iterable[list[int]] | None = None,
) -> Iterator[list[ResultLine]]:
    """Score ``images`` (:class:`PoolImages` or COCO image dicts) batch by batch; yields each
    batch's result lines.

    Images that cannot be read, or that the model fails on, give a skipped line with the
    reason; the run goes on. But if the first :data:`SAME_ERROR_STOP` images that reach the
    model (or all of them, if fewer) fail with the same error, the fault is the model's, not
    the images': an :class:`InputError` with that error, and no line of them is yielded.
    ``make_dataset(images)`` replaces :class:`PoolDataset` (images
    from elsewhere than files, e.g. rendered on the fly); its items are those of PoolDataset.
    ``batches`` (index lists into ``images``) replaces the default batching, consecutive runs
    of ``passes.batch_size`` images; an image's passes depend on the images batched with it
    (torchvision pads a batch to its largest image). The input is trusted: the run's entry
    checked it (:func:`det_al.run.checks.check_run`). An empty ``images`` yields nothing.
    ``model`` may be a list of models, an ensemble (:mod:`det_al.run.ensemble`, checked by
    :func:`det_al.run.ensemble.check_members`): their passes are scored together.
    """
    models = as_members(model)
    images = as_pool_images(images)
    p = config.passes
    dataset = make_dataset(images) if make_dataset else PoolDataset(images, image_root)
    if batches is None:
        batches = consecutive_runs(np.arange(len(dataset)) // p.batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=p.num_workers, collate_fn=pool_collate)
    with_masks = has_masks(models[0])
    bar = tqdm(total=len(dataset), desc="scoring", unit="img", disable=not progress, dynamic_ncols=True)
    held: list[list[ResultLine]] | None = []  # batches held back while every image that reached the model failed
    failures: list[str] = []  # their model errors
    try:
        for batch in loader:
            lines = _score_batch(models, batch, config, categories, with_masks, device, amp)
            bar.update(len(batch))
            if held is not None:
                held.append(lines)
                failures += [ln.skipped for ln in lines if (ln.skipped or "").startswith("model failed")]
                if any(ln.scored for ln in lines):
                    lines, held = [ln for b in held for ln in b], None  # the model works: go on
                elif len(failures) >= SAME_ERROR_STOP:
                    _stop_if_same(failures)
                    lines, held = [ln for b in held for ln in b], None
                elif not failures:  # only unreadable images so far: nothing to decide yet
                    lines, held = [ln for b in held for ln in b], []
                else:
                    continue
            yield lines
        if held:
            if failures:
                _stop_if_same(failures)
            yield [ln for b in held for ln in b]
    finally:
        bar.close()


def _skip(item: dict, reason: str) -> ResultLine:
    logger.warning("skipping %s: %s", item["file_name"], reason)
    return ResultLine(item["image_id"], item["file_name"], skipped=reason)


def _score_batch(models: list[nn.Module], batch: list[dict], config: Config, categories: list[dict], with_masks: bool,
                 device: str, amp: bool) -> list[ResultLine]:
    """The result lines of one batch of :class:`PoolDataset` items, in batch order."""
    lines: dict[int, ResultLine] = {}
    good = []
    for k, item in enumerate(batch):
        if "error" in item:
            lines[k] = _skip(item, item["error"])
        else:
            good.append((k, item))
    results = _run_or_skip(models, [item for _, item in good], config.passes, device, amp) if good else []
    for (k, item), res in zip(good, results):
        if isinstance(res, str):
            lines[k] = _skip(item, res)
            continue
        h, w = item["image"].shape[-2:]
        line = score_image(res, config, categories, with_masks, item["image_id"], item["file_name"], (int(w), int(h)))
        if not all(math.isfinite(v) for v in line.record.values() if isinstance(v, float)):
            line = _skip(item, "model gave non-finite scores (NaN or infinity): check the checkpoint")
        lines[k] = line
    return [lines[k] for k in range(len(batch))]


def _stop_if_same(failures: list[str]) -> None:
    """Raise if the model errors ``failures`` (the first images that reached the model, all
    failed) are one and the same error."""
    if len(set(failures)) == 1:
        raise InputError(
            f"stopped: the first {len(failures)} image{'s' if len(failures) > 1 else ''} of the pool all failed "
            f"in the model with the same error, so the model (or checkpoint, device, config) is at fault, "
            f"not the images: {failures[0]}"
        )


def consecutive_runs(labels: np.ndarray, chunk: int = 65_536) -> Iterator[list[int]]:
    """Index lists of the runs of equal consecutive values of ``labels`` ``[N]``, made as they
    are consumed (a million runs stay a numpy array, not a million Python lists)."""
    if not len(labels):
        return
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(labels)) + 1, [len(labels)]))
    for start in range(0, len(bounds) - 1, chunk):
        edges = bounds[start:start + chunk + 1].tolist()
        for a, b in zip(edges[:-1], edges[1:]):
            yield list(range(a, b))
