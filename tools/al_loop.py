"""Simulate active-learning rounds and compare strategies (the script form of ``det-al loop``).

In the style of torchvision's ``references/detection/train.py``::

    python tools/al_loop.py configs/fasterrcnn_tiny.yaml --labelled labelled.json \
        --pool pool.json --oracle oracle.json --val val.json --image-root images \
        --out work/loop --strategies random,top,diverse --rounds 4 --budget 20 --seeds 0,1,2

    # after a crash: continue where it stopped
    python tools/al_loop.py ... --out work/loop --resume

Writes ``results.csv`` (one row per strategy, seed and round: mAP, labelled images and
boxes, the selected image ids) and ``learning_curve.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from det_al.cli.loop import add_arguments, overrides
from det_al.config import load_config
from det_al.errors import InputError, print_error
from det_al.loop.rounds import run_loop
from det_al.loop.data import LoopData, quick_config
from det_al.loop.results import format_efficiency, format_summary, label_efficiency, read_rows


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="det_al simulated active-learning loop", add_help=add_help)
    add_arguments(parser)  # the same options as `det-al loop`
    return parser


def main(args: argparse.Namespace) -> list[dict]:
    config = load_config(args.config, overrides(args))
    if args.quick:
        config = quick_config(config)
    image_root = Path(args.image_root) if args.image_root else Path(args.labelled).parent
    data = LoopData.load(args.labelled, args.pool, args.oracle, args.val, image_root, quick=args.quick)
    paths = run_loop(config, data, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
    rows = read_rows(paths["results"])
    print(format_summary(rows))
    if "random" in config.loop.strategies and len(config.loop.strategies) > 1:
        print(format_efficiency(label_efficiency(rows)))
    print(f"wrote {paths['results']} and {paths['plot']}")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except InputError as e:
        print_error("al_loop.py", e)
        sys.exit(2)
