"""``det-al retrain``: fine-tune the served model on the journalled annotations and rescore
(see :mod:`det_al.serve.retrain`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--journal", "-j", required=True, help="the journal det-al serve writes (annotation events)")
    parser.add_argument("--checkpoint", "-c", required=True, help="the served checkpoint (the starting weights)")
    parser.add_argument("--out", "-o", required=True, help="new folder: labels.json, train.json, model/, scores/, retrain.json")
    parser.add_argument("--image-root", "-r", help="as given to det-al serve (file names of train/pool/scores are relative to it)")
    parser.add_argument("--local-files-root", help="as given to det-al serve")
    parser.add_argument("--url-prefix", help="as given to det-al serve")
    parser.add_argument("--train", "-t", help="COCO training set the labels are added to (default: the labels alone)")
    parser.add_argument("--pool", help="COCO pool to rescore, less the labelled images (default: every image under --image-root)")
    parser.add_argument("--project", help="only this Label Studio project's events (its id)")
    parser.add_argument("--config", help="YAML config (default: the checkpoint's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set train.epochs=2")
    parser.add_argument("--passes", "-T", type=int, help="passes of the rescoring (default: the config's)")
    parser.add_argument("--seed", type=int, help="seed of the rescoring passes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from det_al.serve.retrain import retrain

    record = retrain(args.journal, args.checkpoint, args.out, image_root=args.image_root,
                     local_files_root=args.local_files_root, url_prefix=args.url_prefix, train=args.train,
                     pool=args.pool, config=args.config, overrides=args.overrides, project=args.project,
                     passes=args.passes, seed=args.seed, device=args.device, progress=not args.no_progress)
    print(record["import"])
    print(f"new model version {record['model_version']}: {record['checkpoint']}, scores {record['scores']}")
    print("next: restart det-al serve with --checkpoint and --scores above (same --model-version default), then "
          "PATCH /api/ml/ID {\"url\": ..., \"project\": ..., \"title\": \"" + record["model_version"] + "\"} "
          "so that the project's model version follows")
    return 0
