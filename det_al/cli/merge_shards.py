"""``det-al merge-shards``: join the outputs of sharded scoring jobs into one ranking."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="the --out folders of the N shard jobs")
    parser.add_argument("--out", "-o", required=True, help="output folder of the merged run")


def run(args: argparse.Namespace) -> int:
    from det_al.run.shards import merge_shards

    counts = merge_shards(args.shards, args.out)
    print(
        f"merged {len(args.shards)} shards: {counts['n_scored']} images ranked, "
        f"{counts['n_skipped']} skipped -> {args.out}/ranking.jsonl"
    )
    return 0
