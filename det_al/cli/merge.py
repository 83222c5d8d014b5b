"""``det-al merge``: add labelled images to the training set and remove them from the pool."""

from __future__ import annotations

import argparse
from pathlib import Path

from det_al.data.coco import load_coco
from det_al.errors import InputError
from det_al.data.files import write_json
from det_al.annotation.merge import merge_labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", "-t", required=True, help="COCO training set")
    parser.add_argument("--labels", "-l", required=True, help="labels.json written by det-al import")
    parser.add_argument("--pool", "-p", help="COCO pool the labelled images came from")
    parser.add_argument("--out", "-o", required=True,
                        help="output folder: train.json (and pool.json); inputs are never modified")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    outputs = [out / "train.json"] + ([out / "pool.json"] if args.pool else [])
    inputs = [Path(p) for p in (args.train, args.labels, args.pool) if p]
    for o in outputs:
        for i in inputs:
            if o.resolve() == i.resolve():
                raise InputError(f"output {o} would overwrite an input: choose another --out")
    train = load_coco(args.train)
    labels = load_coco(args.labels)
    pool = load_coco(args.pool) if args.pool else None
    result = merge_labels(train, labels, pool, paths=(args.train, args.labels, args.pool))
    write_json(out / "train.json", result.train)
    if args.pool:
        write_json(out / "pool.json", result.pool)
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
