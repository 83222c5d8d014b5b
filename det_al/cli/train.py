"""``det-al train``: train a detector on a COCO file, with periodic COCO evaluation.

Under ``torchrun --nproc-per-node K -m det_al train ...`` the K processes train one model with
DistributedDataParallel (see :func:`det_al.loop.training.train_model`); rank 0 writes and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (model and train sections)")
    parser.add_argument("--train", "-t", required=True, help="COCO JSON of the training images, with annotations")
    parser.add_argument("--val", help="COCO JSON evaluated every train.eval_every epochs (best.pt follows its bbox AP)")
    parser.add_argument("--image-root", "-r", help="folder the file_name entries are relative to (default: the training file's folder)")
    parser.add_argument("--out", "-o", required=True, help="output folder: last.pt, best.pt, metrics.jsonl, summary.json")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (raise train.epochs to train further)")
    parser.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds an earlier training")
    parser.add_argument("--init", metavar="CHECKPOINT", help="start from these weights (det_al checkpoint or torchvision state dict)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. --set train.epochs=3")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, help="seed (train.seed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read file_name entries that lie outside --image-root (absolute paths, ../)")


def run(args: argparse.Namespace) -> int:
    from det_al.config import config_to_dict, load_config
    from det_al.run.distributed import fail_together, is_main, process_group
    from det_al.errors import InputError
    from det_al.loop.evaluation import format_table
    from det_al.data.files import write_json
    from det_al.loop.training import train_model

    with process_group(args.device) as device:
        with fail_together():  # under torchrun, bad options stop every rank with their message
            if args.resume and args.init:
                raise InputError("--resume and --init exclude each other (resume continues OUT/last.pt)")
            if args.resume and args.overwrite:
                raise InputError("--resume and --overwrite exclude each other (continue OUT/last.pt, or start over)")
            overrides = list(args.overrides) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
            config = load_config(args.config, overrides)
            if not config.model.name:
                raise InputError("the config names no model (model.name)", args.config)
        image_root = Path(args.image_root) if args.image_root else Path(args.train).parent
        summary = train_model(
            config, args.train, image_root, args.out, val_json=args.val, init_checkpoint=args.init,
            resume=args.resume, device=device, progress=not args.no_progress, overwrite=args.overwrite,
            allow_outside_root=args.allow_outside_root,
        )
        if not is_main():
            return 0
    if config.model.num_classes is None:
        print(f"model.num_classes not set in {args.config}: used {summary['num_classes']} "
              f"({summary['num_classes'] - 1} categories of {args.train} + background)")
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=summary["num_classes"]))
    write_json(Path(args.out) / "summary.json", {**summary, "config": config_to_dict(config)}, indent=1)
    cap = " (stopped at train.max_minutes)" if summary["stopped_early"] else ""
    loss = "-" if summary["final_loss"] is None else f"{summary['final_loss']:.4f}"
    print(f"trained {summary['epochs']} epochs, {summary['iterations']} iterations in {summary['seconds']:.0f} s{cap}; last loss {loss}")
    if summary["metrics"] is not None:
        print(format_table(summary["metrics"]), end="")
        print(f"best bbox AP {summary['best_map']:.4f} at epoch {summary['best_epoch']}: {summary['best']}")
    print(f"last checkpoint: {summary['last']}")
    return 0
