"""``det-al select``: pick a batch of images from a ranking, with their pseudo-labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from det_al.coco import load_coco
from det_al.errors import InputError
from det_al.files import write_json
from det_al.selection import STRATEGIES, read_ranking, select_batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranking", required=True, help="ranking.jsonl written by det-al score")
    parser.add_argument("--budget", "-n", type=int, required=True, help="number of images to select")
    parser.add_argument("--out", "-o", required=True, help="output folder (selection.json is written there)")
    parser.add_argument(
        "--pseudo-labels", help="pseudo_labels.json of the same run (default: the one beside the ranking)"
    )
    parser.add_argument("--strategy", default="top", choices=sorted(STRATEGIES), help="how to choose (default: top)")


def run(args: argparse.Namespace) -> int:
    if args.budget < 1:
        raise InputError(f"--budget must be at least 1, got {args.budget}")
    ranking_path = Path(args.ranking)
    pseudo_path = Path(args.pseudo_labels) if args.pseudo_labels else ranking_path.parent / "pseudo_labels.json"
    ranking = read_ranking(ranking_path)
    pseudo_labels = load_coco(pseudo_path)
    selection = select_batch(ranking, pseudo_labels, args.budget, args.strategy, pseudo_path)
    out = Path(args.out) / "selection.json"
    write_json(out, selection, indent=1)
    n = len(selection["images"])
    print(f"selected {n} of {len(ranking)} images ({len(selection['annotations'])} pseudo-labels) -> {out}")
    return 0
