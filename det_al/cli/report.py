"""``det-al report``: a static HTML report of a scored pool (opens from disk, no server)."""

from __future__ import annotations

import argparse

from det_al.report.write import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, metavar="DIR",
                        help="output folder of `det-al score` (ranking.jsonl, pseudo_labels.json, ...)")
    parser.add_argument("--image-root", metavar="DIR",
                        help="folder the pool's file_name entries are relative to (default: the one the scores remember)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="report folder to write (index.html + thumbnails/); a previous report there is replaced")
    parser.add_argument("--top", type=int, default=50, metavar="N",
                        help="images shown in the gallery, best ranked first (default: 50)")
    parser.add_argument("--loop-csv", metavar="FILE", help="metrics CSV of `det-al loop`: adds learning curves")


def run(args: argparse.Namespace) -> int:
    index = write_report(args.scores, args.image_root, args.out, top=args.top, loop_csv=args.loop_csv)
    print(f"report written: {index}")
    return 0
