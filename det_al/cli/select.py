"""``det-al select``: pick a batch of images from a ranking, with their pseudo-labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from det_al.errors import InputError
from det_al.selection.strategies import STRATEGIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranking", required=True, help="ranking.jsonl written by det-al score (its folder holds the pseudo-labels and embeddings)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", "-n", type=int, help="number of images to select")
    budget.add_argument("--budget-boxes", type=int, help="at most this many predicted boxes (annotation cost grows with objects)")
    parser.add_argument("--out", "-o", required=True, help="output folder (selection.json is written there)")
    parser.add_argument(
        "--strategy",
        help=f"one of {', '.join(STRATEGIES)}; top:KEY ranks by any numeric ranking field (top:class, top:dense, "
             "top:least_confidence, top:novelty, ...); diverse:fused pre-filters by the fusion (default: class-balanced:fused "
             "when the ranking was scored with det-al score --labelled TRAIN.json; fused when it has novelty alone; else top)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--pre-factor", type=float, default=3.0, help="diverse: uncertain candidates per budget slot")
    parser.add_argument("--labelled-embeddings", help="[M, D] .npy of the labelled set's embeddings (diverse)")
    parser.add_argument("--fusion-weights", default="informativeness=1,novelty=1", metavar="FIELD=W,...",
                        help="fused: ranking fields and their weights in the reciprocal-rank fusion")
    parser.add_argument("--fusion-k", type=float, default=60.0, help="fused: the reciprocal-rank constant k in w / (k + rank)")


def parse_weights(text: str) -> dict[str, float]:
    """``"informativeness=1,novelty=0.5"`` -> ``{"informativeness": 1.0, "novelty": 0.5}``."""
    weights = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InputError(f"--fusion-weights expects FIELD=WEIGHT,..., got '{text}'")
    return weights


def run(args: argparse.Namespace) -> int:
    from det_al.api import Scores, select

    if args.budget is not None and args.budget < 1:
        raise InputError(f"--budget must be at least 1, got {args.budget}")
    if args.budget_boxes is not None and args.budget_boxes < 1:
        raise InputError(f"--budget-boxes must be at least 1, got {args.budget_boxes}")
    scores = Scores.load(args.ranking)
    selection = select(  # strategy None: select's default for this ranking
        scores, args.strategy, budget=args.budget, budget_boxes=args.budget_boxes, seed=args.seed,
        pre_factor=args.pre_factor, labelled_embeddings=args.labelled_embeddings,
        fusion_weights=parse_weights(args.fusion_weights), fusion_k=args.fusion_k,
    )
    out = selection.save(Path(args.out) / "selection.json")
    print(
        f"{selection.strategy}: selected {len(selection)} of {len(scores)} images "
        f"({selection.n_annotations} pseudo-labels) -> {out}"
    )
    return 0
