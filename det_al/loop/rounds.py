"""A simulated active-learning loop: train -> evaluate -> score -> select -> label, in rounds.

For every strategy and seed of ``config.loop`` the loop starts from the same labelled set:

1. train on the labelled set: from scratch, or (``loop.retrain: finetune``) from the previous
   round's weights for ``loop.finetune_epochs`` at ``loop.finetune_lr`` after a warm-up of
   ``loop.finetune_warmup_iters`` steps (default none); round 0 is the same for every strategy
   of a seed, so it is trained, evaluated and scored once. With ``loop.self_training``, rounds
   after the first also train on the unselected pool images' confident pseudo-labels from
   the previous round's scoring (:mod:`det_al.loop.self_training`);
2. evaluate on the validation set (COCO bbox mAP);
3. unless this was the last round: score the pool (:func:`det_al.score_images`), pick a
   batch with the strategy (:mod:`det_al.selection.strategies`), reveal the selected images' labels from
   the oracle file and move them from the pool to the labelled set. Two ranking fields exist
   only here or may be missing from the ranking: ``top:oracle_error`` ranks by the true error
   of each image against the oracle (the positive control), and ``least_confidence`` (the
   one-pass peer score) is computed from the pseudo-labels when the ranking lacks it
   (:mod:`det_al.loop.oracle`).

Each round appends one row to ``results.csv`` (:mod:`det_al.loop.results`), flushed at once: the
selected image ids are in the row, so after a crash ``resume=True`` skips completed rows and
rebuilds every strategy's labelled set and pool from the recorded selections. Per round, the
training folder ``runs/<strategy>/seed<s>/round<r>/`` holds the labelled COCO file and the
checkpoints (``runs/seed<s>/round0/`` for the shared round 0); on resume a finished training
there is reused. ``learning_curve.png`` plots mean +- std of mAP over seeds against the
labelled images, one line per strategy.

Under torchrun every process calls :func:`run_loop`; rank 0 runs the loop and, at each
training, the others train with it (DistributedDataParallel, :func:`det_al.loop.training.train_model`)
and wait for it otherwise (evaluation, scoring and selection run on rank 0 alone).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from det_al.api import score_images
from det_al.config import Config, config_to_dict
from det_al.data.files import read_json, write_json
from det_al.errors import InputError
from det_al.loop.data import LoopData, LoopRun, budgets, check_loop_config, subset
from det_al.loop.evaluation import evaluate_coco, predict
from det_al.loop.oracle import image_errors, least_confidence
from det_al.loop.results import RowsWriter, plot_learning_curves, read_rows
from det_al.loop.self_training import pseudo_labelled
from det_al.loop.train_setup import check_train_config
from det_al.loop.training import train_model
from det_al.models.batchnorm import check_sync
from det_al.models.checkpoint import load_checkpoint
from det_al.run.distributed import barrier, broadcast_from_main, fail_together, is_main, process_group, world_size
from det_al.selection.strategies import get_strategy

logger = logging.getLogger(__name__)

# Settings that must not change when a run is resumed (rounds, strategies and seeds may grow).
_FIXED_ON_RESUME = (
    "budget", "budget_boxes", "retrain", "finetune_epochs", "finetune_lr", "finetune_warmup_iters", "pre_factor",
    "self_training", "pseudo_threshold", "pseudo_ignore",
)
PSEUDO_LABELS = "pseudo_labels.json"  # in a round's folder: the pool's pseudo-labels it trains on


# --------------------------------------------------------------------------- one round's parts


def _count_boxes(coco: Mapping[str, Any]) -> int:
    return len(coco.get("annotations", []))


def _evaluate(checkpoint: Path, config: Config, data: LoopData, device: str) -> dict[str, float]:
    model, _, categories, _ = load_checkpoint(checkpoint, config, device=device)
    results = predict(model, data.val, data.image_root, categories, device=device, batch_size=config.passes.batch_size)
    return evaluate_coco(data.val, results, ("bbox",))["bbox"]


def _needs_labelled(strategy: str) -> bool:
    """Whether a strategy uses the labelled set (its embeddings, novelty or classes)."""
    name, _, key = strategy.partition(":")
    return name in ("diverse", "fused", "class-balanced", "typical", "switch") or key in ("novelty", "fused")


# --------------------------------------------------------------------------- the loop


def _train(
    config: Config, coco: dict, out_dir: Path, init: Path | None, data: LoopData, device: str, progress: bool,
    reuse: bool = False,
) -> Path:
    """Train (or, with ``reuse``, take a finished training in ``out_dir``); the last checkpoint."""
    done = out_dir / "train_summary.json"
    if reuse and done.exists():
        summary = read_json(done)
        if Path(summary.get("last", "")).exists():
            logger.info("reusing the finished training in %s", out_dir)
            return Path(summary["last"])
    train_json = out_dir / "labelled.json"
    write_json(train_json, coco)
    job = {
        "config": config, "train_json": train_json, "image_root": data.image_root, "out_dir": out_dir,
        "categories": data.categories, "init_checkpoint": init,
        "overwrite": True,  # a round's training that a crash cut short starts over
        "allow_outside_root": data.allow_outside_root,
    }
    broadcast_from_main(job)  # under torchrun the other ranks train with this one (follow_training)
    summary = train_model(**job, device=device, progress=progress)
    last = Path(summary.get("last") or out_dir / "last.pt")
    write_json(done, {"last": os.fspath(last), "epochs": summary.get("epochs"), "seconds": summary.get("seconds")})
    return last


def follow_training(device: str) -> None:
    """Ranks > 0 under torchrun: train with rank 0, job after job, until it sends ``None``.

    Rank 0 runs the loop and broadcasts the arguments of each :func:`train_model` call before
    it makes it (in :func:`_train`), and ``None`` when the loop is done.
    """
    while (job := broadcast_from_main(None)) is not None:
        train_model(**job, device=device, progress=False)


def run_loop(
    config: Config,
    data: LoopData,
    out_dir: str | os.PathLike,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    run_info: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Run every strategy and seed of ``config.loop`` for ``rounds`` selections.

    Writes ``out_dir/results.csv`` (one row per strategy, seed and round, appended as it goes),
    ``out_dir/learning_curve.png``, ``out_dir/loop.json`` (the settings) and the per-round
    training folders under ``out_dir/runs/``. With ``resume``, rows already in ``results.csv``
    are kept and their work is skipped; without it an existing ``results.csv`` is an error.

    Returns the paths ``results``, ``plot`` and ``settings``.

    Under torchrun every process calls this with the same arguments: each checks them (bad input
    stops every process with its message), then rank 0 runs the loop while the others follow
    its trainings (:func:`follow_training`). ``out_dir`` must be a folder every process reads:
    they read the labelled set that rank 0 writes there.
    """
    with process_group(device) as device:
        with fail_together():
            check_loop_config(config)
            check_train_config(config.train)  # before anything is written, not at round 0's training
            check_sync(config.train.batchnorm, world_size(), device)
            paths, settings, rows = _results_so_far(config, out_dir, resume, run_info)
        barrier()  # rank 0 writes only after every rank has looked at the folder
        if not is_main():
            follow_training(device)
            return paths
        _run_rounds(config, data, paths, settings, rows, resume, device, progress)
        broadcast_from_main(None)  # the others stop following
    return paths


def _results_so_far(
    config: Config, out_dir: str | os.PathLike, resume: bool, run_info: Mapping[str, Any] | None
) -> tuple[dict[str, Path], dict, list[dict]]:
    """The output paths, the settings to record and the rows of an earlier run (with ``resume``)."""
    out = Path(out_dir)
    paths = {"results": out / "results.csv", "plot": out / "learning_curve.png", "settings": out / "loop.json"}
    settings = {"loop": config_to_dict(config)["loop"], **(run_info or {})}
    rows: list[dict] = []
    if paths["results"].exists():
        if not resume:
            raise InputError("results.csv exists: pass --resume to continue it, or choose another --out", out)
        rows = read_rows(paths["results"])
        if paths["settings"].exists():
            before = read_json(paths["settings"]).get("loop", {})
            for key in _FIXED_ON_RESUME:
                if key in before and before[key] != settings["loop"][key]:
                    raise InputError(
                        f"cannot resume with loop.{key}={settings['loop'][key]!r}: the run used {before[key]!r}",
                        paths["settings"],
                    )
    return paths, settings, rows


def _run_rounds(
    config: Config,
    data: LoopData,
    paths: Mapping[str, Path],
    settings: Mapping[str, Any],
    rows: list[dict],
    resume: bool,
    device: str,
    progress: bool,
) -> None:
    """The rounds of every strategy and seed (rank 0's part of :func:`run_loop`)."""
    out = paths["results"].parent
    out.mkdir(parents=True, exist_ok=True)
    write_json(paths["settings"], settings, indent=1)
    writer = RowsWriter(paths["results"], rows)
    done = {(r["strategy"], r["seed"], r["round"]): r for r in rows}
    budget, budget_boxes = budgets(config)
    loop = config.loop
    shared: dict[tuple[int, Any], Any] = {}  # round 0 of a seed: metrics and pool scores, shared by strategies
    trained: set[Path] = set()

    for seed in loop.seeds:
        for strategy in loop.strategies:
            run = LoopRun(strategy, seed, data)
            previous: Path | None = None
            for r in range(loop.rounds + 1):
                if (strategy, seed, r) in done:
                    run.reveal(done[(strategy, seed, r)]["selected"])
                    continue
                t0 = time.monotonic()
                folder = round_folder(out, strategy, seed, r)
                round_config = _round_config(config, seed, r)
                init = None
                if loop.retrain == "finetune" and r > 0:
                    previous = previous or _round_checkpoint(out, strategy, seed, r - 1)
                    init = previous if previous is not None and previous.exists() else None
                    if init is None:
                        logger.warning("no checkpoint of round %d to fine-tune from: training from scratch", r - 1)
                labelled = run.labelled()
                if loop.self_training and r > 0 and run.pseudo is None:  # a resume: from the file, or scored again
                    before = _round_checkpoint(out, strategy, seed, r - 1)
                    run.pseudo = _pseudo_labels_for(run, folder, before, _round_config(config, seed, r - 1), device)
                # a finished training is reused on --resume, and for the shared round 0
                checkpoint = _train(round_config, run.training_set(), folder, init, data, device, progress, reuse=resume or folder in trained)
                trained.add(folder)
                previous = checkpoint
                if r == 0 and (seed, "metrics") in shared:
                    metrics = shared[(seed, "metrics")]
                else:
                    metrics = _evaluate(checkpoint, round_config, data, device)
                    if r == 0:
                        shared[(seed, "metrics")] = metrics
                chosen: list[dict] = []
                if r < loop.rounds and run.pool_ids:
                    scores = _round_scores(run, checkpoint, round_config, r, shared, device, progress)
                    chosen = _select(strategy, scores, data, budget, budget_boxes, seed * 1000 + r, loop.pre_factor,
                                     fusion_weights=dict(loop.fusion_weights) or None, fusion_k=loop.fusion_k)
                selected = [int(c["image_id"]) for c in chosen]
                row = _row(run, r, labelled, metrics, selected, time.monotonic() - t0)
                writer.append(row)
                rows.append(row)
                run.reveal(selected)
                if loop.self_training and chosen:
                    run.pseudo = _pseudo_labels(run, scores, round_folder(out, strategy, seed, r + 1), loop)
                logger.info(
                    "%s seed %d round %d: %d labelled images, mAP %.4f; selected %d (%s)",
                    strategy, seed, r, row["labelled_images"], row["map"], len(selected), row["selected_domains"],
                )
            plot_learning_curves(rows, paths["plot"])
    plot_learning_curves(rows, paths["plot"])


def _round_scores(run: LoopRun, checkpoint: Path, config: Config, r: int, shared: dict, device: str, progress: bool) -> Any:
    """The round's scored pool, with the labelled set (novelty) when the strategy uses it; round
    0's is shared by the strategies of a seed."""
    novelty = _needs_labelled(run.strategy)
    key = (run.seed, r, novelty)
    if r == 0 and key in shared:
        return shared[key]
    model, _, categories, _ = load_checkpoint(checkpoint, config, device=device)
    scores = score_images(model, run.pool(), categories=categories, config=config, image_root=run.data.image_root,
                          device=device, progress=progress, allow_outside_root=run.data.allow_outside_root,
                          labelled=run.labelled() if novelty else None, labelled_root=run.data.image_root)
    if r == 0:
        shared[key] = scores
    return scores


def _row(run: LoopRun, r: int, labelled: dict, metrics: Mapping[str, float], selected: list[int], seconds: float) -> dict:
    """The ``results.csv`` row of a round."""
    revealed = subset(run.data.oracle, selected)
    return {
        "strategy": run.strategy,
        "seed": run.seed,
        "round": r,
        "labelled_images": len(labelled["images"]),
        "labelled_boxes": _count_boxes(labelled),
        "map": max(metrics["AP"], 0.0),
        "map50": max(metrics["AP50"], 0.0),
        "pool_images": len(run.pool_ids),
        "selected_images": len(selected),
        "selected_boxes": _count_boxes(revealed),
        "selected_domains": _domains(revealed),
        "seconds": seconds,
        "selected": selected,
    }


def round_folder(out: Path, strategy: str, seed: int, r: int) -> Path:
    """The training folder of a round; round 0 is the same for every strategy of a seed."""
    if r == 0:
        return out / "runs" / f"seed{seed}" / "round0"
    return out / "runs" / strategy.replace(":", "-").replace("/", "-") / f"seed{seed}" / f"round{r}"


def _round_config(config: Config, seed: int, r: int) -> Config:
    """The config of one round: its own training seed, the run's dropout seed, and the
    fine-tuning epochs, learning rate and warm-up after round 0 when ``loop.retrain`` is
    ``finetune``."""
    loop = config.loop
    train = dataclasses.replace(config.train, seed=seed * 1000 + r)
    if loop.retrain == "finetune" and r > 0:
        train = dataclasses.replace(train, warmup_iters=loop.finetune_warmup_iters)
        if loop.finetune_epochs > 0:
            train = dataclasses.replace(train, epochs=loop.finetune_epochs)
        if loop.finetune_lr > 0:
            train = dataclasses.replace(train, lr=loop.finetune_lr)
    return dataclasses.replace(config, train=train, passes=dataclasses.replace(config.passes, seed=seed))


def _round_checkpoint(out: Path, strategy: str, seed: int, r: int) -> Path | None:
    folder = round_folder(out, strategy, seed, r)
    done = folder / "train_summary.json"
    if done.exists():
        return Path(read_json(done).get("last", folder / "last.pt"))
    return folder / "last.pt" if (folder / "last.pt").exists() else None


def _domains(coco: Mapping[str, Any]) -> str:
    """``"drifted:3 old:7"`` when images carry a ``domain`` key (the synthetic data do)."""
    counts: dict[str, int] = {}
    for im in coco["images"]:
        if "domain" in im:
            counts[str(im["domain"])] = counts.get(str(im["domain"]), 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def _select(
    strategy: str,
    scores: Any,
    data: LoopData,
    budget: int | None,
    budget_boxes: int | None,
    seed: int,
    pre_factor: float,
    **fusion: Any,
) -> list[dict]:
    """Run one strategy on a scored pool (scored with the labelled set when the strategy needs
    novelty or the labelled embeddings), with the context it needs."""
    records = scores.ranking
    if not records:
        return []
    _, _, key = strategy.partition(":")
    ids = [int(r["image_id"]) for r in records]
    if key == "least_confidence" and "least_confidence" not in records[0]:
        values = least_confidence(ids, scores.pseudo_labels()["annotations"])
        records = [{**r, "least_confidence": values[int(r["image_id"])]} for r in records]
    if key == "oracle_error":
        errors = image_errors(ids, scores.pseudo_labels()["annotations"], data.oracle.get("annotations", []))
        records = [{**r, "oracle_error": errors[int(r["image_id"])]} for r in records]
    context: dict[str, Any] = {"seed": seed, "pre_factor": pre_factor, **scores.strategy_context(), **fusion}
    context.setdefault("embeddings", np.zeros((0, 0), np.float32))
    context.setdefault("embedding_ids", [])
    return get_strategy(strategy)(records, budget, budget_boxes, **context)


def _pseudo_labels(run: LoopRun, scores: Any, next_folder: Path, loop: Any) -> dict:
    """The still unselected pool images' pseudo-labels of ``scores`` (the round's scoring),
    kept in the next round's folder for a resume."""
    pool = run.pool()
    pseudo = pseudo_labelled(pool["images"], scores.pseudo_labels()["annotations"], loop.pseudo_threshold, loop.pseudo_ignore, run.data.categories)
    write_json(next_folder / PSEUDO_LABELS, pseudo)
    ignored = sum(1 for a in pseudo["annotations"] if a.get("ignore"))
    logger.info(
        "self-training: %d of %d pool images pseudo-labelled (%d boxes, %d ignore regions)",
        len(pseudo["images"]), len(pool["images"]), len(pseudo["annotations"]) - ignored, ignored,
    )
    return pseudo


def _pseudo_labels_for(run: LoopRun, folder: Path, previous: Path | None, config: Config, device: str) -> dict:
    """On a resume: the pseudo-labels a round trains on, from its folder, or by scoring the pool
    again with the previous round's checkpoint."""
    if (folder / PSEUDO_LABELS).exists():
        return read_json(folder / PSEUDO_LABELS)
    if previous is None or not previous.exists():
        raise InputError(f"cannot resume self-training: no {PSEUDO_LABELS} and no checkpoint of the round before", folder)
    model, _, categories, _ = load_checkpoint(previous, config, device=device)
    scores = score_images(model, run.pool(), categories=categories, config=config, image_root=run.data.image_root,
                          device=device, progress=False, allow_outside_root=run.data.allow_outside_root)
    return _pseudo_labels(run, scores, folder, config.loop)
