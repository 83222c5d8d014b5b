"""``det-al merge``: add labelled images to the training set and remove them from the pool."""

from __future__ import annotations

import argparse
from pathlib import Path



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", "-t", required=True, help="COCO training set")
    parser.add_argument("--labels", "-l", required=True, help="labels.json written by det-al import")
    parser.add_argument("--pool", "-p", help="COCO pool the labelled images came from")
    parser.add_argument("--out", "-o", required=True,
                        help="output folder: train.json (and pool.json); inputs are never modified")


def run(args: argparse.Namespace) -> int:
    import det_al

    out = Path(args.out)
    result = det_al.merge(args.train, args.labels, args.pool, out)
    print(f"train: +{result.n_added_images} images, +{result.n_added_annotations} annotations "
          f"-> {len(result.train['images'])} images -> {out / 'train.json'}")
    if args.pool:
        n_pool = len(result.pool["images"])
        print(f"pool: -{result.n_removed_from_pool} images -> {n_pool} images -> {out / 'pool.json'}")
    if result.not_in_pool and args.pool:
        print(f"note: {len(result.not_in_pool)} labelled images were not in the pool (first: {result.not_in_pool[0]})")
    if result.renumbered_images:
        print(f"note: {len(result.renumbered_images)} image ids were taken in the training set and were renumbered")
    return 0
