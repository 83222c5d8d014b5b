"""Train a torchvision detector on a COCO file with det_al (the script form of ``det-al train``).

In the style of torchvision's ``references/detection/train.py``::

    python tools/train.py configs/maskrcnn_tiny.yaml --train train.json --val val.json \
        --image-root images --out work/run1 --set train.epochs=20

    # continue it, with more epochs
    python tools/train.py configs/maskrcnn_tiny.yaml --train train.json --val val.json \
        --image-root images --out work/run1 --resume --set train.epochs=30

    # on 4 GPUs (DistributedDataParallel, see the README)
    torchrun --nproc-per-node 4 tools/train.py configs/maskrcnn_resnet50_fpn.yaml --train train.json \
        --val val.json --image-root images --out work/run2 --device cuda

    # evaluate a checkpoint only
    python tools/train.py configs/maskrcnn_tiny.yaml --val val.json --image-root images \
        --out work/eval --test-only --init work/run1/best.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from det_al.models.checkpoint import load_checkpoint
from det_al.data.coco import load_coco
from det_al.scoring.distributed import is_main
from det_al.config import load_config
from det_al.errors import InputError, print_error
from det_al.loop.evaluation import evaluate_coco, format_table, predict
from det_al.data.files import write_json, write_text
from det_al.models.build import has_masks
from det_al.loop.training import train_model


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="det_al detection training", add_help=add_help)
    parser.add_argument("config", help="YAML config (model and train sections)")
    parser.add_argument("--train", help="COCO JSON of the training images")
    parser.add_argument("--val", help="COCO JSON for evaluation")
    parser.add_argument("--image-root", help="folder of the images (default: the folder of --train, else --val)")
    parser.add_argument("--out", "--work-dir", dest="out", required=True, help="output folder")
    parser.add_argument("--device", default="cpu", help="device (cpu, cuda, ...)")
    parser.add_argument("--seed", type=int, help="seed (train.seed)")
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("-b", "--batch-size", type=int, help="train.batch_size")
    parser.add_argument("--lr", type=float, help="train.lr")
    parser.add_argument("-j", "--workers", type=int, help="train.num_workers")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds an earlier training")
    parser.add_argument("--init", help="checkpoint to start from (or to evaluate with --test-only)")
    parser.add_argument("--test-only", action="store_true", help="only evaluate --init on --val")
    parser.add_argument("--set", "--cfg-options", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser


def evaluate_only(args: argparse.Namespace, config) -> dict:
    if not args.init or not args.val:
        raise InputError("--test-only needs --init CHECKPOINT and --val")
    val = load_coco(args.val, require_annotations=True)
    model, _, categories, _ = load_checkpoint(args.init, config, device=args.device, categories=val["categories"])
    image_root = Path(args.image_root) if args.image_root else Path(args.val).parent
    results = predict(model, val, image_root, categories, device=args.device, progress=True)
    metrics = evaluate_coco(val, results, ("bbox", "segm") if has_masks(model) else ("bbox",))
    write_json(Path(args.out) / "metrics.json", metrics, indent=1)
    write_text(Path(args.out) / "metrics.txt", format_table(metrics))
    print(format_table(metrics), end="")
    return metrics


def main(args: argparse.Namespace) -> dict:
    overrides = []
    for key, value in (("seed", args.seed), ("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr), ("num_workers", args.workers)):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    config = load_config(args.config, overrides + list(args.overrides))
    if args.test_only:
        return evaluate_only(args, config)
    if not args.train:
        raise InputError("--train is required (unless --test-only)")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other (continue OUT/last.pt, or start over)")
    image_root = Path(args.image_root) if args.image_root else Path(args.train).parent
    summary = train_model(
        config, args.train, image_root, args.out, val_json=args.val, init_checkpoint=args.init,
        resume=args.resume, device=args.device, overwrite=args.overwrite,
    )
    if not is_main():  # under torchrun: rank 0 reports
        return summary
    if summary["metrics"] is not None:
        print(format_table(summary["metrics"]), end="")
    print(f"epochs {summary['epochs']}, iterations {summary['iterations']}, best bbox AP {summary['best_map']}, checkpoint {summary['checkpoint']}")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except InputError as e:
        print_error("train.py", e)
        sys.exit(2)
