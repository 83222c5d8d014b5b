"""``det-al loop``: simulate train -> select -> label rounds and compare strategies.

Example::

    det-al loop config.yaml --labelled labelled.json --pool pool.json --oracle oracle.json \\
        --val val.json --image-root images/ --out loop_out \\
        --strategies random,top,diverse --rounds 4 --budget 20 --seeds 0,1,2

Writes ``results.csv`` (one row per strategy, seed and round), ``learning_curve.png`` and
the per-round checkpoints under ``runs/``. ``--resume`` continues a run after a crash.
Under ``torchrun --nproc-per-node K -m det_al loop ...`` each round's training runs on the K
processes (DistributedDataParallel); rank 0 evaluates, scores, selects, writes and prints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from det_al.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (model, train, passes, scoring, loop sections)")
    parser.add_argument("--labelled", "-l", required=True, help="COCO JSON of the initial labelled set")
    parser.add_argument("--pool", "-p", required=True, help="COCO JSON of the unlabelled pool")
    parser.add_argument("--oracle", required=True, help="COCO JSON with the pool's true labels (revealed when selected)")
    parser.add_argument("--val", required=True, help="COCO JSON of the validation set (bbox mAP each round)")
    parser.add_argument("--image-root", "-r", help="folder the file_name entries are relative to (default: the labelled file's folder)")
    parser.add_argument("--out", "-o", required=True, help="output folder")
    parser.add_argument("--strategies", help="comma-separated strategies (loop.strategies), e.g. random,top,top:class,diverse")
    parser.add_argument("--rounds", type=int, help="selection rounds after the first training (loop.rounds)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=int, help="images selected per round (loop.budget)")
    budget.add_argument("--budget-boxes", type=int, help="predicted boxes selected per round (loop.budget_boxes)")
    parser.add_argument("--seeds", help="comma-separated seeds (loop.seeds), e.g. 0,1,2")
    parser.add_argument("--retrain", choices=("scratch", "finetune"), help="loop.retrain")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test: 4 labelled, 8 pool, 4 val images, one seed, one round, one epoch")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out, skipping completed rounds")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. --set train.epochs=5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read file_name entries that lie outside --image-root (absolute paths, ../)")


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise InputError(f"{what} must be comma-separated integers, got '{text}'") from e


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides that the loop's own options stand for, then the user's."""
    out = []
    if args.strategies is not None:
        names = [s.strip() for s in args.strategies.split(",") if s.strip()]
        out.append("loop.strategies=[" + ",".join(f"'{s}'" for s in names) + "]")
    if args.rounds is not None:
        out.append(f"loop.rounds={args.rounds}")
    if args.budget is not None:
        out += [f"loop.budget={args.budget}", "loop.budget_boxes=0"]
    if args.budget_boxes is not None:
        out.append(f"loop.budget_boxes={args.budget_boxes}")
    if args.seeds is not None:
        out.append(f"loop.seeds=[{','.join(str(s) for s in _int_list(args.seeds, '--seeds'))}]")
    if args.retrain is not None:
        out.append(f"loop.retrain={args.retrain}")
    return out + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    from det_al.config import load_config
    from det_al.run.distributed import fail_together, is_main, process_group
    from det_al.loop.rounds import run_loop
    from det_al.loop.data import LoopData, quick_config
    from det_al.loop.results import format_efficiency, format_summary, label_efficiency, read_rows

    with process_group(args.device) as device:
        with fail_together():  # under torchrun, bad input stops every rank with its message
            config = load_config(args.config, overrides(args))
            if args.quick:
                config = quick_config(config)
            image_root = Path(args.image_root) if args.image_root else Path(args.labelled).parent
            data = LoopData.load(args.labelled, args.pool, args.oracle, args.val, image_root, quick=args.quick,
                                 allow_outside_root=args.allow_outside_root)
        loop = config.loop
        budget = f"{loop.budget_boxes} boxes" if loop.budget_boxes > 0 else f"{loop.budget} images"
        if is_main():
            print(
                f"loop: {len(data.labelled['images'])} labelled, {len(data.pool['images'])} pool, "
                f"{len(data.val['images'])} val images; strategies {', '.join(loop.strategies)}; "
                f"{loop.rounds} rounds of {budget}; seeds {', '.join(map(str, loop.seeds))}; retrain {loop.retrain}"
            )
        start = time.perf_counter()
        paths = run_loop(
            config, data, args.out, resume=args.resume, device=device, progress=not args.no_progress,
            run_info={
                "config": str(args.config), "labelled": str(args.labelled), "pool": str(args.pool),
                "oracle": str(args.oracle), "val": str(args.val), "quick": bool(args.quick),
            },
        )
        if not is_main():
            return 0
    rows = read_rows(paths["results"])
    print(format_summary(rows))
    if "random" in loop.strategies and len(loop.strategies) > 1:
        print(format_efficiency(label_efficiency(rows)))
    print(f"wrote {paths['results']} and {paths['plot']} ({time.perf_counter() - start:.0f} s)")
    return 0
