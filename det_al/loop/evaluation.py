"""COCO evaluation: a detector's predictions on a COCO file, scored by pycocotools' COCOeval.

:func:`predict` runs the model over the images of a COCO file and returns the COCO *results*
list (``image_id``, the user's ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score`` and, for
Mask R-CNN, ``segmentation`` as COCO RLE). :func:`evaluate_coco` scores such a list against the
ground truth and returns COCOeval's twelve summary numbers by name for each IoU type;
:func:`format_table` prints them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.ops import box_convert
from tqdm import tqdm

from det_al.data.coco import load_results, quiet_coco
from det_al.errors import InputError
from det_al.data.images import ImageReadError, read_image, to_tensor
from det_al.inference.passes import torchvision_forward
from det_al.data.segmentation import masks_to_rles

logger = logging.getLogger(__name__)

#: COCOeval's ``stats`` in order, by name.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

#: What each metric means, as COCOeval's summary prints it.
METRIC_DESCRIPTIONS = {
    "AP": "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AP50": "AP @[IoU=0.50      | area=all | maxDets=100]",
    "AP75": "AP @[IoU=0.75      | area=all | maxDets=100]",
    "APs": "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "APm": "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "APl": "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR1": "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR10": "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR100": "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "ARs": "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "ARm": "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "ARl": "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
}

IOU_TYPES = ("bbox", "segm")


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def outputs_to_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    categories: Sequence[Mapping[str, Any]],
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """torchvision detection outputs -> COCO results.

    Args:
        outputs: one dict per image with ``boxes`` ``[N, 4]`` xyxy pixels, ``scores`` ``[N]``,
            ``labels`` ``[N]`` (model labels, ``l >= 1`` is ``categories[l - 1]``) and optionally
            ``masks`` ``[N, 1, H, W]`` probabilities.
        image_ids: the COCO image id of each output.
        categories: the user's COCO categories in label order.

    Returns:
        one dict per detection: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``,
        ``score`` and, with masks, ``segmentation`` (RLE, ``counts`` a string).
    """
    results: list[dict[str, Any]] = []
    category_ids = [int(c["id"]) for c in categories]
    for output, image_id in zip(outputs, image_ids):
        boxes = box_convert(output["boxes"].detach().float().cpu(), "xyxy", "xywh").tolist()
        scores = output["scores"].detach().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        masks = output.get("masks")
        rles = None
        if masks is not None:
            rles = masks_to_rles(masks.detach().float().cpu()[:, 0], threshold=mask_threshold)
        for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
            if not 1 <= label <= len(category_ids):
                continue  # background or a label the categories do not name
            record = {
                "image_id": int(image_id),
                "category_id": category_ids[label - 1],
                "bbox": [round(float(v), 3) for v in box],
                "score": round(float(score), 5),
            }
            if rles is not None:
                record["segmentation"] = rles[i]
            results.append(record)
    return results


def predict(
    model: nn.Module,
    coco: Mapping[str, Any],
    image_root: str | os.PathLike,
    categories: Sequence[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run ``model`` (in ``eval()``) on every image of the COCO dict ``coco``; COCO results.

    Images are read from ``image_root / file_name`` with :func:`det_al.data.images.read_image`; an
    unreadable image is an :class:`InputError`. The model's mode is restored afterwards.
    See :func:`outputs_to_results` for the records.
    """
    was_training = model.training
    model.eval()
    root = Path(image_root)
    images = list(coco.get("images", []))
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(images), desc="evaluate", unit="img", disable=not progress, leave=False)
    try:
        for batch in _batches(images, max(1, batch_size)):
            tensors = []
            for image in batch:
                try:
                    tensors.append(to_tensor(read_image(root / image["file_name"])).to(device))
                except ImageReadError as e:
                    raise InputError(f"cannot read image: {e.reason}", e.path) from e
            outputs = torchvision_forward(model, tensors)  # model(tensors), in passes.py
            results.extend(outputs_to_results(outputs, [im["id"] for im in batch], categories))
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return results


def _ground_truth(gt: Mapping[str, Any], iou_type: str) -> dict[str, Any]:
    """A copy of ``gt`` with what COCOeval needs filled in (``area``, ``iscrowd``, a box-shaped
    ``segmentation`` for segm evaluation of annotations without one); inputs stay untouched."""
    data = {
        "images": list(gt.get("images", [])),
        "categories": list(gt.get("categories", [])),
        "annotations": [],
    }
    for i, ann in enumerate(gt.get("annotations", [])):
        ann = dict(ann)
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        x, y, w, h = ann["bbox"]
        if iou_type == "segm" and not ann.get("segmentation"):
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        if "area" not in ann:
            ann["area"] = float(w * h)
        data["annotations"].append(ann)
    return data


def evaluate_coco(
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = ("bbox",),
) -> dict[str, dict[str, float]]:
    """COCOeval of ``results`` against the ground-truth COCO dict ``gt``.

    Args:
        gt: a COCO dict (``images``, ``annotations``, ``categories``).
        results: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score`` and for
            ``"segm"`` a ``segmentation``).
        iou_types: ``"bbox"`` and/or ``"segm"``.

    Returns:
        ``{iou_type: {"AP": ..., ..., "ARl": ...}}``: COCOeval's twelve ``stats`` by name
        (:data:`METRIC_NAMES`). No results give zeros; a metric with no ground truth to
        measure (``APs`` without small objects, anything without annotations) is ``-1``, as
        in COCOeval.
    """
    image_ids = {im["id"] for im in gt.get("images", [])}
    unknown = sorted({r["image_id"] for r in results} - image_ids)
    if unknown:
        raise InputError(f"results name image id {unknown[0]} that the ground truth does not have")
    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type '{iou_type}' (valid: {', '.join(IOU_TYPES)})")
        if iou_type == "segm":
            missing = sum("segmentation" not in r for r in results)
            if missing:
                raise InputError(f"segm evaluation needs a segmentation in every result ({missing} have none)")
            # without "bbox", loadRes takes area and box from the mask itself
            dets = [{k: v for k, v in r.items() if k not in ("bbox", "area")} for r in results]
        else:
            dets = [{k: v for k, v in r.items() if k not in ("segmentation", "area")} for r in results]
        coco_gt = quiet_coco(_ground_truth(gt, iou_type))
        # COCO.loadRes([]) raises: no detections give an empty results set (AP and AR 0)
        coco_dt = load_results(coco_gt, copy.deepcopy(dets))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}
    return metrics


def format_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """A text table: one row per metric, one column per IoU type (``-1`` shown as ``n/a``)."""
    types = list(metrics)
    width = max(len(d) for d in METRIC_DESCRIPTIONS.values())
    header = f"{'metric':<6}  {'meaning':<{width}}" + "".join(f"  {t:>6}" for t in types)
    lines = [header, "-" * len(header)]
    for name in METRIC_NAMES:
        cells = []
        for t in types:
            value = metrics[t].get(name, float("nan"))
            cells.append(f"  {'n/a':>6}" if value < 0 else f"  {value:6.3f}")
        lines.append(f"{name:<6}  {METRIC_DESCRIPTIONS[name]:<{width}}" + "".join(cells))
    return "\n".join(lines) + "\n"


__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "evaluate_coco",
    "format_table",
    "outputs_to_results",
    "predict",
]
