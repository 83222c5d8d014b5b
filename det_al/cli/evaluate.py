"""``det-al evaluate``: COCO evaluation (bbox, and segm for Mask R-CNN) of a checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", "-k", required=True, help="det_al checkpoint (or a torchvision state dict with --config)")
    parser.add_argument("--config", "-c", help="YAML config; default: the one stored in the checkpoint")
    parser.add_argument("--val", required=True, help="COCO JSON with the ground truth")
    parser.add_argument("--image-root", "-r", help="folder the file_name entries are relative to (default: the val file's folder)")
    parser.add_argument("--out", "-o", required=True, help="output folder: metrics.json, metrics.txt, predictions.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. --set model.options.box_score_thresh=0.01")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read file_name entries that lie outside --image-root (absolute paths, ../)")


def run(args: argparse.Namespace) -> int:
    from det_al.models.checkpoint import load_checkpoint
    from det_al.data.coco import load_coco
    from det_al.config import load_config, override_config
    from det_al.loop.evaluation import evaluate_coco, format_table, predict
    from det_al.data.files import write_json, write_text
    from det_al.data.images import check_file_names, check_image_root
    from det_al.models.build import has_masks

    config = None
    if args.config:
        config = load_config(args.config, args.overrides)
    elif args.overrides:  # overrides of the checkpoint's own config
        _, stored, _, _ = load_checkpoint(args.checkpoint)
        config = override_config(stored, args.overrides, "--set")
    val = load_coco(args.val, require_annotations=True)
    image_root = Path(args.image_root) if args.image_root else Path(args.val).parent
    check_image_root(image_root)
    check_file_names(val["images"], image_root, args.val, args.allow_outside_root)
    model, config, categories, _ = load_checkpoint(args.checkpoint, config, device=args.device, categories=val["categories"])
    known = {int(c["id"]) for c in categories}
    unknown = sorted({int(c["id"]) for c in val["categories"]} - known)
    if unknown:
        logger.warning("%s: categories %s are not the model's: their objects count as missed", args.val, unknown)
    results = predict(
        model, val, image_root, categories, device=args.device, batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    iou_types = ("bbox", "segm") if has_masks(model) else ("bbox",)
    metrics = evaluate_coco(val, results, iou_types)
    table = format_table(metrics)
    out = Path(args.out)
    write_json(out / "predictions.json", results)
    write_json(out / "metrics.json", {"checkpoint": str(args.checkpoint), "val": str(args.val), "images": len(val["images"]), **metrics}, indent=1)
    write_text(out / "metrics.txt", table)
    print(table, end="")
    print(f"{len(results)} detections on {len(val['images'])} images; written to {out}")
    return 0
