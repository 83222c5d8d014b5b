"""Benchmark ``passes.tail: candidates`` against ``exact`` on TRAINED one-stage models (issue 25).

``bench_passes.py`` measures the restricted tail's agreement with the exact computation on
random weights, where every pass fills the detection cap with new boxes: a bad proxy. No
trained one-stage model can be downloaded, so this script trains tiny ones
(``retinanet_tiny``, ``fcos_tiny``: :mod:`det_al.models.build`) on the demo's synthetic data
(``det_al.data.synthetic.make_demo_data``: old-domain training images, a mixed held-out set,
a pool where half the images have drifted), prints each model's bbox AP on the held-out set
(det_al's ``predict`` + ``evaluate_coco``), then scores the pool with T passes in three runs
per seed pair ``k`` (``--pairs``, default 5):

  exact A       ``passes.tail: exact``, seed 2k
  exact B       ``passes.tail: exact``, seed 2k + 1
  candidates A  ``passes.tail: candidates``, seed 2k

and reports four measures of agreement for ``candidates A vs exact A`` beside ``exact B vs
exact A`` (the MC noise floor an approximation cannot be asked to beat), each the mean over the
seed pairs, and their paired difference with its 95 % t-interval over the pairs (an interval
that holds 0 is "no difference"):

- ``box IoU``: per deterministic detection, the IoU of its object's mean box (over the passes
  that found it) in the two runs, averaged over the pool (``bench_passes.anchored``);
- ``object rho``: Spearman's rho of those objects' uncertainty
  (:func:`det_al.scoring.uncertainty.score_objects`), over every object of the pool;
- ``image rho``: Spearman's rho of the images' informativeness, the value det_al ranks the
  pool by (``det_al.score_images`` with the default scoring);
- ``top 1/4``: the share of the top quarter of one ranking that is in the other's.

How much the restricted tail restricts depends on how many anchors the image has: at 128 px
the tiny RetinaNet has 2,880 anchors (320 positions) and FCOS 320, so det_al's default
``passes.dense_candidates: 1000`` makes the tail evaluate about a third of RetinaNet's anchors
and every one of FCOS's (``candidates`` then differs from ``exact`` only in the order of the
dropout draws). ``--dense-candidates 1000 50`` adds a regime where the tail evaluates 10-16 %
of the positions (50 candidates plus every anchor above the score threshold), the share of
``retinanet_resnet50_fpn`` at 512 px (at most 1,000 of 5,456 positions; less at 800 px). The
share is printed with each block.

The objects come from ``run_passes`` on the pool images (the fast path, as scoring runs it);
the image values from ``det_al.score_images``, whose wall and process CPU time are the cost of
scoring the whole pool in each mode (same process, same torch thread count, printed).

Checkpoints are cached in ``--out/train_FAMILY/last.pt``: a rerun reuses them, or resumes an
interrupted training (and reuses the data in ``--out/data``); ``--checkpoint FAMILY=PATH`` scores a given det_al checkpoint instead
(loaded with ``weights_only=True``).

Usage::

    python benchmarks/bench_tail_agreement.py [--out bench_tail_out] [--families retinanet fcos]
        [--passes 10 20] [--pairs 5] [--dense-candidates 1000 50] [--epochs 40] [--pool-size 80] [--threads 2] [--checkpoint FAMILY=PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_passes import anchored  # noqa: E402

import det_al  # noqa: E402
from det_al.config import Config, config_from_dict  # noqa: E402
from det_al.data.coco import load_coco  # noqa: E402
from det_al.data.images import read_image, to_tensor  # noqa: E402
from det_al.inference import one_stage, restricted  # noqa: E402
from det_al.inference.passes import ImagePasses, run_passes  # noqa: E402
from det_al.loop.error_capture import mean_ci  # noqa: E402

#: family -> tiny model; the families whose restricted tail is measured.
MODELS = {"retinanet": "retinanet_tiny", "fcos": "fcos_tiny", "ssd": "ssd_tiny"}
#: the three runs per family, T and seed pair k: (name, passes.tail, seed - 2k)
RUNS = (("exact A", "exact", 0), ("exact B", "exact", 1), ("candidates A", "candidates", 0))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_tail_out", help="data, checkpoints (reused by a rerun)")
    parser.add_argument("--families", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    parser.add_argument("--passes", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--dense-candidates", nargs="+", type=int, default=[1000],
                        help="passes.dense_candidates values to compare at (1000: det_al's default); the output "
                             "says what share of the anchors the restricted tail then evaluates")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (a model cached in --out with fewer trains on)")
    parser.add_argument("--pool-size", type=int, default=80, help="pool images (half of them drifted)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--pairs", type=int, default=5, help="seed pairs: the differences get a 95%% CI over them")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="FAMILY=PATH",
                        help="score this det_al checkpoint instead of training (repeatable)")
    return parser


def training_config(name: str, epochs: int, seed: int) -> Config:
    """The demo's training recipe for the tiny one-stage model ``name`` (AdamW, cosine, hflip),
    at a lower lr with gradient clipping: at the demo's lr 0.002 RetinaNet's loss jumps."""
    return config_from_dict({
        "model": {"name": name},
        "train": {"epochs": epochs, "batch_size": 8, "optimizer": "adamw", "lr": 0.001, "grad_clip": 10.0,
                  "weight_decay": 1e-4, "warmup_iters": 20, "schedule": "cosine", "eval_every": 0,
                  "max_minutes": 0, "seed": seed, "augment": [{"name": "HorizontalFlip", "p": 0.5}]},
    }, f"bench_tail_agreement ({name})")


def trained_checkpoint(family: str, args: argparse.Namespace, paths: Mapping[str, Path]) -> Path:
    """The given checkpoint, else the one trained in ``--out`` (an interrupted training goes on,
    a finished one is reused as it is)."""
    given = dict(item.split("=", 1) for item in args.checkpoint)
    if family in given:
        return Path(given[family])
    from det_al.loop.training import train_model

    out = Path(args.out) / f"train_{family}"
    resume = (out / "last.pt").exists()
    print(f"{family}: {'resuming or reusing' if resume else 'training'} {MODELS[family]} in {out} "
          f"({args.epochs} epochs)", flush=True)
    summary = train_model(training_config(MODELS[family], args.epochs, args.seed), paths["train"],
                          paths["image_root"], out, resume=resume, progress=False)
    print(f"{family}: {summary['epochs']} epochs, {summary['seconds']:.0f} s in this run", flush=True)
    return Path(summary["last"])


def held_out_ap(model: torch.nn.Module, categories: list[dict], paths: Mapping[str, Path]) -> dict[str, float]:
    """bbox AP on the held-out set: all of it, and its old and drifted images apart."""
    from det_al.loop.evaluation import evaluate_coco, predict

    val = load_coco(paths["val"])
    results = predict(model, val, paths["image_root"], categories, batch_size=8)
    out = {}
    for domain in ("all", "old", "drifted"):
        ids = {im["id"] for im in val["images"] if domain == "all" or im.get("domain") == domain}
        part = {**val, "images": [im for im in val["images"] if im["id"] in ids],
                "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}
        out[domain] = evaluate_coco(part, [r for r in results if r["image_id"] in ids], ("bbox",))["bbox"]["AP"]
    return out


def object_passes(model: torch.nn.Module, images: Sequence[torch.Tensor], ids: Sequence[int],
                  config: Config, seed: int, chunk: int = 8) -> list[ImagePasses]:
    """``run_passes`` on every pool image; image ``i``'s generators derive from ``seed`` and its id."""
    out: list[ImagePasses] = []
    for start in range(0, len(images), chunk):
        seeds = [1_000_003 * seed + int(i) for i in ids[start:start + chunk]]
        out += run_passes(model, list(images[start:start + chunk]), config.passes, seeds=seeds, fast=True)
    return out


def anchors_per_position(model: torch.nn.Module) -> list[int]:
    """Per feature level, the anchors of one position (RetinaNet/FCOS: the same on every level)."""
    head = model.head.classification_head
    if hasattr(head, "module_list"):  # SSD
        return one_stage.ssd_anchor_counts(model, [])[0]
    return [int(head.cls_logits.out_channels) // int(head.num_classes)] * 8


@contextlib.contextmanager
def recorded_coverage(model: torch.nn.Module, record: list[tuple[int, int, int, int]]):
    """Record, per image whose deterministic pass chooses the restricted tail's anchors
    (:func:`det_al.inference.restricted.choose_anchors`, wrapped meanwhile), ``(anchors chosen,
    anchors, positions chosen, positions)`` over the levels."""
    original = restricted.choose_anchors
    a_counts = anchors_per_position(model)

    def wrapper(prefix, above, foreground, sizes, *rest, **options):
        original(prefix, above, foreground, sizes, *rest, **options)
        for levels in prefix.tail_anchors:
            chosen = sum(len(a) for a in levels)
            positions = sum(len(torch.unique(a // n)) for a, n in zip(levels, a_counts))
            record.append((chosen, sum(sizes), positions, sum(int(s) // n for s, n in zip(sizes, a_counts))))

    restricted.choose_anchors = wrapper
    try:
        yield record
    finally:
        restricted.choose_anchors = original


def object_agreement(reference: Sequence[ImagePasses], other: Sequence[ImagePasses]) -> tuple[float, float, int]:
    """(mean box IoU, Spearman rho of uncertainty, objects compared) over the deterministic
    detections of every image, each run's objects taken by ``bench_passes.anchored``."""
    u_ref, u_other, ious = [], [], []
    for a, b in zip(reference, other):
        ua, ba = anchored(a)
        ub, bb = anchored(b)
        u_ref.append(ua)
        u_other.append(ub)
        both = ~(ba.isnan().any(1) | bb.isnan().any(1))
        if both.any():
            ious.append(box_iou(ba[both], bb[both]).diagonal())
    u_ref, u_other = torch.cat(u_ref).numpy(), torch.cat(u_other).numpy()
    iou = torch.cat(ious).mean().item() if ious else float("nan")
    return iou, rank_correlation(u_ref, u_other), len(u_ref)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of ``a`` and ``b``; NaN when either has no ranking (fewer than 3 values, or constant).

    >>> round(rank_correlation(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 30.0, 20.0, 40.0])), 3)
    0.8
    """
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top_quarter_shared(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """The share of the ``len // 4`` highest of ``a`` (image id -> value) that are among the
    ``len // 4`` highest of ``b`` (ties broken by image id).

    >>> top_quarter_shared({1: 4, 2: 3, 3: 2, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0}, {1: 0, 2: 3, 3: 4, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0})
    0.5
    """
    quarter = max(1, len(a) // 4)

    def top(values: Mapping[int, float]) -> set[int]:
        return set(sorted(values, key=lambda i: (-values[i], i))[:quarter])

    return len(top(a) & top(b)) / quarter


def image_agreement(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float]:
    """(Spearman rho, top-quarter share) of two runs' informativeness (image id -> value)."""
    ids = sorted(a)
    return (rank_correlation(np.array([a[i] for i in ids]), np.array([b[i] for i in ids])),
            top_quarter_shared(a, b))


def with_passes(config: Config, passes: int, tail: str, seed: int, dropout: float, candidates: int = 1000) -> Config:
    return dataclasses.replace(config, passes=dataclasses.replace(
        config.passes, passes=passes, tail=tail, seed=seed, dropout=dropout, batch_size=4, dense_candidates=candidates,
        dropout_groups=0))  # the restricted tail approximates element-wise dropout


def compare(runs: Mapping[str, tuple[list[ImagePasses], dict[int, float]]], other: str, reference: str) -> dict[str, float]:
    """The four agreement measures of run ``other`` with run ``reference``."""
    iou, rho, n = object_agreement(runs[reference][0], runs[other][0])
    image_rho, shared = image_agreement(runs[reference][1], runs[other][1])
    return {"box IoU": iou, "object rho": rho, "image rho": image_rho, "top 1/4": shared, "objects": n}


def verdict(low: float, high: float) -> str:
    if math.isnan(low) or low <= 0.0 <= high:
        return "no difference"
    return "above the noise floor" if low > 0 else "below the noise floor"


def bench_family(family: str, args: argparse.Namespace, paths: Mapping[str, Path]) -> tuple[list[str], list[str]]:
    """The agreement lines and timing lines of one family."""
    loaded = det_al.load_model(trained_checkpoint(family, args, paths))
    model, categories = loaded.model, loaded.categories
    ap = held_out_ap(model, categories, paths)
    print(f"{family}: held-out bbox AP {ap['all']:.3f} (old {ap['old']:.3f}, drifted {ap['drifted']:.3f})",
          flush=True)
    pool = load_coco(paths["pool"])
    ids = [im["id"] for im in pool["images"]]
    images = [to_tensor(read_image(Path(paths["image_root"]) / im["file_name"])) for im in pool["images"]]
    lines, timings = [], []
    for candidates, t in [(c, t) for c in args.dense_candidates for t in args.passes]:
        noise, approx = [], []  # per seed pair: compare(exact B, exact A), compare(candidates A, exact A)
        seconds: dict[str, list[tuple[float, float]]] = {"exact": [], "candidates": []}
        per_pass, coverage = [], []
        for pair in range(args.pairs):
            runs = {}
            for name, tail, offset in RUNS:
                seed = 2 * pair + offset
                config = with_passes(loaded.config, t, tail, seed, args.dropout, candidates)
                with recorded_coverage(model, coverage):
                    objects = object_passes(model, images, ids, config, seed)
                start, cpu = time.perf_counter(), time.process_time()
                scores = det_al.score_images(model, paths["pool"], categories=categories, config=config,
                                             image_root=paths["image_root"], progress=False)
                seconds[tail].append((time.perf_counter() - start, time.process_time() - cpu))
                runs[name] = objects, {r["image_id"]: float(r["informativeness"]) for r in scores.ranking}
            per_pass += [len(d) for p in runs["exact A"][0] for d in p.passes]
            noise.append(compare(runs, "exact B", "exact A"))
            approx.append(compare(runs, "candidates A", "exact A"))
        dets = np.mean([len(p.deterministic) for p in runs["exact A"][0]])
        share = np.array(coverage, dtype=float)
        lines.append(f"{MODELS[family]} T={t}, dense_candidates {candidates}: the restricted tail evaluates "
                     f"{100 * np.mean(share[:, 0] / share[:, 1]):.0f}% of the {share[0, 1]:.0f} anchors "
                     f"({100 * np.mean(share[:, 2] / share[:, 3]):.0f}% of the {share[0, 3]:.0f} positions); "
                     f"{noise[0]['objects']} objects ({dets:.1f} detections per image in the deterministic pass, "
                     f"{np.mean(per_pass):.1f} per stochastic pass)")
        for key in ("box IoU", "object rho", "image rho", "top 1/4"):
            n_mean = mean_ci([r[key] for r in noise])[0]
            a_mean = mean_ci([r[key] for r in approx])[0]
            diff, low, high = mean_ci([a[key] - n[key] for a, n in zip(approx, noise)])
            lines.append(f"  {key:<11} {n_mean:>15.3f} {a_mean:>22.3f} {diff:>+10.3f} [{low:+.3f}, {high:+.3f}]  "
                         f"{verdict(low, high)}")
        exact = np.mean(seconds["exact"], 0)
        cand = np.mean(seconds["candidates"], 0)
        timings.append(f"{MODELS[family]} T={t}, dense_candidates {candidates}: scoring the {len(ids)}-image pool "
                       f"(det_al.score_images, mean of {len(seconds['exact'])} exact and {len(seconds['candidates'])} "
                       f"candidates runs, interleaved): exact {exact[0]:.2f} s (cpu {exact[1]:.2f}), candidates "
                       f"{cand[0]:.2f} s (cpu {cand[1]:.2f}): candidates/exact {cand[0] / exact[0]:.2f} wall, "
                       f"{cand[1] / exact[1]:.2f} cpu")
        print("\n".join(lines[-5:] + timings[-1:]), flush=True)
    return lines, timings


def main(args: argparse.Namespace) -> None:
    for item in args.checkpoint:
        family, _, path = item.partition("=")
        if family not in MODELS or not path:
            raise SystemExit(f"--checkpoint {item}: expected FAMILY=PATH with FAMILY one of {', '.join(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    logging.getLogger("det_al").setLevel(logging.WARNING)
    from det_al.data.synthetic import make_demo_data

    data = Path(args.out) / "data"
    paths = {"train": data / "train.json", "val": data / "val.json", "pool": data / "pool.json", "image_root": data}
    if not all(paths[k].exists() for k in ("train", "val", "pool")):
        paths = make_demo_data(data, seed=args.seed, n_pool=args.pool_size)
    lines, timings = [], []
    for family in args.families:
        found, timed = bench_family(family, args, paths)
        lines += found
        timings += timed
    pool = len(load_coco(paths["pool"])["images"])
    print(f"\npool {pool} images (half drifted), dropout {args.dropout}, {args.pairs} seed pairs (exact A = seed 2k, "
          f"exact B = seed 2k+1, candidates A = seed 2k), torch threads {torch.get_num_threads()}, device cpu, "
          f"load average at the end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cpus)")
    print(f"  {'measure':<11} {'exact B vs A':>15} {'candidates A vs exact A':>22} "
          f"{'difference [95% CI] over the seed pairs':>44}")
    for line in lines + timings:
        print(line)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
