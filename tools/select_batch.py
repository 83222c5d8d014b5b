"""Pick a batch of images from a scored pool with a selection strategy.

In the style of torchvision's ``references/detection/train.py``::

    python tools/select_batch.py --scores work/scores --strategy diverse --budget 20 --out work/batch1
    python tools/select_batch.py --scores work/scores --strategy top:box --budget-boxes 150 --out work/batch1
    python tools/select_batch.py --scores work/scores --strategy class-balanced --budget 20 --out work/batch1

``--scores`` is the output folder of ``det-al score`` / ``tools/score_pool.py``; its
``embeddings.npy`` (and ``labelled_embeddings.npy``, when scored with ``--labelled``) feed the
``diverse`` strategy, its ``pseudo_labels.json`` the predicted classes of ``class-balanced``
and the selection file. Writes ``selection.json`` (COCO: the chosen images in rank order with
their pseudo-labels) into ``--out``. Strategies: see :mod:`det_al.selection.strategies`.

(Not named ``select.py``: Python puts a script's folder first on ``sys.path``, and a
``tools/select.py`` would shadow the standard library's ``select`` module for every script in
``tools/``, which then fail on ``import torch``.)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


import det_al
from det_al.errors import InputError, print_error
from det_al.selection.strategies import STRATEGIES


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="det_al batch selection", add_help=add_help)
    parser.add_argument("--scores", required=True, help="output folder of det-al score")
    parser.add_argument("--out", "--work-dir", dest="out", required=True, help="output folder (selection.json)")
    parser.add_argument("--strategy", help=f"one of {', '.join(STRATEGIES)}; NAME:KEY ranks by KEY (top:class, top:novelty); "
                        "default: fused when the scores have novelty, else top")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", "-n", type=int, help="images to select")
    budget.add_argument("--budget-boxes", type=int, help="predicted boxes to select at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--pre-factor", type=float, default=3.0, help="diverse: candidates per budget slot")
    parser.add_argument("--labelled-embeddings", help="[M, D] .npy of the labelled set (default: the scores folder's, if any)")
    return parser


def main(args: argparse.Namespace) -> dict:
    scores = det_al.Scores.load(args.scores)
    selection = det_al.select(
        scores, args.strategy, budget=args.budget, budget_boxes=args.budget_boxes, seed=args.seed,
        pre_factor=args.pre_factor, labelled_embeddings=args.labelled_embeddings,
    )
    out = selection.save(Path(args.out) / "selection.json")
    by_id = {r["image_id"]: r for r in scores.ranking}
    boxes = sum(int(by_id[i].get("n_objects", 0)) for i in selection.image_ids)
    print(f"{selection.strategy}: selected {len(selection)} of {len(scores)} images ({boxes} predicted objects) -> {out}")
    return selection.coco


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except InputError as e:
        print_error("select_batch.py", e)
        sys.exit(2)
