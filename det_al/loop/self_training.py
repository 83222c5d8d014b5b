"""Self-training: the pool's confident pseudo-labels as extra training data.

torchvision's detectors have no "ignore" region in their targets: every pixel that no target
box covers is background to the RPN and the box head. A pseudo-labelled image whose uncertain
detections were simply dropped would teach the model that those (possibly real) objects are
background. The closest the framework allows is to take them out of the image: they are kept
as *ignore* annotations (``"iscrowd": 1, "ignore": 1``, so COCO tools see ignore regions too),
and :class:`det_al.data.datasets.CocoDetectionDataset` paints each one over with the image's
mean colour before augmentation and trains on no box there. So :func:`pseudo_labelled`, per
pool image:

- detections scoring ``>= threshold`` become its labels (at least one is needed: an image
  where the model sees nothing may be one it is blind on, and would teach "all background");
- detections scoring in ``[ignore, threshold)`` become ignore annotations (erased, neither
  object nor background);
- detections below ``ignore`` are treated as background, as the model's own unreported
  candidates are.

The images keep their ids; annotation ids are assigned by the caller.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

# the COCO fields of a pseudo-label that training reads (the uncertainty fields stay behind)
_KEEP = ("image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")


def pseudo_labelled(
    images: Sequence[Mapping[str, Any]],
    detections: Iterable[Mapping[str, Any]],
    threshold: float,
    ignore: float,
    categories: Sequence[Mapping[str, Any]] = (),
) -> dict:
    """The images of ``images`` with at least one confident detection (COCO, with ``score``):
    their detections scoring ``>= threshold`` as annotations, those in ``[ignore, threshold)``
    as ignore annotations (``iscrowd: 1, ignore: 1``), both without ids, as a COCO dict;
    ``categories`` are copied into it. A detection without a category (``category_id < 0``)
    cannot be a label or an ignore region: one scoring ``>= ignore`` leaves its image out (it
    may be a real object), one below ``ignore`` is background like the rest.

    >>> images = [{"id": 1}, {"id": 2}, {"id": 3}]
    >>> dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.9},
    ...         {"image_id": 1, "category_id": 2, "bbox": [5, 5, 2, 2], "score": 0.1},
    ...         {"image_id": 2, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.95},
    ...         {"image_id": 2, "category_id": 1, "bbox": [8, 8, 4, 4], "score": 0.5}]
    >>> out = pseudo_labelled(images, dets, threshold=0.8, ignore=0.3)
    >>> [im["id"] for im in out["images"]], [(a["image_id"], a["iscrowd"]) for a in out["annotations"]]
    ([1, 2], [(1, 0), (2, 0), (2, 1)])
    """
    by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for d in detections:
        by_image[int(d["image_id"])].append(d)
    kept_images, annotations = [], []
    for im in images:
        dets = by_image.get(int(im["id"]), [])
        confident = [d for d in dets if float(d["score"]) >= threshold and int(d["category_id"]) >= 0]
        uncertain = [d for d in dets if ignore <= float(d["score"]) < threshold and int(d["category_id"]) >= 0]
        unnamed = [d for d in dets if float(d["score"]) >= ignore and int(d["category_id"]) < 0]
        if not confident or unnamed:
            continue
        kept_images.append(dict(im))
        for d, ignored in [(d, False) for d in confident] + [(d, True) for d in uncertain]:
            ann = {k: d[k] for k in _KEEP if k in d and not (ignored and k == "segmentation")}
            ann.setdefault("area", float(d["bbox"][2]) * float(d["bbox"][3]))
            ann["iscrowd"] = int(ignored)
            if ignored:
                ann["ignore"] = 1
            annotations.append(ann)
    return {"images": kept_images, "annotations": annotations, "categories": list(categories)}
