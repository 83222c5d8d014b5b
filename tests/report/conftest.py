"""The report tests' hand-written scored pool: six images whose names and categories need
escaping (a ``<script>`` category, quotes and ``<b>`` in file names), one image missing, one
skipped; handed out as the ``report_pool`` fixture."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

XSS = "<script>alert(1)</script>"
DOG = 'dog & "friends"'
WEIRD = """we<b>ird "q" 'x'.png"""
BROKEN = 'bro<b>ken</b> "x".jpg'
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": XSS}, {"id": 9, "name": DOG}]
W, H = 160, 120

# rank, file name, informativeness, certain, annotations (category id, xyxy box, uncertainty)
POOL = [
    (1, "a.png", 0.91, False, [(3, (10, 10, 60, 50), 0.8), (3, (70, 20, 120, 90), 0.5), (9, (20, 60, 60, 110), 0.2)]),
    (2, WEIRD, 0.72, False, [(7, (30, 30, 100, 100), 0.6)]),
    (3, "c.png", 0.55, True, [(9, (40, 20, 140, 100), 0.1)]),
    (4, "d.png", 0.35, True, []),
    (5, "missing.png", 0.22, False, [(3, (5, 5, 40, 40), 0.4)]),
    (6, "f.png", 0.05, False, [(9, (50, 50, 90, 90), 0.3)]),
]
# What the gallery must show when sorted by class (main class by name, then rank; no class last)
BY_CLASS = [2, 1, 5, 3, 4]


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), rng.integers(40, 200, 3), np.uint8)
    img = cv2.add(img, rng.integers(0, 30, (H, W, 3), dtype=np.uint8))
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, [W - 40, H - 40]))
        cv2.rectangle(img, (x, y), (x + 35, y + 30), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return img


def make_scores(root: Path, ranking_order: list[int] | None = None) -> tuple[Path, Path]:
    """Write images and the outputs of `det-al score` for POOL; return (scores dir, image root)."""
    images, scores = root / "images", root / "scores"
    images.mkdir(parents=True)
    scores.mkdir()
    records, coco_images, annotations, passes = [], [], [], []
    for image_id, (rank, name, info, certain, anns) in enumerate(POOL, start=1):
        if name != "missing.png":
            assert cv2.imwrite(str(images / name), _image(image_id))
        coco_images.append({"id": image_id, "file_name": name, "width": W, "height": H})
        record = {"image_id": image_id, "file_name": name, "rank": rank, "informativeness": info,
                  "class": round(info * 0.9, 3), "box": round(info * 0.5, 3), "mask": 0.0,
                  "presence": 0.1, "n_objects": len(anns), "n_detections": len(anns),
                  "certain": certain, "empty": not anns}
        if rank <= 2:
            record["novelty"] = 0.42
        records.append(record)
        for category, (x1, y1, x2, y2), u in anns:
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                   "score": 0.9, "uncertainty": u, "class_variance": u / 2, "entropy": u,
                   "mutual_information": u / 3, "box_disagreement": 0.1, "box_spread": 0.1,
                   "mask_disagreement": 0.0, "presence": 0.0}
            if name == "c.png":  # one instance mask, as Mask R-CNN writes it
                mask = np.zeros((H, W), np.uint8)
                cv2.ellipse(mask, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, 1, -1)
                rle = mask_utils.encode(np.asfortranarray(mask))
                ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            annotations.append(ann)
        if rank <= 3:
            passes.append({"image_id": image_id, "views": ["identity"] * 3, "passes": [
                [[x1 + t * 3, y1 - t, x2 - x1, y2 - y1, c, 0.8] for c, (x1, y1, x2, y2), _ in anns]
                for t in range(3)]})
    order = ranking_order or list(range(len(records)))
    (scores / "ranking.jsonl").write_text("".join(json.dumps(records[i]) + "\n" for i in order))
    (scores / "pseudo_labels.json").write_text(json.dumps(
        {"images": coco_images, "categories": CATEGORIES, "annotations": annotations}))
    (scores / "passes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passes))
    (scores / "skipped.json").write_text(json.dumps(
        [{"image_id": 99, "file_name": BROKEN, "reason": "truncated or corrupt image"}]))
    (scores / "run.json").write_text(json.dumps(
        {"det_al_version": "0.1.0", "checkpoint": "<i>ckpt</i>.pt", "n_scored": 6, "n_skipped": 1,
         "config": {"passes": {"passes": 3}}}))
    return scores, images


@pytest.fixture(scope="session")
def report_pool() -> SimpleNamespace:
    """The pool's hostile names (XSS, DOG, WEIRD, BROKEN), POOL, BY_CLASS and
    ``make_scores(root, ranking_order=None)`` -> (scores dir, image root)."""
    return SimpleNamespace(XSS=XSS, DOG=DOG, WEIRD=WEIRD, BROKEN=BROKEN, POOL=POOL, BY_CLASS=BY_CLASS,
                           make_scores=make_scores)
