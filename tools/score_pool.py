"""Score a pool of images with a trained detector (the script form of ``det-al score``).

In the style of torchvision's ``references/detection/train.py``::

    python tools/score_pool.py --checkpoint work/run1/best.pt --pool pool.json \
        --image-root images --out work/scores --passes 10 --dropout 0.2

    # with a novelty score per image (distance to the labelled set's embeddings)
    python tools/score_pool.py --checkpoint work/run1/best.pt --pool pool.json \
        --image-root images --out work/scores --labelled train.json

Writes ``ranking.jsonl``, ``pseudo_labels.json``, ``passes.jsonl``, ``embeddings.npy`` +
``embeddings_ids.json``, ``skipped.json`` and ``run.json`` into ``--out``; with ``--labelled``
also ``labelled_embeddings.npy`` and a ``novelty`` field in every ranking record.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

import det_al
from det_al.data.coco import load_coco
from det_al.config import override_config, passes_overrides
from det_al.errors import InputError, print_error
from det_al.scoring.novelty import add_novelty, embed_images


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="det_al pool scoring", add_help=add_help)
    parser.add_argument("--checkpoint", "-k", required=True, help="det_al checkpoint")
    parser.add_argument("--pool", "-p", required=True, help="COCO JSON of the pool")
    parser.add_argument("--image-root", help="folder of the images (default: the folder of --pool)")
    parser.add_argument("--out", "--work-dir", dest="out", required=True, help="output folder")
    parser.add_argument("--labelled", help="COCO JSON of the labelled set: adds a novelty score per image")
    parser.add_argument("--passes", type=int, help="passes.passes")
    parser.add_argument("--dropout", type=float, help="passes.dropout")
    parser.add_argument("--seed", type=int, help="passes.seed")
    parser.add_argument("-b", "--batch-size", type=int, help="passes.batch_size")
    parser.add_argument("--device", default="cpu", help="device (cpu, cuda, ...)")
    parser.add_argument("--set", "--cfg-options", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser


def main(args: argparse.Namespace) -> dict:
    overrides = passes_overrides(passes=args.passes, dropout=args.dropout, seed=args.seed, batch_size=args.batch_size)
    model, stored, categories = det_al.load_model(args.checkpoint, device=args.device)
    config = override_config(stored, overrides + list(args.overrides), args.checkpoint)
    image_root = Path(args.image_root) if args.image_root else Path(args.pool).parent
    out = Path(args.out)

    start = time.perf_counter()
    scores = det_al.score_images(model, args.pool, categories=categories, config=config, image_root=image_root,
                                 device=args.device)
    scores.run.update({"checkpoint": str(args.checkpoint), "pool": str(args.pool)})
    if args.labelled:
        labelled_emb, _ = embed_images(model, load_coco(args.labelled), image_root, device=args.device)
        scores.ranking = add_novelty(scores.ranking, scores.embeddings, scores.embedding_ids, labelled_emb)
        scores.labelled_embeddings = np.asarray(labelled_emb)
    scores.save(out)
    records = scores.ranking
    seconds = time.perf_counter() - start
    print(f"scored {len(records)} images in {seconds:.1f} s, skipped {len(scores.skipped)}")
    for r in records[:10]:
        novelty = f"  novelty {r['novelty']:.3f}" if "novelty" in r else ""
        print(f"  #{r['rank']:<3d} {r['informativeness']:.3f}{novelty}  {r['file_name']}")
    print(f"wrote {out}/ranking.jsonl, pseudo_labels.json, embeddings.npy")
    return {"records": records, "out": out}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except InputError as e:
        print_error("score_pool.py", e)
        sys.exit(2)
