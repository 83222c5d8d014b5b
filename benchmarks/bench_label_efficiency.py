"""Label efficiency of the selection strategies in a drift scenario, on paired seeds, on CPU.

The scenario, drawn afresh for every seed with the synthetic generator (:mod:`det_al.data.synthetic`):
the initial labelled set is old-domain only; the pool and the validation set mix the old domain
with a drifted minority (new colours, backgrounds and scales; ``--drift``, default 25 %) and
hold some background-only images (``--empty``, default 10 %). A tiny Faster R-CNN is trained
from scratch on the labelled set (round 0, shared by every arm of a seed: the *paired* design,
same seed set, pool and initial model per seed); then each round a fixed budget of pool images
is selected, their true labels are revealed and the model is fine-tuned from the previous
round's weights on the grown labelled set, for ``--epochs`` epochs at a quarter of round 0's
learning rate with a cosine decay after a 3-step warm-up (``loop.finetune_warmup_iters: 3``,
``--finetune-warmup``; round 0's 20-step warm-up would take most of a fine-tuning round, and
none at all made the first fine-tuning round lose mAP: seed 1 of the README's medium run, random
0.066 -> 0.059 and top 0.066 -> 0.039 after round 1 without, 0.090 and 0.072 with 3 steps).

Arms (``--strategies``): ``random``; ``top:oracle_error``, the positive control, which picks by
the true error of each pool image (missed plus false detections at IoU 0.5 and score 0.5,
against the pool's ground truth); ``top:least_confidence``, the peer baseline of the labelling
tools (1 - mean score of the deterministic detections, an empty image 0); ``top``, det_al's
default; and ``top+self_training``: ``top`` with the loop's self-training
(``loop.self_training``; it reuses the seed's round 0). Any other strategy name of the loop
(``top:presence``, ``diverse``, ``top:<field>`` of the ranking) can be added.

Reported per arm, over seeds: the labels it *adds* beyond the shared seed set to reach
random's final mean mAP (on the mean curve, linearly interpolated, as a % of what random added:
``added_pct_of_random``), and the area under its learning curve (AULC: mean mAP over the labels
added, trapezoids) as paired differences against random and against ``top:least_confidence``:
mean and 95 % t-interval over seeds. A difference whose interval holds 0 is reported as no
difference. Also the share of drifted and of background-only images among its picks, and its
final model's mAP on each domain of the validation set (``old``, ``drifted``) with the paired
difference on the drifted one (:func:`domain_maps`): the overall mAP is mostly old domain.

Writes into ``--out``: ``summary.json`` (``"strategies": {NAME: {"added_pct_of_random",
"aulc_diff_vs_random": {"mean", "ci95"}, "aulc_diff_vs_least_confidence": {...},
"drifted_share", "final_map_drifted", "drifted_map_diff_vs_random", ...}}``),
``learning_curve.png``, ``results.csv`` (every seed's rows) and, per seed, ``seed<s>/`` (its
data, its loop run, its self-training run and ``domain_maps.json``).

    python benchmarks/bench_label_efficiency.py                 # the full run (31 min on 2 idle cores)
    python benchmarks/bench_label_efficiency.py --quick         # smoke test, tiny sizes
    python benchmarks/bench_label_efficiency.py --resume        # continue after a crash
    python benchmarks/bench_label_efficiency.py --report-only   # the tables of what has run so far
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from det_al.config import config_from_dict
from det_al.errors import InputError
from det_al.data.files import read_json, write_json
from det_al.loop.rounds import round_folder, run_loop
from det_al.loop.data import LoopData
from det_al.loop.results import (
    RowsWriter,
    aulc,
    format_curves,
    label_efficiency,
    mean_ci95,
    paired_diff,
    plot_learning_curves,
    read_rows,
    seed_curves,
    summarise,
    verdict,
)
from det_al.data.synthetic import generate

RANDOM, PEER, DEFAULT, SELF_TRAINING = "random", "top:least_confidence", "top", "top+self_training"
# the default arms; more (top:presence, diverse, ...) with --strategies, at about 2 min a seed each
STRATEGIES = (RANDOM, "top:oracle_error", PEER, DEFAULT, SELF_TRAINING)
TARGET_ADDED_PCT = 50.0

SIZES = {
    "full": dict(
        labelled=32, pool=160, val=200, drift=0.25, empty=0.10, budget=8, rounds=3, epochs0=30, epochs=4,
        passes=4, seeds=(0, 1, 2, 3, 4),
    ),
    "quick": dict(
        labelled=4, pool=8, val=4, drift=0.3, empty=0.2, budget=2, rounds=1, epochs0=1, epochs=1, passes=2,
        seeds=(0, 1),
    ),
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="label-efficiency benchmark (drift scenario, paired seeds)", add_help=add_help)
    parser.add_argument("--out", default="bench_out/label_efficiency", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole benchmark")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--report-only", action="store_true", help="the tables of the results in --out (complete or not)")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2,3,4; quick: 0,1)")
    parser.add_argument("--rounds", type=int, help="selection rounds")
    parser.add_argument("--budget", type=int, help="images selected per round")
    parser.add_argument("--labelled", type=int, help="initial labelled (old-domain) images")
    parser.add_argument("--pool", type=int, help="pool images")
    parser.add_argument("--val", type=int, help="validation images")
    parser.add_argument("--drift", type=float, help="drifted share of the pool and the validation set")
    parser.add_argument("--empty", type=float, help="background-only share of the pool and the validation set")
    parser.add_argument("--epochs0", type=int, help="epochs of the round-0 training (from scratch)")
    parser.add_argument("--epochs", type=int, help="epochs of each fine-tuning round")
    parser.add_argument("--passes", type=int, help="MC-dropout passes when scoring")
    parser.add_argument(
        "--finetune-warmup", type=int, default=3, help="warm-up steps of each fine-tuning round (loop.finetune_warmup_iters)"
    )
    parser.add_argument("--pseudo-threshold", type=float, default=0.7, help="self-training: score of a pseudo-label")
    parser.add_argument("--pseudo-ignore", type=float, default=0.2, help="self-training: uncertain from this score up")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"arms (default {','.join(STRATEGIES)})")
    parser.add_argument("--device", default="cpu")
    return parser


def sizes_from(args: argparse.Namespace) -> dict:
    sizes = dict(SIZES["quick" if args.quick else "full"])
    for key in ("rounds", "budget", "labelled", "pool", "val", "drift", "empty", "epochs0", "epochs", "passes"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if args.seeds:
        sizes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    return sizes


# --------------------------------------------------------------------------- the scenario


def _mixed(out: Path, n: int, drift: float, empty: float, seed: int, start_id: int) -> dict:
    """``n`` images from ``start_id``: a ``drift`` share drifted, an ``empty`` share
    background-only (split between the domains like the rest), in a seeded order."""
    n_empty = int(round(n * empty))
    n_empty_drifted = int(round(n_empty * drift))
    n_drifted = int(round((n - n_empty) * drift))
    parts = [
        ("old", n - n_empty - n_drifted, False),
        ("drifted", n_drifted, False),
        ("old", n_empty - n_empty_drifted, True),
        ("drifted", n_empty_drifted, True),
    ]
    images, annotations, start = [], [], start_id
    for domain, count, is_empty in parts:
        part = generate(out, count, domain, seed, start, n_objects=0 if is_empty else None)
        images += part["images"]
        annotations += part["annotations"]
        start += count
    order = np.random.default_rng([seed, 11, start_id]).permutation(len(images))
    return {"images": [images[i] for i in order], "annotations": annotations, "categories": part["categories"]}


def make_scenario(out: Path, seed: int, sizes: dict) -> LoopData:
    """One seed's data (written once under ``out``, read back on a resume)."""
    paths = {name: out / f"{name}.json" for name in ("labelled", "pool", "oracle", "val")}
    if not paths["oracle"].exists():
        labelled = generate(out, sizes["labelled"], "old", seed, 1)
        val = _mixed(out, sizes["val"], sizes["drift"], sizes["empty"], seed, 1 + sizes["labelled"])
        oracle = _mixed(out, sizes["pool"], sizes["drift"], sizes["empty"], seed, 1 + sizes["labelled"] + sizes["val"])
        pool = {**oracle, "annotations": []}
        for name, coco in (("labelled", labelled), ("val", val), ("pool", pool), ("oracle", oracle)):
            write_json(paths[name], coco)
    return LoopData.load(paths["labelled"], paths["pool"], paths["oracle"], paths["val"], out)


def bench_config(sizes: dict, strategies: list[str], seed: int, args: argparse.Namespace):
    """Round 0 trains from scratch for ``epochs0`` epochs (warm-up 20 steps); later rounds
    fine-tune for ``epochs`` at a quarter of the learning rate, after ``--finetune-warmup``
    steps of warm-up (default 3)."""
    return config_from_dict(
        {
            "model": {"name": "fasterrcnn_tiny", "num_classes": 4, "options": {"min_size": 128, "max_size": 128}},
            "passes": {"passes": sizes["passes"], "dropout": 0.3, "batch_size": 8},
            "train": {
                "epochs": sizes["epochs0"], "batch_size": 8, "optimizer": "adamw", "lr": 0.002,
                "weight_decay": 1e-4, "warmup_iters": 20, "schedule": "cosine", "eval_every": 0,
                "augment": [{"name": "HorizontalFlip", "p": 0.5}],
            },
            "loop": {
                "rounds": sizes["rounds"], "budget": sizes["budget"], "strategies": strategies,
                "seeds": [seed], "retrain": "finetune", "finetune_epochs": sizes["epochs"],
                "finetune_lr": 0.0005, "finetune_warmup_iters": args.finetune_warmup,
                "pseudo_threshold": args.pseudo_threshold, "pseudo_ignore": args.pseudo_ignore,
            },
        },
        "bench_label_efficiency",
    )


def run_seed(out: Path, seed: int, sizes: dict, strategies: list[str], args: argparse.Namespace) -> list[dict]:
    """Every arm on one seed's scenario; the rows, the self-training arm's renamed."""
    data = make_scenario(out / "data", seed, sizes)
    config = bench_config(sizes, [s for s in strategies if s != SELF_TRAINING], seed, args)
    rows: list[dict] = []
    if config.loop.strategies:
        paths = run_loop(config, data, out, resume=args.resume, device=args.device, progress=False)
        rows += read_rows(paths["results"])
    if SELF_TRAINING in strategies:
        st_out = out / "self_training"
        shared = out / "runs" / f"seed{seed}" / "round0" / "train_summary.json"
        if shared.exists():  # the same round 0 as the other arms: reused, not trained again
            (st_out / "runs" / f"seed{seed}" / "round0").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared, st_out / "runs" / f"seed{seed}" / "round0" / "train_summary.json")
        st_config = dataclasses.replace(
            config, loop=dataclasses.replace(config.loop, strategies=(DEFAULT,), self_training=True)
        )
        paths = run_loop(st_config, data, st_out, resume=True, device=args.device, progress=False)
        rows += [{**r, "strategy": SELF_TRAINING} for r in read_rows(paths["results"])]
    return rows


def domain_maps(folder: Path, seed: int, strategy: str, rounds: int, device: str = "cpu") -> dict[str, float]:
    """bbox mAP of an arm's final model (round ``rounds``) on each domain of the seed's
    validation set (``old`` and ``drifted``, each with its own background-only images), and of
    the seed's round-0 model as ``round0_<domain>``; cached in ``folder/domain_maps.json`` with
    the checkpoint's path, size and modification time (an arm trained again is evaluated again)."""
    cache_path = folder / "domain_maps.json"
    cache = read_json(cache_path) if cache_path.exists() else {}
    runs = folder / "self_training" if strategy == SELF_TRAINING else folder
    arm = DEFAULT if strategy == SELF_TRAINING else strategy
    round0 = round_folder(folder, arm, seed, 0) / "last.pt"
    if not round0.exists():  # the self-training arm run alone trained its own round 0
        round0 = round_folder(runs, arm, seed, 0) / "last.pt"
    changed, val = False, read_json(folder / "data" / "val.json")
    for key, checkpoint in (("round 0", round0), (strategy, round_folder(runs, arm, seed, rounds) / "last.pt")):
        stat = checkpoint.stat()
        stamp = [str(checkpoint), stat.st_size, stat.st_mtime_ns]
        if cache.get(key, {}).get("checkpoint") != stamp:
            cache[key] = {"checkpoint": stamp, "maps": _maps_by_domain(checkpoint, val, folder / "data", device)}
            changed = True
    if changed:
        write_json(cache_path, cache, indent=1)
    return {**cache[strategy]["maps"], **{f"round0_{k}": v for k, v in cache["round 0"]["maps"].items()}}


def _maps_by_domain(checkpoint: Path, val: dict, image_root: Path, device: str) -> dict[str, float]:
    from det_al.loop.evaluation import evaluate_coco, predict
    from det_al.models.checkpoint import load_checkpoint

    model, _, categories, _ = load_checkpoint(checkpoint, device=device)
    results = predict(model, val, image_root, categories, device=device, batch_size=8)
    out = {}
    for domain in ("old", "drifted"):
        ids = {int(im["id"]) for im in val["images"] if im.get("domain") == domain}
        gt = {**val, "images": [im for im in val["images"] if int(im["id"]) in ids],
              "annotations": [a for a in val["annotations"] if int(a["image_id"]) in ids]}
        out[domain] = max(evaluate_coco(gt, [r for r in results if int(r["image_id"]) in ids], ("bbox",))["bbox"]["AP"], 0.0)
    return out


# --------------------------------------------------------------------------- the comparison


def _share(rows: list[dict], strategy: str, picked: dict[int, set[int]]) -> float | None:
    """Share of a strategy's picks (over every seed and round) that are in ``picked[seed]``."""
    total = hits = 0
    for r in rows:
        if r["strategy"] == strategy:
            for i in r["selected"]:
                total += 1
                hits += i in picked[r["seed"]]
    return hits / total if total else None


def compare(
    rows: list[dict], kinds: dict[str, dict[int, set[int]]], domains: dict[str, dict[int, dict]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per arm: labels added to reach random's final mean mAP, AULC and its paired
    differences, final mAP, and the drifted and background-only shares of its picks; with
    ``domains`` (``{arm: {seed: domain_maps(...)}}``) also the final model's mAP on each
    domain of the validation set and the paired difference on the drifted one.

    ``kinds``: ``{"drifted": {seed: image ids}, "empty": {seed: image ids}}``.
    """
    curves = seed_curves(rows)
    vs_random, vs_peer = label_efficiency(rows, RANDOM), label_efficiency(rows, PEER)
    random_curve = summarise(rows).get(RANDOM, [])
    out: dict[str, dict[str, Any]] = {}
    for s in curves:
        e = vs_random.get(s, {})
        out[s] = {
            "random_improved": bool(e.get("meaningful")),
            "added_pct_of_random": e.get("percent"),
            "labels_added_to_reach_random": e.get("added"),
            "random_labels_added": random_curve[-1]["images"] - random_curve[0]["images"] if random_curve else None,
            "final_map": mean_ci95([xy[1][-1] for xy in curves[s].values()]),
            "aulc": mean_ci95([aulc(*xy) for xy in curves[s].values()]),
            "aulc_diff_vs_random": e.get("aulc_diff", mean_ci95([])),
            "aulc_diff_vs_least_confidence": vs_peer.get(s, {}).get("aulc_diff", mean_ci95([])),
            "drifted_share": _share(rows, s, kinds["drifted"]),
            "empty_share": _share(rows, s, kinds["empty"]),
            "seeds": sorted(curves[s]),
        }
        if domains and s in domains:
            mine = domains[s]
            drifted = {seed: m["drifted"] for seed, m in mine.items()}
            out[s].update({
                "final_map_old": mean_ci95([m["old"] for m in mine.values()]),
                "final_map_drifted": mean_ci95(list(drifted.values())),
                "round0_map_drifted": mean_ci95([m["round0_drifted"] for m in mine.values()]),
                "drifted_map_diff_vs_random": paired_diff(
                    drifted, {seed: m["drifted"] for seed, m in domains.get(RANDOM, {}).items()}),
                "drifted_map_diff_vs_least_confidence": paired_diff(
                    drifted, {seed: m["drifted"] for seed, m in domains.get(PEER, {}).items()}),
            })
    return out


def format_report(rows: list[dict], strategies: list[str], comparison: dict[str, dict[str, Any]]) -> str:
    lines = format_curves(rows, strategies, "bbox mAP (COCO AP@[.5:.95]) on the validation set, mean ± std over seeds, "
                                            "by round (labels added)")
    lines += ["", "paired over seeds (mean [95 % CI]); a CI holding 0 is no difference"]
    head = f"{'arm':<22}{'added to reach':>16}{'AULC':>9}  {'AULC - random':<42}{'AULC - least_conf.':<42}{'drifted':>8}{'empty':>7}"
    lines += [head, "-" * len(head)]
    for s in strategies:
        c = comparison.get(s)
        if c is None:
            continue
        reach = (
            "-" if not c["random_improved"]
            else "never" if c["added_pct_of_random"] is None
            else f"{c['labels_added_to_reach_random']:.1f} ({c['added_pct_of_random']:.0f}%)"
        )
        share = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
        lines.append(
            f"{s:<22}{reach:>16}{c['aulc']['mean']:>9.4f}  {verdict(c['aulc_diff_vs_random']):<42}"
            f"{verdict(c['aulc_diff_vs_least_confidence']):<42}{share(c['drifted_share']):>8}{share(c['empty_share']):>7}"
        )
    if any("final_map_drifted" in c for c in comparison.values()):
        lines += ["", "the final model on each domain of the validation set (bbox mAP, mean over seeds; paired [95 % CI])"]
        head = f"{'arm':<22}{'old':>8}{'drifted':>9}  {'drifted - random':<42}{'drifted - least_conf.':<42}"
        lines += [head, "-" * len(head)]
        for s in strategies:
            c = comparison.get(s, {})
            if "final_map_drifted" in c:
                lines.append(
                    f"{s:<22}{c['final_map_old']['mean']:>8.4f}{c['final_map_drifted']['mean']:>9.4f}  "
                    f"{verdict(c['drifted_map_diff_vs_random']):<42}{verdict(c['drifted_map_diff_vs_least_confidence']):<42}"
                )
        r0 = next(c["round0_map_drifted"]["mean"] for c in comparison.values() if "round0_map_drifted" in c)
        lines.append(f"(round 0, before any selection: drifted {r0:.4f})")
    return "\n".join(lines)


def targets(comparison: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for the default strategy; ``None`` where there is nothing to judge."""
    d, r = comparison.get(DEFAULT), comparison.get(RANDOM)
    if d is None or r is None:
        return {}
    vs_random, vs_peer = d["aulc_diff_vs_random"], d["aulc_diff_vs_least_confidence"]
    return {
        # None when random did not improve: then every curve "reaches" random's final mAP at once
        "added_le_50pct_of_random": None if not r["random_improved"]
        else d["added_pct_of_random"] is not None and d["added_pct_of_random"] <= TARGET_ADDED_PCT,
        "aulc_ci_vs_random_above_0": None if vs_random["ci95"] is None else vs_random["ci95"][0] > 0,
        "aulc_above_least_confidence": None if vs_peer["mean"] is None else vs_peer["mean"] > 0,
        "aulc_ci_vs_least_confidence_above_0": None if vs_peer["ci95"] is None else vs_peer["ci95"][0] > 0,
        "drifted_share_ge_random": None if d["drifted_share"] is None or r["drifted_share"] is None
        else d["drifted_share"] >= r["drifted_share"],
    }


def _kinds(out: Path, seeds: list[int]) -> dict[str, dict[int, set[int]]]:
    kinds: dict[str, dict[int, set[int]]] = {"drifted": {}, "empty": {}}
    for seed in seeds:
        oracle = read_json(out / f"seed{seed}" / "data" / "oracle.json")
        annotated = {int(a["image_id"]) for a in oracle["annotations"]}
        kinds["drifted"][seed] = {int(im["id"]) for im in oracle["images"] if im.get("domain") == "drifted"}
        kinds["empty"][seed] = {int(im["id"]) for im in oracle["images"] if int(im["id"]) not in annotated}
    return kinds


def finished_seeds(rows: list[dict]) -> tuple[list[int], list[int]]:
    """``(seeds, dropped)``: the seeds every arm has finished (reached the last round of any
    row), and the others. Paired seeds: a partial seed would compare the arms over different
    seeds, and random's final mAP over fewer of them."""
    last_round = max((r["round"] for r in rows), default=0)
    arms = set(r["strategy"] for r in rows)
    finished = {(r["strategy"], r["seed"]) for r in rows if r["round"] == last_round}
    all_seeds = {r["seed"] for r in rows}
    seeds = sorted(s for s in all_seeds if all((a, s) in finished for a in arms))
    return seeds, sorted(all_seeds - set(seeds))


def report(
    rows: list[dict], strategies: list[str], sizes: dict, out: Path, seconds: float, seed_minutes: dict,
    device: str = "cpu",
) -> dict:
    """Print the tables and the verdict; write ``summary.json``, ``results.csv`` and the plot."""
    if not rows:
        raise InputError("no results yet", out)
    RowsWriter(out / "results.csv", rows)
    plot_learning_curves(rows, out / "learning_curve.png", "drift scenario: mean ± std over paired seeds")
    seeds, dropped = finished_seeds(rows)
    last_round = max(r["round"] for r in rows)
    if dropped:
        print(f"not counted: seed{'s' if len(dropped) > 1 else ''} {', '.join(map(str, dropped))} (not every arm finished)")
    if not seeds:
        raise InputError("no seed has finished every arm yet", out)
    rows = [r for r in rows if r["seed"] in seeds]
    domains: dict[str, dict[int, dict]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        for seed in seeds:
            last = max((r["round"] for r in rows if r["strategy"] == strategy and r["seed"] == seed), default=0)
            if last == last_round:  # its final model on each validation domain
                domains.setdefault(strategy, {})[seed] = domain_maps(out / f"seed{seed}", seed, strategy, last, device)
    comparison = compare(rows, _kinds(out, seeds), domains)
    met = targets(comparison)
    print()
    print(format_report(rows, strategies, comparison))
    print()
    if not comparison.get(RANDOM, {}).get("random_improved", True):
        print("note: random's final mean mAP is not above its round 0: 'added to reach' says nothing here")
    print("targets for the default strategy 'top': " + ", ".join(f"{k} {v}" for k, v in met.items()))
    print(f"plot: {out / 'learning_curve.png'}; summary: {out / 'summary.json'}; {seconds / 60:.1f} min")
    summary = {
        "sizes": {**sizes, "seeds": list(sizes["seeds"])},
        "seeds_run": seeds,
        "strategies": comparison,
        "curves": summarise(rows),
        "targets": met,
        "minutes": round(seconds / 60, 2),
        "minutes_per_seed": seed_minutes,
    }
    write_json(out / "summary.json", summary, indent=1)
    return summary


def main(args: argparse.Namespace) -> dict:
    sizes = sizes_from(args)
    strategies = [s for s in args.strategies.split(",") if s]
    out = Path(args.out)
    t0 = time.perf_counter()
    seed_minutes: dict[int, float] = {}
    if not args.report_only:
        print(
            f"drift scenario, drawn per seed: {sizes['labelled']} labelled (old domain); pool {sizes['pool']} and "
            f"val {sizes['val']} ({sizes['drift']:.0%} drifted, {sizes['empty']:.0%} background only); arms "
            f"{', '.join(strategies)}; seeds {list(sizes['seeds'])}; {sizes['rounds']} rounds of {sizes['budget']} "
            f"images; round 0: {sizes['epochs0']} epochs from scratch, then {sizes['epochs']} fine-tuning epochs; "
            f"{sizes['passes']} passes",
            flush=True,
        )
        for seed in sizes["seeds"]:
            t = time.perf_counter()
            run_seed(out / f"seed{seed}", seed, sizes, strategies, args)
            seed_minutes[seed] = round((time.perf_counter() - t) / 60, 2)
            print(f"seed {seed}: {seed_minutes[seed]:.1f} min", flush=True)
    rows: list[dict] = []
    for seed in sizes["seeds"]:
        folder = out / f"seed{seed}"
        rows += read_rows(folder / "results.csv")
        rows += [{**r, "strategy": SELF_TRAINING} for r in read_rows(folder / "self_training" / "results.csv")]
    rows = [r for r in rows if r["strategy"] in strategies]
    return report(rows, strategies, sizes, out, time.perf_counter() - t0, seed_minutes, args.device)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("det_al.loop.rounds").setLevel(logging.INFO)
    try:
        main(get_args_parser().parse_args())
    except InputError as e:
        print(f"bench_label_efficiency.py: error: {e}", file=sys.stderr)
        sys.exit(2)
