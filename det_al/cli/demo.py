"""``det-al demo``: the whole job on built-in synthetic data, with no download.

Generates a small COCO data set of shapes with masks (a labelled part from the old domain and
a pool where half the images have drifted: new colours, backgrounds and scales), trains the
tiny Mask R-CNN for 7 epochs (about two minutes on 2 idle CPU cores: the same work on every
machine, however busy, so the model and its bbox AP are the same), scores the pool and prints the
top images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from det_al.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--epochs", type=int, default=7,
                        help="training epochs (default: 7, about two minutes on 2 idle CPU cores); no time cap, "
                             "so every machine trains the same model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=80, help="pool images (half of them drifted)")
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def demo_config(args: argparse.Namespace):
    from det_al.config import config_from_dict, apply_overrides

    data = {
        "model": {"name": "maskrcnn_tiny", "num_classes": 4, "options": {"min_size": 128, "max_size": 128}},
        "passes": {"passes": args.passes, "dropout": 0.3, "seed": args.seed, "batch_size": 4},
        "matching": {"iou_threshold": 0.5},
        "scoring": {},
        "train": {
            "epochs": args.epochs,
            "batch_size": 8,
            "optimizer": "adamw",
            "lr": 0.002,
            "weight_decay": 1e-4,
            "warmup_iters": 50,
            "schedule": "cosine",
            "eval_every": 0,
            "seed": args.seed,
            "max_minutes": 0,  # no time cap: a busy machine takes longer, not a worse model
            "augment": [{"name": "HorizontalFlip", "p": 0.5}],
        },
    }
    return config_from_dict(apply_overrides(data, args.overrides), "det-al demo")


def run(args: argparse.Namespace) -> int:
    import det_al
    from det_al.data.coco import load_coco
    from det_al.data.files import write_json
    from det_al.data.synthetic import make_demo_data
    from det_al.loop.training import train_model

    out = Path(args.out)
    config = demo_config(args)
    t0 = time.perf_counter()
    print(f"[1/3] generating synthetic data in {out / 'data'}")
    paths = make_demo_data(out / "data", seed=args.seed, n_pool=args.pool_size)
    image_root = Path(paths.get("image_root", out / "data"))
    if args.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {args.epochs}")
    print(f"[2/3] training {config.model.name} for {config.train.epochs} epoch{'s' if config.train.epochs != 1 else ''} "
          f"on {args.device}")
    summary = train_model(
        config, paths["train"], image_root, out / "train",
        val_json=paths.get("val"), device=args.device, progress=True, overwrite=True,  # the demo remakes everything
    )
    checkpoint = Path(summary.get("last", out / "train" / "last.pt"))
    epochs = summary.get("epochs", config.train.epochs)
    ap = ((summary.get("metrics") or {}).get("bbox") or {}).get("AP")
    reached = f", bbox AP {ap:.3f} on the validation set" if ap is not None else ""
    capped = " (stopped at train.max_minutes)" if summary.get("stopped_early") else ""
    print(f"      {epochs} epoch{'s' if epochs != 1 else ''}{capped} in {summary.get('seconds', 0):.0f} s{reached}, "
          f"checkpoint {checkpoint}")
    print(f"[3/3] scoring the pool with {config.passes.passes} MC-dropout passes")
    model, _, categories = det_al.load_model(checkpoint, config, device=args.device)
    scores = det_al.score_images(model, paths["pool"], categories=categories, config=config, image_root=image_root)
    scores.run["checkpoint"] = str(checkpoint)
    scores.save(out / "scores")
    pool = load_coco(paths["pool"])

    domain = {im["id"]: im.get("domain", "?") for im in pool["images"]}
    top = scores.ranking[:10]
    print(f"\ntop {len(top)} of {len(scores.ranking)} pool images (most informative first):")
    # the fields the default informativeness fuses by rank (scoring.image_weights)
    print(f"  {'rank':>4}  {'inform.':>7}  {'presence':>8}  {'1-conf':>6}  {'rpn_gap':>7}  {'objs':>4}  {'domain':<8} file")
    for r in top:
        print(
            f"  {r['rank']:>4}  {r['informativeness']:7.3f}  {r.get('presence', 0.0):8.3f}  "
            f"{r.get('least_confidence', 0.0):6.3f}  {r.get('rpn_gap', 0.0):7.3f}  "
            f"{r['n_objects']:>4}  {domain.get(r['image_id'], '?'):<8} {r['file_name']}"
        )
    n_top = max(1, len(scores.ranking) // 4)
    drifted_top = sum(domain.get(r["image_id"]) == "drifted" for r in scores.ranking[:n_top])
    drifted_all = sum(d == "drifted" for d in domain.values())
    print(
        f"\ndrifted images: {drifted_top}/{n_top} in the top quarter of the ranking, "
        f"{drifted_all}/{len(domain)} in the pool"
    )
    if not args.no_report:
        try:
            from det_al.report.write import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
            write_report(out / "scores", image_root, out / "report")
            print(f"report: {out / 'report' / 'index.html'}")
    print(f"outputs in {out / 'scores'} ({time.perf_counter() - t0:.0f} s in all)")
    write_json(
        out / "scores" / "demo_summary.json",
        {"drifted_in_top_quarter": drifted_top, "top_quarter": n_top, "drifted_in_pool": drifted_all,
         "epochs": epochs, "bbox_ap": ap},
    )
    return 0
