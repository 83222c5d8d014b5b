"""One active-learning round over the Python API: score a pool, pick a batch, hand it to Label
Studio; then, when the annotators are done, read their work back and grow the training set.

    python tools/one_round.py select --checkpoint work/best.pt --pool pool.json --budget 50 \\
        --out round1 --local-files-root /data
    # ... annotate round1/ls/tasks.json in Label Studio, export its JSON to round1/export.json ...
    python tools/one_round.py merge --round round1 --export round1/export.json \\
        --train train.json --pool pool.json --out round1/next

An example to copy from, not a second front end: ``det-al score``, ``select``, ``export``,
``import`` and ``merge`` do the same with every option.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import det_al


def select_round(args: argparse.Namespace) -> None:
    model = det_al.load_model(args.checkpoint)
    scores = det_al.score_images(model, args.pool, passes=args.passes, seed=0, labelled=args.labelled)
    batch = det_al.select(scores, budget=args.budget)  # fused when scored with --labelled, else top
    batch.save(Path(args.out) / "selection.json")
    # the scores remember where the pool's images are: no image root to repeat
    done = det_al.export_label_studio(batch, Path(args.out) / "ls", local_files_root=args.local_files_root)
    print(f"{batch.strategy}: {len(batch)} of {len(scores)} images -> {done.files['tasks']}")


def merge_round(args: argparse.Namespace) -> None:
    labels = det_al.import_label_studio(args.export, Path(args.round) / "selection.json")
    result = det_al.merge(args.train, labels.labels, args.pool, out_dir=args.out)
    print(f"{labels.report.summary()}; train +{result.n_added_images} images -> {Path(args.out) / 'train.json'}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    s = steps.add_parser("select", help="score the pool, select a batch, export it for Label Studio")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--pool", required=True, help="COCO pool file or folder of images")
    s.add_argument("--labelled", help="COCO file of the training set: adds novelty")
    s.add_argument("--budget", type=int, default=50)
    s.add_argument("--passes", type=int, default=10)
    s.add_argument("--local-files-root", required=True, help="Label Studio's local-files document root")
    s.add_argument("--out", required=True)
    m = steps.add_parser("merge", help="read Label Studio's JSON export back and merge it into the training set")
    m.add_argument("--round", required=True, help="the --out of the select step")
    m.add_argument("--export", required=True, help="Label Studio's JSON export")
    m.add_argument("--train", required=True)
    m.add_argument("--pool", required=True)
    m.add_argument("--out", required=True)
    return parser


def main(args: argparse.Namespace) -> None:
    if args.step == "select":
        select_round(args)
    else:
        merge_round(args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
