"""What ``passes.masks: shared`` costs in mask agreement and ranking, on a trained Mask R-CNN.

Random weights (``bench_passes.py``) say nothing about quality: their masks hover around 0.5 and
their detections reshuffle from pass to pass. This script uses the checkpoint and pool that
``det-al demo --out DIR`` leaves behind (maskrcnn_tiny trained on synthetic shapes, half of the
pool drifted) and prints, for ``exact`` and ``shared``:

- on the first ``--images`` pool images: the share of pass detections within box IoU 0.5 of a
  deterministic detection (the members of the objects it reports, the only masks the mask
  disagreement reads), and the mask IoU (``p > 0.5``) between their shared and exact masks;
- on the whole pool: scoring seconds and how many drifted images reach the top quarter.

Usage::

    det-al demo --out demo_out
    python benchmarks/bench_shared_masks.py --demo demo_out [--images 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from det_al.models.checkpoint import load_checkpoint
from det_al.data.coco import load_coco
from det_al.data.images import read_image, to_tensor
from det_al.inference.passes import run_passes
import det_al


def with_masks(config, mode: str):
    return dataclasses.replace(config, passes=dataclasses.replace(config.passes, masks=mode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="the --out folder of det-al demo")
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    model, config, categories, _ = load_checkpoint(args.demo / "train" / "last.pt")
    root = args.demo / "data"
    pool = load_coco(root / "pool.json")
    near = total = 0
    ious: list[float] = []
    for im in pool["images"][: args.images]:
        x = to_tensor(read_image(root / im["file_name"]))
        exact, shared = (run_passes(model, [x], with_masks(config, m).passes, seeds=[im["id"]])[0]
                         for m in ("exact", "shared"))
        det = exact.deterministic.boxes
        for a, b in zip(exact.passes, shared.passes):
            total += len(a)
            if not (len(a) and len(det)):
                continue
            close = box_iou(a.boxes, det).max(1).values >= 0.5
            near += int(close.sum())
            ma, mb = a.masks[close] > 0.5, b.masks[close] > 0.5
            union = (ma | mb).flatten(1).sum(1)
            inter = (ma & mb).flatten(1).sum(1)
            ious += (inter[union > 0] / union[union > 0]).tolist()
    print(f"{args.images} images, {config.passes.passes} passes: {near}/{total} pass detections near a "
          f"deterministic one; mask IoU shared vs exact: mean {np.mean(ious):.3f}, median "
          f"{np.median(ious):.3f}, 10th percentile {np.percentile(ious, 10):.3f}")
    domain = {im["id"]: im.get("domain") for im in pool["images"]}
    print(f"{'masks':<8} {'score s':>8} {'drifted in top quarter':>24}")
    for mode in ("exact", "shared"):
        torch.manual_seed(0)
        start = time.perf_counter()
        scores = det_al.score_images(model, pool, categories=categories, config=with_masks(config, mode), image_root=root,
                                     progress=False)
        seconds = time.perf_counter() - start
        quarter = len(scores.ranking) // 4
        top = sum(domain[r["image_id"]] == "drifted" for r in scores.ranking[:quarter])
        print(f"{mode:<8} {seconds:>8.1f} {f'{top}/{quarter}':>24}")


if __name__ == "__main__":
    main()
