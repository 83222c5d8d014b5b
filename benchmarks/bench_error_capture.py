"""Error capture: which per-image score finds the images the model gets wrong?

A trained detector scores a pool whose ground truth is known; each image's *error* is counted
two ways (:mod:`det_al.loop.error_capture`): the **count** of missed objects plus false detections
(COCOeval matching at IoU 0.5, class-aware, among the deterministic pass's detections with
score >= ``--score-threshold``, default 0.5: the pseudo-labels a user would accept) and the
**normalised** error, that count over ground-truth objects + detections (0 when both are 0).
For every score (``ranking.jsonl``'s fields, the one-pass baselines, ``random``) it reports
Spearman's rho with each error, the AUROC for "the image has a missed object" and
recall@10 % (the share of the worst 10 % images, by each error, in the score's top 10 %;
ties broken at random on both sides, the expected value reported) as the mean and 95 %
t-interval over paired seeds: every score is measured on the same images with the same model.

**Scenario** (no arguments): per seed, a fresh synthetic draw (:mod:`det_al.data.synthetic`): a tiny
Faster R-CNN trained from scratch on old-domain images only; a pool of mostly old-domain
images, a drifted minority (new colours, backgrounds and scales) and some background-only
scenes of both domains. **Any labelled COCO data**: ``--checkpoint CK --pool-gt COCO
--image-root DIR`` scores the images of ``COCO`` once and measures against its annotations
(``--labelled TRAIN.json`` adds novelty).

Scores, every one of :data:`SCORES` that ``det-al score --labelled TRAIN.json`` writes into
``ranking.jsonl``: ``informativeness``, ``class``, ``box``, ``presence``, the dense signals
``dense``, ``miss``, ``rpn_gap``, the one-pass baselines ``least_confidence`` (1 - mean
detection score, an image without detections 0), ``n_detections``, ``max_entropy`` and
``novelty``; ``random`` (one uniform draw per image and seed); and the strategy ``fused``,
which has no ranking field, by the order in which it picks the whole pool.

**Candidates** (``--candidate NAME=KEY=VALUE[;KEY=VALUE]``, repeatable): a scoring config to
measure beside the rest, as the score ``NAME`` (its informativeness) and ``NAME+fused`` (the
``fused`` strategy over it and novelty). Image-level keys (``scoring.image_weights``,
``image_combination``, ``rank_k``) only recombine per-image fields, so they are computed from
the base scoring's ranking with the engine's own functions (the quick test checks that this
equals a rescoring); any other key, or ``--rescore-candidates``, runs ``det-al score`` again.

**Ensembles** (``--ensemble N``, scenario only; issue 25): N - 1 more models per seed, trained
like the seed's own on the same data with other training seeds (``train.seed`` = seed + 1000 j:
other initial weights and batch order), and two more scores: ``ensemble``, the N models one
pass each without dropout (a plain ensemble, ``det-al score --checkpoints``), and
``ensemble+mc``, the N models with ``ceil(T / N)`` dropout passes each. Their pseudo-labels
are the seed's model's, so every score is measured against the same errors; ``vs_mc_dropout``
in the JSON holds their paired differences against ``informativeness`` (MC dropout of the one
model, T passes).

Trained models and the scenario's data are cached under ``--cache`` (default ``OUT/cache``),
keyed by seed and sizes, so later runs (new scores, ``--set`` overrides of the scoring
config) rescore the same models without training. ``--reuse-scores`` also reuses the scored
folders of the same overrides.

    python benchmarks/bench_error_capture.py                    # 5 seeds: ~1 h on a busy 2-core CPU, 6 min cached
    python benchmarks/bench_error_capture.py --quick            # smoke test, two tiny seeds
    python benchmarks/bench_error_capture.py --train-only       # fill the cache (e.g. in the background)
    python benchmarks/bench_error_capture.py --set scoring.reduction=max --out bench_out/ec_max \\
        --cache bench_out/error_capture/cache                   # a scoring candidate, same models
    python benchmarks/bench_error_capture.py --checkpoint ck.pt --pool-gt val.json --image-root imgs/

Writes ``OUT/error_capture.json`` (``{"n_images", "scores": {NAME: {"spearman", "spearman_norm",
"auroc_missed", "recall_at_10pct", "recall_at_10pct_norm"}}}``, means, with ``*_ci95`` beside
them, paired differences against the one-pass baselines and the issue's targets) and
``OUT/per_image.jsonl`` (every image's errors and scores), and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from det_al.errors import InputError
from det_al.loop.error_capture import MEASURES, capture_measures, image_errors, mean_ci, top_probability
from det_al.data.files import read_json, write_json, write_jsonl

SCORES = (
    "random", "informativeness", "class", "box", "presence",
    "least_confidence", "n_detections", "max_entropy",
    "dense", "miss", "rpn_gap", "novelty", "fused",
)
ONE_PASS = ("least_confidence", "n_detections", "max_entropy")
#: the scores of --ensemble (their own det-al score runs, measured like candidates)
ENSEMBLE_SCORES = ("ensemble", "ensemble+mc")
TARGET_MEASURES = ("spearman_norm", "auroc_missed", "recall_at_10pct")
TARGET_SPEARMAN_NORM = 0.5
TARGET_RANDOM_FACTOR = 3.0
GROUPS = ("old", "drifted", "background")
#: --candidate keys that recombine the per-image fields of one scoring (no new passes)
IMAGE_LEVEL_KEYS = ("scoring.image_weights", "scoring.image_combination", "scoring.rank_k")
#: scenario only: the share of drifted and of background-only images in each score's top 10 %
SHARES = ("drifted_in_top10pct", "background_in_top10pct")

# name -> sizes. pool = old + drifted + background (background split between the two domains).
# "full" on the project's 2-core CPU shared with other jobs: training 9-13 min a seed, scoring
# 1-2 min a seed; rescoring the five cached models took 6.1 min.
SIZES = {
    "full": dict(train=150, old=70, drifted=20, background=10, epochs=8, passes=10, seeds=(0, 1, 2, 3, 4)),
    "quick": dict(train=12, old=8, drifted=4, background=2, epochs=1, passes=2, seeds=(0, 1)),
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="error-capture benchmark: which score finds the model's errors", add_help=add_help)
    parser.add_argument("--out", default="bench_out/error_capture", help="output folder")
    parser.add_argument("--cache", help="folder of the seeds' data, models and scores (default: OUT/cache)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, two seeds: a smoke test")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0..4; quick: 0,1)")
    for key in ("train", "old", "drifted", "background", "epochs", "passes"):
        parser.add_argument(f"--{key}", type=int, help=f"scenario size '{key}' (see SIZES)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="scoring config override passed to det-al score, e.g. scoring.reduction=max")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=KEY=VALUE[;KEY=VALUE]",
                        help="a scoring candidate measured beside the rest, e.g. "
                             "'obj+dense=scoring.image_weights={objects: 1, dense: 1}'; image-level keys "
                             f"({', '.join(k.split('.')[1] for k in IMAGE_LEVEL_KEYS)}) are recombined from the base "
                             "scoring's fields, anything else is rescored")
    parser.add_argument("--rescore-candidates", action="store_true", help="rescore every candidate with det-al score")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detections counted as pseudo-labels (default 0.5)")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU of a correct detection (default 0.5)")
    parser.add_argument("--train-only", action="store_true", help="make the seeds' data and models, measure nothing")
    parser.add_argument("--reuse-scores", action="store_true", help="reuse scored folders of the same overrides in the cache")
    parser.add_argument("--ensemble", type=int, default=0, metavar="N",
                        help="also score with an ensemble of N models per seed (N - 1 more trained): the scores "
                             "'ensemble' and 'ensemble+mc'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", help="a trained det_al checkpoint: measure it once on --pool-gt")
    parser.add_argument("--pool-gt", help="COCO file with ground truth of the images to score (with --checkpoint)")
    parser.add_argument("--image-root", help="folder the --pool-gt file names are relative to (default: its folder)")
    parser.add_argument("--labelled", help="the model's training COCO file, for novelty (with --checkpoint)")
    return parser


def sizes_from(args: argparse.Namespace) -> dict:
    sizes = dict(SIZES["quick" if args.quick else "full"])
    for key in ("train", "old", "drifted", "background", "epochs", "passes"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if args.seeds:
        sizes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    return sizes


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- scenario


def make_scenario(out: Path, seed: int, sizes: dict) -> dict[str, Path]:
    """Write one seed's data under ``out``: ``train.json`` (old domain), ``pool_gt.json`` (the
    pool with its annotations, shuffled) and ``groups.json`` (image id -> old / drifted /
    background). Image ids are unique across the files."""
    from det_al.data.synthetic import generate

    n_train, n_old, n_drifted, n_bg = sizes["train"], sizes["old"], sizes["drifted"], sizes["background"]
    train = generate(out, n_train, "old", seed, 1)
    parts, groups, start = [], {}, 1 + n_train
    for n, domain, n_objects, group in (
        (n_old, "old", None, "old"),
        (n_drifted, "drifted", None, "drifted"),
        (n_bg - n_bg // 2, "old", 0, "background"),
        (n_bg // 2, "drifted", 0, "background"),
    ):
        part = generate(out, n, domain, seed, start, n_objects=n_objects)
        parts.append(part)
        groups.update({im["id"]: group for im in part["images"]})
        start += n
    images = [im for p in parts for im in p["images"]]
    order = np.random.default_rng([seed, 17]).permutation(len(images))
    pool_gt = {
        "images": [images[i] for i in order],
        "annotations": [a for p in parts for a in p["annotations"]],
        "categories": train["categories"],
    }
    paths = {"train": out / "train.json", "pool_gt": out / "pool_gt.json", "groups": out / "groups.json"}
    write_json(paths["train"], train)
    write_json(paths["pool_gt"], pool_gt)
    write_json(paths["groups"], {str(k): v for k, v in groups.items()})
    write_json(out / "done.json", {"seed": seed, "sizes": {k: v for k, v in sizes.items() if k != "seeds"}})
    return paths


def bench_config(sizes: dict, seed: int):
    """The tiny Faster R-CNN of the label-efficiency benchmark, trained from scratch."""
    from det_al.config import config_from_dict

    return config_from_dict(
        {
            "model": {"name": "fasterrcnn_tiny", "num_classes": 4, "options": {"min_size": 128, "max_size": 128}},
            "passes": {"passes": sizes["passes"], "dropout": 0.3, "batch_size": 8, "seed": seed},
            "train": {
                "epochs": sizes["epochs"], "batch_size": 8, "optimizer": "adamw", "lr": 0.002,
                "weight_decay": 1e-4, "warmup_iters": 20, "schedule": "cosine", "eval_every": 0,
                "seed": seed, "augment": [{"name": "HorizontalFlip", "p": 0.5}],
            },
        },
        "bench_error_capture",
    )


def prepare_seed(cache: Path, seed: int, sizes: dict, device: str, members: int = 1) -> dict[str, Path]:
    """One seed's data and trained checkpoint, made once and cached under ``cache``; with
    ``members`` > 1, ``paths["members"]`` lists the ensemble's checkpoints (the seed's first)."""

    data_sizes = {k: sizes[k] for k in ("train", "old", "drifted", "background")}
    folder = cache / f"seed{seed}-{_key({'data': data_sizes, 'epochs': sizes['epochs'], 'passes': sizes['passes']})}"
    data = folder / "data"
    if not (data / "done.json").exists():
        make_scenario(data, seed, sizes)
    paths = {"train": data / "train.json", "pool_gt": data / "pool_gt.json", "groups": data / "groups.json",
             "image_root": data, "folder": folder}
    paths["checkpoint"] = train_once(bench_config(sizes, seed), paths, folder / "train", device, f"seed {seed}")
    if members > 1:
        paths["members"] = [paths["checkpoint"]] + [
            train_once(member_config(sizes, seed, j), paths, folder / f"train-member{j}", device, f"seed {seed} member {j}")
            for j in range(1, members)]
    return paths


def member_config(sizes: dict, seed: int, member: int):
    """Ensemble member ``member`` (>= 1) of a seed: the seed's config with training seed ``seed + 1000 * member``."""
    import dataclasses

    config = bench_config(sizes, seed)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed + 1000 * member))


def train_once(config, paths: dict[str, Path], folder: Path, device: str, what: str) -> Path:
    """Train ``config`` on the seed's training set into ``folder`` unless done before; its last checkpoint."""
    from det_al.loop.training import train_model

    summary_path = folder / "summary.json"
    if not summary_path.exists():
        t0 = time.perf_counter()
        summary = train_model(
            config, paths["train"], paths["image_root"], folder,
            device=device, progress=False, overwrite=True,  # an unfinished earlier try starts over
        )
        write_json(summary_path, {"epochs": summary["epochs"], "final_loss": summary["final_loss"],
                                  "seconds": time.perf_counter() - t0})
        print(f"{what}: trained {summary['epochs']} epochs in {time.perf_counter() - t0:.0f} s "
              f"(loss {summary['final_loss']:.3f})", flush=True)
    return folder / "last.pt"


# --------------------------------------------------------------------------- scoring


def score_folder(checkpoint: Path | list[Path], pool_gt: Path, image_root: Path, out: Path, overrides: list[str],
                 passes: int | None, seed: int | None, labelled: Path | None, device: str, reuse: bool) -> Path:
    """Run ``det-al score`` (in this process) on the images of ``pool_gt``; the scored folder.
    ``labelled`` (the model's training set) is passed as ``--labelled``: the ranking's novelty.
    A list of checkpoints is an ensemble (``--checkpoints``)."""
    from det_al.cli import score as score_command

    if reuse and (out / "ranking.jsonl").exists():
        return out
    parser = argparse.ArgumentParser()
    score_command.add_arguments(parser)
    models = ["--checkpoints", *map(str, checkpoint)] if isinstance(checkpoint, list) else ["-k", str(checkpoint)]
    argv = [*models, "-p", str(pool_gt), "-r", str(image_root), "-o", str(out),
            "--overwrite", "--no-progress", "--device", device]
    if passes is not None:
        argv += ["--passes", str(passes)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if labelled is not None:
        argv += ["--labelled", str(labelled)]
    for item in overrides:
        argv += ["--set", item]
    with contextlib.redirect_stdout(io.StringIO()):  # the command's own summary
        score_command.run(parser.parse_args(argv))
    return out


def ranking_scores(records: list[dict], context: dict, seed: int) -> dict[int, dict[str, float]]:
    """Image id -> every score of :data:`SCORES` that ``records`` (ranking records) carry, and
    those of the strategies without a field (``fused``), by the order they pick the whole pool."""
    from det_al.selection.strategies import STRATEGIES, run_strategy

    out = {int(r["image_id"]): {} for r in records}
    for name in SCORES:
        value = records[0].get(name) if records else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for r in records:
                out[int(r["image_id"])][name] = float(r[name])
        elif name in STRATEGIES and name != "random" and records:
            try:
                order = run_strategy(name, records, budget=len(records), seed=seed, **context)
            except InputError:  # e.g. fused without novelty
                continue
            for k, r in enumerate(order):
                out[int(r["image_id"])][name] = float(len(records) - k)
    return out


def recombine(records: list[dict], overrides: list[str], config: dict) -> list[dict]:
    """The ranking that ``det-al score`` with the image-level ``overrides``
    (:data:`IMAGE_LEVEL_KEYS`) would write, from the ranking ``records`` of the same passes
    scored without them (``config``: that run's config): the engine's own
    :func:`~det_al.scoring.informativeness.combine_image` and :func:`~det_al.run.assemble.rank_records`
    over the per-image fields, as :func:`det_al.run.score_lines.score_image` and the assembler apply them. The quick
    test checks it against a real rescoring."""
    from det_al.config import apply_overrides, config_from_dict
    from det_al.run.assemble import rank_records
    from det_al.scoring.informativeness import combine_image

    cfg = config_from_dict(apply_overrides(config, overrides), "--candidate")
    weights = cfg.scoring.image_weights
    raw = []
    for r in records:
        x = {k: v for k, v in r.items() if k not in ("rank", "certain")}
        if "objects" in r:  # the base scoring had image weights (the default): its per-object value
            x["objects"], object_empty = float(r["objects"]), int(r.get("n_objects", 0)) == 0
        else:
            x["objects"], object_empty = 0.0 if r["empty"] else float(r["informativeness"]), bool(r["empty"])
        if weights:
            x["informativeness"] = round(combine_image(x, weights), 6)
            x["empty"] = bool(object_empty and not r.get("n_candidates", 0))
        else:
            x["informativeness"], x["empty"] = x["objects"], object_empty
        raw.append(x)
    return rank_records(raw, cfg.scoring, seed=cfg.passes.seed)


def measure(scored: dict[str, Path], gt: dict, seed: int, args: argparse.Namespace, groups: dict[int, str] | None = None,
            candidates: dict[str, list[str]] | None = None) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Measures of every score on one pool, and one row per image.

    ``scored``: the scored folder of the base scoring (key ``""``) and of each rescored
    candidate (its name); a candidate of ``candidates`` without a folder is recombined from the
    base ranking (:func:`recombine`). A candidate ``NAME`` gives the scores ``NAME`` (its
    informativeness) and ``NAME+fused`` (the ``fused`` strategy over it and novelty).
    """
    from det_al.selection.files import read_ranking, selection_context

    base = scored[""]
    records = read_ranking(base / "ranking.jsonl")
    context = selection_context(base)
    ids = sorted(int(r["image_id"]) for r in records)
    values = ranking_scores(records, context, seed)
    draw = np.random.default_rng([seed, 11]).random(len(ids))  # by image id, not by rank
    for i, v in zip(ids, draw):
        values[i]["random"] = float(v)
    novelty = {int(r["image_id"]): r["novelty"] for r in records if "novelty" in r}
    config = read_json(base / "run.json")["config"]
    for name, overrides in (candidates or {}).items():
        if name in scored:
            ranked = read_ranking(scored[name] / "ranking.jsonl")
        else:
            ranked = recombine(records, overrides, config)
        ranked = [{**r, "novelty": novelty[int(r["image_id"])]} if novelty else r for r in ranked]
        got = ranking_scores(ranked, context, seed)
        for i in ids:
            values[i][name] = got[i]["informativeness"]
            if "fused" in got[i]:
                values[i][f"{name}+fused"] = got[i]["fused"]
    names = [n for n in score_names(candidates) if n in values[ids[0]]]
    table = {name: np.array([values[i][name] for i in ids]) for name in names}

    pseudo = read_json(base / "pseudo_labels.json")
    errors = image_errors(gt, pseudo["annotations"], args.score_threshold, args.iou)
    columns = {k: np.array([errors[i][k] for i in ids]) for k in ("count", "normalised", "missed")}
    measures = {name: capture_measures(v, columns) for name, v in table.items()}
    if groups:
        k = math.ceil(0.1 * len(ids) - 1e-9)
        group = np.array([groups.get(i) for i in ids])
        for name, v in table.items():
            p = top_probability(v, k)
            for key in SHARES:
                measures[name][key] = float(p[group == key.split("_")[0]].sum() / k)
    rows = [
        {"seed": seed, "image_id": i, "group": (groups or {}).get(i), **errors[i],
         **{name: float(v[n]) for name, v in table.items()}}
        for n, i in enumerate(ids)
    ]
    return measures, rows


def parse_candidates(texts: list[str], base_overrides: list[str]) -> dict[str, list[str]]:
    """``NAME=KEY=VALUE[;KEY=VALUE]`` items -> ``{NAME: overrides}`` (base overrides first)."""
    out: dict[str, list[str]] = {}
    for text in texts:
        name, sep, rest = text.partition("=")
        overrides = [o.strip() for o in rest.split(";") if o.strip()]
        if not sep or not name.strip() or not overrides:
            raise InputError(f"--candidate {text!r}: expected NAME=KEY=VALUE[;KEY=VALUE]")
        if name.strip() in SCORES or name.strip() in out:
            raise InputError(f"--candidate {text!r}: the name '{name.strip()}' is taken")
        out[name.strip()] = list(base_overrides) + overrides
    return out


def needs_rescoring(overrides: list[str], base_overrides: list[str], always: bool) -> bool:
    """Whether a candidate needs its own ``det-al score`` run, not a :func:`recombine`."""
    if always or any(o.split("=")[0].strip() in IMAGE_LEVEL_KEYS for o in base_overrides):
        return True
    return any(o.split("=")[0].strip() not in IMAGE_LEVEL_KEYS for o in overrides[len(base_overrides):])


def score_names(candidates: dict[str, list[str]] | None) -> list[str]:
    """Every score name in table order: :data:`SCORES`, then each candidate and its fusion."""
    return list(SCORES) + [n for name in (candidates or {}) for n in (name, f"{name}+fused")]


# --------------------------------------------------------------------------- summary


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def summarise(per_seed: dict[int, dict[str, dict[str, float]]], n_images: int) -> dict[str, Any]:
    """Means and 95 % t-intervals over seeds; paired differences against the one-pass
    baselines; the issue's targets for every score that is not a baseline. The recall target
    is 3x a random ranking's expected recall@10 %, ``ceil(0.1 N) / N`` (the ``random`` row is
    one draw per seed, as noisy as any score)."""
    seeds = sorted(per_seed)
    names = list(dict.fromkeys(n for s in seeds for n in per_seed[s]))
    scores: dict[str, dict[str, Any]] = {}
    for name in names:
        entry: dict[str, Any] = {}
        for key in MEASURES + SHARES:
            if not any(key in per_seed[s].get(name, {}) for s in seeds):
                continue
            mean, lo, hi = mean_ci([per_seed[s][name].get(key, math.nan) if name in per_seed[s] else math.nan for s in seeds])
            entry[key] = _finite(mean)
            entry[f"{key}_ci95"] = [_finite(lo), _finite(hi)]
        entry["n_seeds"] = sum(name in per_seed[s] for s in seeds)
        scores[name] = entry
    comparisons: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    baselines = [b for b in ONE_PASS if b in names]
    for name in names:
        if name == "random" or name in ONE_PASS:
            continue
        diffs = {base: {key: paired_difference(per_seed, name, base, key) for key in TARGET_MEASURES}
                 for base in baselines}
        comparisons[name] = diffs
        s = scores[name]
        targets[name] = {
            "spearman_norm_at_least_0.5": s["spearman_norm"] is not None and s["spearman_norm"] >= TARGET_SPEARMAN_NORM,
            "recall_at_10pct_3x_random": (s["recall_at_10pct"] or 0) >= TARGET_RANDOM_FACTOR * random_recall(n_images) - 1e-9,
            "above_every_one_pass_baseline": bool(diffs) and all(
                v["verdict"] == "above" for base in diffs.values() for v in base.values()),
        }
    ensembles = {name: {key: paired_difference(per_seed, name, "informativeness", key) for key in MEASURES}
                 for name in ENSEMBLE_SCORES if name in names and "informativeness" in names}
    return {"scores": scores, "vs_one_pass": comparisons, "targets": targets,
            "random_recall_at_10pct_expected": round(random_recall(n_images), 4),
            **({"vs_mc_dropout": ensembles} if ensembles else {})}


def paired_difference(per_seed: dict[int, dict[str, dict[str, float]]], name: str, base: str, key: str) -> dict:
    """Score ``name`` minus score ``base`` on measure ``key``, paired by seed: mean, 95 % t-interval
    and the verdict (``above``/``below`` when the interval excludes 0, else ``no difference``)."""
    d = [per_seed[s][name][key] - per_seed[s][base][key] for s in sorted(per_seed)
         if name in per_seed[s] and base in per_seed[s]]
    mean, lo, hi = mean_ci(d)
    if math.isnan(lo):  # one run: no interval, only the sign
        verdict = "higher (one run)" if mean > 0 else "lower (one run)" if mean < 0 else "equal (one run)"
    else:
        verdict = "above" if lo > 0 else "below" if hi < 0 else "no difference"
    return {"mean": _finite(mean), "ci95": [_finite(lo), _finite(hi)], "verdict": verdict}


#: a paired verdict as one character (format_targets, format_ensembles)
VERDICT = {"above": ">", "no difference": "=", "below": "<",
           "higher (one run)": "+", "lower (one run)": "-", "equal (one run)": "0"}


def format_ensembles(summary: dict[str, Any]) -> str:
    """The ensembles against MC dropout of one model: paired difference, mean [95 % CI] and
    verdict (``>`` above: the CI excludes 0, ``=`` no difference, ``<`` below)."""
    lines = [f"{'score - informativeness':<24}" + "".join(f"{k:>30}" for k in MEASURES)]
    for name, diffs in summary.get("vs_mc_dropout", {}).items():
        cells = []
        for key in MEASURES:
            v = diffs[key]
            text = "n/a" if v["mean"] is None else f"{v['mean']:+.2f}" + (
                f" [{v['ci95'][0]:+.2f},{v['ci95'][1]:+.2f}]" if v["ci95"][0] is not None else "") + f" {VERDICT[v['verdict']]}"
            cells.append(f"{text:>30}")
        lines.append(f"{name:<24}" + "".join(cells))
    return "\n".join(lines)


def random_recall(n_images: int) -> float:
    """The expected recall@10 % of a random ranking of ``n_images``: ``ceil(0.1 N) / N``."""
    return math.ceil(0.1 * n_images - 1e-9) / n_images


def format_table(summary: dict[str, Any]) -> str:
    """Scores down, measures across: mean [95 % CI]."""
    width = 22
    head = f"{'score':<22}" + "".join(f"{k:>{width}}" for k in MEASURES)
    lines = [head, "-" * len(head)]
    for name, entry in summary["scores"].items():
        cells = []
        for key in MEASURES:
            mean, (lo, hi) = entry[key], entry[f"{key}_ci95"]
            text = "n/a" if mean is None else f"{mean:+.2f}" if lo is None else f"{mean:+.2f} [{lo:+.2f},{hi:+.2f}]"
            cells.append(f"{text:>{width}}")
        lines.append(f"{name:<22}" + "".join(cells))
    shares = [name for name, entry in summary["scores"].items() if SHARES[0] in entry]
    if shares:
        lines += ["", f"{'score':<22}" + "".join(f"{k:>{width + 2}}" for k in SHARES)]
        for name in shares:
            entry = summary["scores"][name]
            lines.append(f"{name:<22}" + "".join(f"{entry[k]:>{width + 2}.2f}" for k in SHARES))
    return "\n".join(lines)


def format_targets(summary: dict[str, Any]) -> str:
    """One line per score that is not a baseline: the two absolute targets, then the paired
    verdict against each one-pass baseline on each target measure: ``>`` above (the CI of the
    difference excludes 0), ``=`` no difference (inside the CI), ``<`` below; from one run
    (no interval) ``+``, ``0``, ``-`` by the sign alone."""
    scores, symbol = summary["scores"], VERDICT
    baselines = sorted({b for diffs in summary["vs_one_pass"].values() for b in diffs}, key=ONE_PASS.index)
    expected = summary["random_recall_at_10pct_expected"]
    head = f"{'score':<22}{'spearman_norm>=0.5':>20}{'recall@10%>=3x random':>23}" + "".join(
        f"{'vs ' + b:>20}" for b in baselines)
    lines = [head, f"{'':<22}{'':>20}{'':>23}" + "".join(f"{'(sn auc rec)':>20}" for _ in baselines), "-" * len(head)]
    for name, t in summary["targets"].items():
        sn, rec = scores[name]["spearman_norm"], scores[name]["recall_at_10pct"]
        cells = [
            f"{('yes' if t['spearman_norm_at_least_0.5'] else 'no') + (f' ({sn:+.2f})' if sn is not None else ''):>20}",
            f"{('yes' if t['recall_at_10pct_3x_random'] else 'no') + (f' ({rec:.2f} vs {expected:.2f})' if rec is not None else ''):>23}",
        ]
        for base in baselines:
            v = summary["vs_one_pass"][name].get(base, {})
            cells.append(f"{' '.join(symbol[v[k]['verdict']] if k in v else '?' for k in TARGET_MEASURES):>20}")
        lines.append(f"{name:<22}" + "".join(cells))
    return "\n".join(lines)


def write_summary(out: Path, per_seed: dict, rows: list[dict], n_images: int, setting: dict) -> dict[str, Any]:
    summary = summarise(per_seed, n_images)
    result = {
        "n_images": n_images,
        "seeds": sorted(per_seed),
        "setting": setting,
        "error": {"count": "missed + false detections, COCOeval matching at the IoU below",
                  "normalised": "count / (ground-truth objects + detections), 0 when both are 0",
                  "score_threshold": setting["score_threshold"], "iou": setting["iou"]},
        **summary,
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }
    write_json(out / "error_capture.json", result, indent=1)
    write_jsonl(out / "per_image.jsonl", rows)
    return result


# --------------------------------------------------------------------------- main


def run_checkpoint(args: argparse.Namespace) -> dict:
    from det_al.data.coco import load_coco

    if not args.pool_gt:
        raise InputError("--checkpoint needs --pool-gt (a COCO file with the images' ground truth)")
    pool_gt = Path(args.pool_gt)
    gt = load_coco(pool_gt)
    image_root = Path(args.image_root) if args.image_root else pool_gt.parent
    out = Path(args.out)
    candidates = parse_candidates(args.candidate, args.overrides)
    scored = {}
    for name, overrides in {"": args.overrides, **candidates}.items():
        if name and not needs_rescoring(overrides, args.overrides, args.rescore_candidates):
            continue
        scored[name] = score_folder(Path(args.checkpoint), pool_gt, image_root, out / f"scores-{_key(overrides)}", overrides,
                                    None, None, Path(args.labelled) if args.labelled else None, args.device, args.reuse_scores)
    measures, rows = measure(scored, gt, 0, args, candidates=candidates)
    setting = {"checkpoint": args.checkpoint, "pool_gt": args.pool_gt, "overrides": args.overrides, "candidates": candidates,
               "score_threshold": args.score_threshold, "iou": args.iou}
    return write_summary(out, {0: measures}, rows, len(rows), setting)


def main(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    if args.checkpoint:
        result = run_checkpoint(args)
    else:
        result = run_scenario(args)
    if result:
        print()
        print(f"{result['n_images']} images a run, seeds {result['seeds']}; mean [95 % t-interval] over seeds")
        print(format_table(result))
        scenario = result["setting"].get("scenario")
        if scenario:
            print(f"(the pool: {scenario['drifted'] / result['n_images']:.2f} drifted, "
                  f"{scenario['background'] / result['n_images']:.2f} background-only)")
        print()
        print(f"targets: spearman_norm >= {TARGET_SPEARMAN_NORM}, recall@10% >= {TARGET_RANDOM_FACTOR:g}x random's, and above "
              f"every one-pass baseline on {', '.join(TARGET_MEASURES)} (paired differences over seeds; "
              f"'>' the 95 % CI excludes 0, '=' no difference, '<' below)")
        print(format_targets(result))
        if result.get("vs_mc_dropout"):
            print()
            print(f"ensembles of {result['setting']['ensemble']} models against MC dropout of one (paired over seeds; "
                  "'>' / '<': the 95 % CI excludes 0, '=' no difference)")
            print(format_ensembles(result))
        print(f"{Path(args.out) / 'error_capture.json'}; {(time.perf_counter() - t0) / 60:.1f} min")
    return result


def run_scenario(args: argparse.Namespace) -> dict:
    from det_al.data.coco import load_coco

    sizes = sizes_from(args)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    print(f"drift scenario: train {sizes['train']} old-domain images, {sizes['epochs']} epochs; pool {sizes['old']} old + "
          f"{sizes['drifted']} drifted + {sizes['background']} background-only; {sizes['passes']} passes; "
          f"seeds {list(sizes['seeds'])}", flush=True)
    candidates = parse_candidates(args.candidate, args.overrides)
    per_seed: dict[int, dict] = {}
    rows: list[dict] = []
    for seed in sizes["seeds"]:
        t0 = time.perf_counter()
        paths = prepare_seed(cache, seed, sizes, args.device, members=args.ensemble)
        if args.train_only:
            continue
        scored = {}
        for name, overrides in {"": args.overrides, **candidates}.items():
            if name and not needs_rescoring(overrides, args.overrides, args.rescore_candidates):
                continue
            scored[name] = score_folder(paths["checkpoint"], paths["pool_gt"], paths["image_root"],
                                        paths["folder"] / f"scores-{_key(overrides)}", overrides, sizes["passes"], seed,
                                        paths["train"], args.device, args.reuse_scores)
        measured = dict(candidates)
        if args.ensemble > 1:
            for name, passes, rate in (("ensemble", 1, 0.0), ("ensemble+mc", -(-sizes["passes"] // args.ensemble), None)):
                overrides = [*args.overrides, *([f"passes.dropout={rate}"] if rate is not None else [])]
                scored[name] = score_folder(paths["members"], paths["pool_gt"], paths["image_root"],
                                            paths["folder"] / f"scores-{name}{args.ensemble}-{_key(overrides)}", overrides,
                                            passes, seed, paths["train"], args.device, args.reuse_scores)
                measured[name] = overrides
        groups = {int(k): v for k, v in read_json(paths["groups"]).items()}
        per_seed[seed], seed_rows = measure(scored, load_coco(paths["pool_gt"]), seed, args, groups, measured)
        rows += seed_rows
        print(f"seed {seed}: measured in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.train_only:
        return {}
    setting = {"scenario": {**sizes, "seeds": list(sizes["seeds"])}, "overrides": args.overrides, "candidates": candidates,
               **({"ensemble": args.ensemble} if args.ensemble > 1 else {}),
               "score_threshold": args.score_threshold, "iou": args.iou}
    n_images = sizes["old"] + sizes["drifted"] + sizes["background"]
    return write_summary(out, per_seed, rows, n_images, setting)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except InputError as e:
        print(f"bench_error_capture.py: error: {e}", file=sys.stderr)
        sys.exit(2)
