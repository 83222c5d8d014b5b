"""Cost of checkpoint ensembles (issue 25): seconds per image, members x passes, one run.

Scores the same images with ``det_al.score_images`` (the whole in-memory run: the passes of
every member, matching, scoring, the ranking) in each arm ``MxT@RATE``: ``M`` members (the same
architecture, other random weights: an ensemble costs what its members cost, whatever their
training) each running ``T`` passes with dropout ``RATE``. The default arms:

  1x1@0    one model, one pass without dropout: the cost unit (a deterministic pass + one more)
  1x10@0.2 MC dropout, T = 10 (det_al's default)
  3x1@0    a plain ensemble of three (Beluch et al.): no dropout, one pass each
  3x3@0.2  three members x 3 dropout passes (9 passes, about T = 10 in all)
  3x4@0.2  three members x 4 dropout passes (12 passes)
  3x10@0.2 three members x T = 10 (30 passes)

The arms are timed in turn, ``--repeats`` rounds, and each arm's fastest round is reported (the
least disturbed by other load), with its ratio to ``1x1@0`` and to ``1x10@0.2``. Random weights
give near-uniform R-CNN scores, so the score threshold is 0 and every pass keeps its
``--detections`` best (default 100, torchvision's cap): post-processing and matching do the work
of a busy image. Images: synthetic scenes (:mod:`det_al.data.synthetic`) of ``--size`` pixels.

    python benchmarks/bench_ensemble.py [--model fasterrcnn_resnet50_fpn] [--size 512] [--images 4]
        [--repeats 2] [--threads N] [--arms 1x1@0 1x10@0.2 3x1@0 3x3@0.2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_ARMS = ("1x1@0", "1x10@0.2", "3x1@0", "3x3@0.2", "3x4@0.2", "3x10@0.2")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fasterrcnn_resnet50_fpn", help="an R-CNN builder of det_al.models.build")
    parser.add_argument("--classes", type=int, default=91, help="num_classes, background included")
    parser.add_argument("--size", type=int, default=512, help="image side and the model's min/max size")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--detections", type=int, default=100, help="detections per pass (score threshold 0)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the arms; each arm's fastest is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), metavar="MxT@RATE")
    return parser


def parse_arm(text: str) -> tuple[int, int, float]:
    """``"3x4@0.2"`` -> ``(3, 4, 0.2)``: members, passes per member, dropout rate."""
    try:
        shape, rate = text.split("@")
        members, passes = shape.split("x")
        return int(members), int(passes), float(rate)
    except ValueError:
        raise SystemExit(f"bench_ensemble: bad arm {text!r} (expected MxT@RATE, e.g. 3x4@0.2)") from None


def build_members(args: argparse.Namespace, count: int) -> list[torch.nn.Module]:
    from det_al.config import ModelConfig
    from det_al.models.build import build_model

    options = {"min_size": args.size, "max_size": args.size, "box_score_thresh": 0.0,
               "box_detections_per_img": args.detections}
    members = []
    for m in range(count):
        torch.manual_seed(m)  # other weights per member
        members.append(build_model(ModelConfig(args.model, args.classes, options)).eval())
    return members


def main(args: argparse.Namespace) -> list[dict]:
    import det_al
    from det_al.data.synthetic import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [(text, *parse_arm(text)) for text in args.arms]
    members = build_members(args, max(m for _, m, _, _ in arms))
    with tempfile.TemporaryDirectory() as tmp:
        coco = generate(tmp, args.images, "old", seed=0, size=args.size)
        root = Path(tmp) if (Path(tmp) / coco["images"][0]["file_name"]).exists() else Path(tmp) / "images"
        images = [str(root / im["file_name"]) for im in coco["images"]]

        def score(m: int, t: int, rate: float, files: list[str]):
            return det_al.score_images(members[:m], files, passes=t, dropout=rate, device=args.device, progress=False)

        score(1, 1, 0.0, images[:1])  # warm-up (allocator, lazy inits)
        best: dict[str, float] = {}
        counts: dict[str, float] = {}
        for round_ in range(args.repeats):
            for text, m, t, rate in arms:
                start = time.perf_counter()
                scores = score(m, t, rate, images)
                seconds = (time.perf_counter() - start) / len(images)
                best[text] = min(best.get(text, float("inf")), seconds)
                counts[text] = sum(r["n_objects"] for r in scores.ranking) / len(images)
                print(f"  round {round_ + 1}: {text} {seconds:.3f} s/image", flush=True)
    unit, mc = best.get("1x1@0"), best.get("1x10@0.2")
    rows = []
    print(f"{args.model}, {args.size} px, {args.images} images, {torch.get_num_threads()} threads, {args.device}, "
          f"fastest of {args.repeats} rounds")
    print(f"{'arm':>10} {'members':>7} {'T':>3} {'passes':>6} {'s/image':>8} {'x 1x1@0':>8} {'x 1x10@0.2':>10} "
          f"{'objects':>7}")
    for text, m, t, rate in arms:
        row = {"arm": text, "members": m, "passes": t, "dropout": rate, "seconds_per_image": best[text],
               "objects_per_image": counts[text]}
        rows.append(row)
        r1 = f"{best[text] / unit:.2f}" if unit else "-"
        r10 = f"{best[text] / mc:.2f}" if mc else "-"
        print(f"{text:>10} {m:>7} {t:>3} {m * t:>6} {best[text]:>8.3f} {r1:>8} {r10:>10} {counts[text]:>7.1f}")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
