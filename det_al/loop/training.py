"""Training a torchvision detector on a COCO file (``det-al train``, the demo, the loop).

:func:`train_model` runs the whole job over :class:`det_al.data.datasets.CocoDetectionDataset`:
seeds, optimizer and learning-rate schedule from ``config.train``, progress bars, periodic COCO
evaluation, ``best.pt`` / ``last.pt`` in det_al's checkpoint format, ``metrics.jsonl``, resuming
from ``last.pt`` and a wall-clock cap; under ``torchrun``, DistributedDataParallel over the
processes (see :func:`train_model`).

The learning rate of iteration ``i`` (0-based, over the whole run) is
``lr * warmup(i) * schedule(i)`` (:func:`lr_factor`): a linear warm-up from ``0.001 * lr`` over
``train.warmup_iters`` iterations, times a cosine decay to 0 over all ``epochs`` (``cosine``),
a factor ``gamma`` at each epoch of ``milestones`` (``step``) or 1 (``constant``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from det_al.data.augment import build_augment
from det_al.models.batchnorm import BATCHNORM_MODES, prepare_batchnorm, resolve_batchnorm
from det_al.models.checkpoint import load_checkpoint, save_checkpoint
from det_al.data.coco import load_coco
from det_al.config import Config, TrainConfig
from det_al.data.datasets import CocoDetectionDataset, collate_detection
from det_al.run.distributed import (
    any_rank,
    barrier,
    broadcast_from_main,
    fail_together,
    gather,
    is_main,
    mean_over_ranks,
    process_group,
    rank,
    rank_sampler,
    world_size,
)
from det_al.errors import InputError
from det_al.loop.evaluation import evaluate_coco, predict
from det_al.data.files import remove_earlier_outputs, write_jsonl
from det_al.data.images import check_file_names, check_image_root
from det_al.models.build import build_model, has_masks

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
WARMUP_START = 0.001  # the warm-up starts at this share of train.lr (torchvision's reference)


# --------------------------------------------------------------------------- optimisation


def check_train_config(train: TrainConfig) -> None:
    """Range checks of ``config.train``; a bad value is an :class:`InputError` naming the key."""
    if train.optimizer not in OPTIMIZERS:
        raise InputError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{train.optimizer}'")
    if train.schedule not in SCHEDULES:
        raise InputError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{train.schedule}'")
    if train.batchnorm not in BATCHNORM_MODES:
        raise InputError(f"train.batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got '{train.batchnorm}'")
    checks = [
        ("epochs", train.epochs >= 1, ">= 1"),
        ("batch_size", train.batch_size >= 1, ">= 1"),
        ("lr", train.lr > 0, "> 0"),
        ("momentum", 0 <= train.momentum < 1, "in [0, 1)"),
        ("weight_decay", train.weight_decay >= 0, ">= 0"),
        ("warmup_iters", train.warmup_iters >= 0, ">= 0"),
        ("gamma", train.gamma > 0, "> 0"),
        ("eval_every", train.eval_every >= 0, ">= 0"),
        ("num_workers", train.num_workers >= 0, ">= 0"),
        ("max_minutes", train.max_minutes >= 0, ">= 0 (0: no cap)"),
        ("grad_clip", train.grad_clip >= 0, ">= 0 (0: no clipping)"),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise InputError(f"train.{key} must be {rule}, got {getattr(train, key)}")


def lr_factor(iteration: int, iters_per_epoch: int, train: TrainConfig) -> float:
    """The multiple of ``train.lr`` used at ``iteration`` (0-based, counted over the whole run).

    >>> from det_al.config import TrainConfig
    >>> lr_factor(0, 10, TrainConfig(epochs=2, warmup_iters=0, schedule="cosine"))
    1.0
    >>> lr_factor(10, 10, TrainConfig(epochs=2, warmup_iters=0, schedule="cosine"))
    0.5
    >>> lr_factor(5, 10, TrainConfig(epochs=2, warmup_iters=10, schedule="constant"))
    0.5005
    """
    warmup = 1.0
    if iteration < train.warmup_iters:
        warmup = WARMUP_START + (1.0 - WARMUP_START) * iteration / train.warmup_iters
    total = max(1, train.epochs * iters_per_epoch)
    if train.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * min(iteration, total) / total))
    elif train.schedule == "step":
        epoch = iteration // max(1, iters_per_epoch)
        decay = train.gamma ** sum(epoch >= m for m in train.milestones)
    else:
        decay = 1.0
    return warmup * decay


def make_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over the trainable parameters, as ``train.optimizer`` says."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Any,
    device: str | torch.device,
    grad_clip: float = 0.0,
    deadline: float | None = None,
    bar: Any = None,
) -> dict[str, Any]:
    """One pass over ``loader`` (one optimizer and scheduler step per batch).

    Stops early, after a whole step, once ``time.monotonic()`` passes ``deadline``. Returns the
    number of ``steps`` run, the mean of each loss term and of their sum (``loss``), and
    ``stopped`` (whether the deadline cut the epoch short).

    Under torchrun (``model`` a DistributedDataParallel, ``loader`` this rank's share) the
    processes agree after every step on whether to stop (one passed the deadline) and before
    it on whether the loss diverged (on one of them), so they stop or raise together; the
    loss means are averaged over the processes.
    """
    model.train()
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    stopped = False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for images, targets in loader:
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        finite = bool(torch.isfinite(loss))
        if any_rank(not finite, loss.device):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            where = f"loss {loss.item()} with {terms}" if not finite else "on another process"
            raise InputError(f"training diverged ({where}); lower train.lr or set train.grad_clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        steps += 1
        sums["loss"] += loss.item()
        for k, v in losses.items():
            sums[k] += v.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2g}")
        if deadline is not None and any_rank(time.monotonic() >= deadline, loss.device):
            stopped = True
            break
    means = mean_over_ranks({k: v / max(1, steps) for k, v in sums.items()}, device)
    return {"steps": steps, "stopped": stopped, **means}


# --------------------------------------------------------------------------- the job


def _read_metrics(path: Path, up_to_iteration: int) -> list[dict[str, Any]]:
    """Records of an earlier run's ``metrics.jsonl`` up to the resumed iteration."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if record.get("iteration", 0) <= up_to_iteration:
                    records.append(record)
    return records


def _check_categories(categories: Sequence[Mapping[str, Any]], coco: Mapping[str, Any], path: Any) -> None:
    """Every category the COCO file annotates must be one of the model's (by id)."""
    known = {int(c["id"]) for c in categories}
    used = {int(a["category_id"]) for a in coco.get("annotations", []) if not a.get("iscrowd", 0)}
    missing = sorted(used - known)
    if missing:
        raise InputError(
            f"annotations use category id {missing[0]}, which is not one of the model's categories "
            f"{sorted(known)}", path,
        )


def _predict_and_evaluate(model, val, image_root, categories, device, batch_size) -> dict[str, dict[str, float]]:
    results = predict(model, val, image_root, categories, device=device, batch_size=batch_size)
    iou_types = ("bbox", "segm") if has_masks(model) else ("bbox",)
    return evaluate_coco(val, results, iou_types)


def train_model(
    config: Config,
    train_json: str | os.PathLike,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_json: str | os.PathLike | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    init_checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """Train ``config.model`` on ``train_json`` and write checkpoints and metrics to ``out_dir``.

    Args:
        config: the model to build (``config.model``) and how to train it (``config.train``).
        train_json, val_json: COCO files; images are read from ``image_root / file_name``.
            With ``val_json``, COCO evaluation runs every ``train.eval_every`` epochs and after
            the last one (``eval_every: 0``: after the last one only).
        categories: the user's categories in label order; default: the training file's, in
            file order (or the checkpoint's when starting from or resuming a det_al checkpoint).
        init_checkpoint: a det_al checkpoint whose weights are the starting point.
        resume: continue from ``out_dir/last.pt`` (model, optimizer, schedule, epoch), up to
            ``train.epochs`` of the given config (raise it to train further).
        overwrite: start over in an ``out_dir`` that holds an earlier run's ``last.pt`` or
            ``best.pt``; without it (or ``resume``) such a folder is an :class:`InputError`.
        allow_outside_root: read ``file_name`` entries that escape ``image_root`` (refused
            otherwise: :func:`det_al.data.images.check_file_names`).

    ``config.model.num_classes`` ``None`` means "from the data": the categories + 1 (those
    given, else the training file's); the summary's ``num_classes`` says what was used.

    Writes ``out_dir/last.pt`` after every epoch, ``out_dir/best.pt`` whenever bbox AP on
    ``val_json`` improves, and ``out_dir/metrics.jsonl`` (one record per epoch). With
    ``train.max_minutes``, training stops after the step that passes the cap, evaluates and
    writes its checkpoints (resuming goes on from that step).

    Returns:
        a summary: ``epochs`` (completed), ``iterations``, ``final_loss`` (mean over the last
        epoch run), ``best_map`` and ``best_epoch`` (``None`` without validation), ``metrics``
        (the last evaluation), ``stopped_early`` (time cap), ``batchnorm`` (the
        ``train.batchnorm`` mode used, ``auto`` resolved: :mod:`det_al.models.batchnorm`),
        ``seconds``, and the paths ``last``, ``best`` (``None`` without validation),
        ``checkpoint`` (best, else last) and ``metrics_log``.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this with the same arguments (as
    ``det-al train`` and ``det-al loop`` do). The processes join a process group
    (:func:`det_al.run.distributed.process_group`: gloo on CPU; NCCL with ``device="cuda"``, each
    process on ``cuda:LOCAL_RANK``), the model is wrapped in DistributedDataParallel and each
    epoch is split between them (:func:`det_al.run.distributed.rank_sampler`), so a step takes
    ``train.batch_size`` images on every process, ``batch_size * world`` in all, at
    ``train.lr`` as configured (raise it yourself to keep the lr per image). An epoch has
    ``ceil(ceil(images / world) / batch_size)`` steps; the schedule and ``warmup_iters``
    count them. Bad input raises on every process before training starts. Only rank 0
    evaluates, logs and writes (the others wait for it); checkpoints hold the bare model's
    weights, so they load like a single process's. ``resume`` needs the number of processes of
    the run it continues.
    """
    with process_group(device) as device:
        return _train_in_group(
            config, train_json, image_root, out_dir, val_json, categories, init_checkpoint, resume,
            device, progress and is_main(), overwrite, allow_outside_root,
        )


def _train_in_group(
    config: Config,
    train_json: str | os.PathLike,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_json: str | os.PathLike | None,
    categories: Sequence[Mapping[str, Any]] | None,
    init_checkpoint: str | os.PathLike | None,
    resume: bool,
    device: str,
    progress: bool,
    overwrite: bool,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """:func:`train_model` on every process of the group (or on the one process)."""
    t0 = time.monotonic()
    train_cfg = config.train
    main, world, this_rank = is_main(), world_size(), rank()
    out = Path(out_dir)
    last_path, best_path, log_path = out / "last.pt", out / "best.pt", out / "metrics.jsonl"
    extra: dict[str, Any] = {}
    with fail_together():  # no collective in here: a rank that fails makes every rank fail
        check_train_config(train_cfg)
        if not resume and not overwrite and (last_path.exists() or best_path.exists()):
            raise InputError(
                f"holds the checkpoints of an earlier training ({(last_path if last_path.exists() else best_path).name}): "
                "add --resume to continue it, or --overwrite to start over", out,
            )
        transform = build_augment(train_cfg.augment)
        train = load_coco(train_json, require_annotations=True)
        val = load_coco(val_json, require_annotations=True) if val_json is not None else None
        check_image_root(image_root)
        check_file_names(train["images"], image_root, train_json, allow_outside_root)
        if val is not None:
            check_file_names(val["images"], image_root, val_json, allow_outside_root)
        if config.model.num_classes is None:  # "from the data"
            given = train["categories"] if categories is None else categories
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=len(given) + 1))
            logger.info("model.num_classes not set: %d (%d categories of %s + background)",
                        config.model.num_classes, len(given), "the given categories" if categories is not None else train_json)

        seed_everything(train_cfg.seed)
        if resume:
            if not last_path.exists():
                raise InputError("cannot resume: no last.pt in the output folder", out)
            model, _, ckpt_categories, extra = load_checkpoint(last_path, config, device=device)
            categories = ckpt_categories
            if int(extra.get("world_size", 1)) != world:
                raise InputError(
                    f"cannot resume: last.pt was written by a run of {extra.get('world_size', 1)} "
                    f"processes, this one has {world} (resume with the same torchrun --nproc-per-node)",
                    last_path,
                )
            logger.info("resuming from %s (epoch %s, iteration %s)", last_path, extra.get("epoch"), extra.get("iteration"))
        elif init_checkpoint is not None:
            if categories is None:  # used only by a plain torchvision state dict, which has none
                given = list(train["categories"])
            else:
                given = list(categories)
            model, _, ckpt_categories, _ = load_checkpoint(init_checkpoint, config, device=device, categories=given)
            categories = ckpt_categories if categories is None else categories
            logger.info("starting from the weights of %s", init_checkpoint)
        else:
            model = build_model(config.model)
        if categories is None:
            categories = list(train["categories"])
        categories = [dict(c) for c in categories]
        if config.model.num_classes != len(categories) + 1:
            raise InputError(
                f"model.num_classes is {config.model.num_classes} but there are {len(categories)} "
                f"categories (num_classes counts the background: set it to {len(categories) + 1})"
            )
        _check_categories(categories, train, train_json)
        if val is not None:
            _check_categories(categories, val, val_json)
        model.to(device)
        batchnorm = resolve_batchnorm(train_cfg.batchnorm, from_checkpoint=init_checkpoint is not None)
        if batchnorm == "sync" and world == 1:  # nothing to sync with: recorded as what it is
            batchnorm = "train"
        if resume:  # a run of before train.batchnorm trained its BatchNorm layers
            recorded = str(extra.get("batchnorm", "train"))
            if train_cfg.batchnorm != "auto" and batchnorm != recorded:
                raise InputError(
                    f"cannot resume: last.pt was trained with train.batchnorm={recorded}, the config "
                    f"says {batchnorm} (set it to {recorded} or auto to resume, or start over with --overwrite)",
                    last_path,
                )
            batchnorm = recorded
        model = prepare_batchnorm(model, batchnorm, world, device, from_checkpoint=init_checkpoint is not None or resume)

        dataset = CocoDetectionDataset(train, image_root, categories, transform, with_masks=has_masks(model))
        if len(dataset) == 0:
            raise InputError("the training file has no images", train_json)
        # this rank's share of each epoch; with one process, the whole epoch in a seeded order
        sampler = rank_sampler(len(dataset), train_cfg.seed * 100_003, this_rank, world)
        iters_per_epoch = math.ceil(len(sampler) / train_cfg.batch_size)
        optimizer = make_optimizer(model, train_cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: lr_factor(i, iters_per_epoch, train_cfg)
        )
        start_epoch, skip_steps, iteration = 0, 0, 0
        best_map, best_epoch, records = -1.0, None, []
        if resume:
            optimizer.load_state_dict(extra["optimizer"])
            scheduler.load_state_dict(extra["scheduler"])
            start_epoch, skip_steps = int(extra["epoch"]), int(extra.get("step_in_epoch", 0))
            iteration = int(extra["iteration"])
            best_map = float(extra.get("best_map", -1.0))
            best_epoch = extra.get("best_epoch")
            if "torch_rng_ranks" in extra:
                torch.set_rng_state(extra["torch_rng_ranks"][this_rank])
            elif "torch_rng" in extra:
                torch.set_rng_state(extra["torch_rng"])
            records = _read_metrics(log_path, iteration)
        if main and not resume:  # every check passed: nothing of an earlier run stays to mislead
            removed = remove_earlier_outputs((last_path, best_path, log_path, out / "summary.json"))
            if removed:
                logger.warning("%s: starting over, removed %s of an earlier run", out, ", ".join(p.name for p in removed))
    # the same parameters on every rank (DDP broadcasts rank 0's), gradients averaged over ranks
    net = model if world == 1 else DistributedDataParallel(
        model, device_ids=[torch.device(device)] if device.startswith("cuda") else None
    )

    deadline = t0 + 60.0 * train_cfg.max_minutes if train_cfg.max_minutes > 0 else None
    last_metrics: dict[str, Any] | None = None
    last_loss: float | None = None
    stopped = False
    epoch = start_epoch
    while epoch < train_cfg.epochs and not stopped:
        epoch_start = time.monotonic()
        sampler.set_epoch(epoch)
        order = list(sampler)[skip_steps * train_cfg.batch_size :]
        if transform is not None:  # each rank its own augmentations
            transform.set_random_seed(train_cfg.seed * 100_003 + epoch + 1_000_003 * this_rank)
        loader = DataLoader(
            dataset, batch_size=train_cfg.batch_size, sampler=order,
            num_workers=train_cfg.num_workers, collate_fn=collate_detection,
        )
        bar = tqdm(
            total=iters_per_epoch, initial=skip_steps, desc=f"epoch {epoch + 1}/{train_cfg.epochs}",
            unit="it", disable=not progress, leave=False,
        )
        try:
            stats = train_one_epoch(net, optimizer, scheduler, loader, device, train_cfg.grad_clip, deadline, bar)
        finally:
            bar.close()
        iteration += stats["steps"]
        done_steps = skip_steps + stats["steps"]
        finished_epoch = done_steps >= iters_per_epoch
        skip_steps = 0 if finished_epoch else done_steps
        run_epoch = epoch + 1
        if finished_epoch:
            epoch += 1
        stopped = stats["stopped"] and epoch < train_cfg.epochs  # the cap cut the run short
        if stats["steps"]:
            last_loss = stats["loss"]
        record: dict[str, Any] = {
            "epoch": run_epoch,
            "iteration": iteration,
            "lr": optimizer.param_groups[0]["lr"],
            **{k: round(v, 6) for k, v in stats.items() if k not in ("steps", "stopped")},
            "seconds": round(time.monotonic() - epoch_start, 3),
        }
        if stopped:
            record["stopped_early"] = True
        due = train_cfg.eval_every > 0 and run_epoch % train_cfg.eval_every == 0 and finished_epoch
        improved = False
        if val is not None and (due or epoch == train_cfg.epochs or stopped):
            if main:  # the bare model: DDP's forward would wait for the other ranks
                last_metrics = _predict_and_evaluate(model, val, image_root, categories, device, train_cfg.batch_size)
            last_metrics = broadcast_from_main(last_metrics)  # the others wait for rank 0's evaluation
            record["val"] = last_metrics
            box_ap = last_metrics["bbox"]["AP"]
            if box_ap > best_map:
                best_map, best_epoch, improved = box_ap, run_epoch, True
        state = {
            "epoch": epoch,
            "step_in_epoch": skip_steps,
            "iteration": iteration,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_map": best_map,
            "best_epoch": best_epoch,
            "torch_rng": torch.get_rng_state(),
            "batchnorm": batchnorm,
        }
        if world > 1:
            state["world_size"] = world
            state["torch_rng_ranks"] = gather(torch.get_rng_state())
        records.append(record)
        if main:
            save_checkpoint(last_path, model, config, categories, extra=state)
            if improved:
                save_checkpoint(best_path, model, config, categories, extra={"epoch": best_epoch, "iteration": iteration, "metrics": last_metrics})
            write_jsonl(log_path, records)
        barrier()  # the others wait for rank 0's writes
        logger.info(
            "epoch %d/%d: loss %s%s, %.1f s", record["epoch"], train_cfg.epochs,
            f"{stats['loss']:.4f}" if stats["steps"] else "-",
            f", bbox AP {last_metrics['bbox']['AP']:.4f} (best {best_map:.4f})" if "val" in record else "",
            record["seconds"],
        )
    if stopped:
        logger.info("stopped at the time cap of %g min after %d iterations", train_cfg.max_minutes, iteration)
    model.eval()
    has_best = best_epoch is not None
    return {
        "epochs": epoch,
        "iterations": iteration,
        "final_loss": last_loss,
        "best_map": best_map if best_epoch is not None else None,
        "best_epoch": best_epoch,
        "metrics": last_metrics,
        "stopped_early": stopped,
        "batchnorm": batchnorm,
        "num_classes": config.model.num_classes,
        "seconds": round(time.monotonic() - t0, 3),
        "last": str(last_path),
        "best": str(best_path) if has_best else None,
        "checkpoint": str(best_path if has_best else last_path),
        "metrics_log": str(log_path),
    }


__all__ = [
    "check_train_config",
    "lr_factor",
    "make_optimizer",
    "seed_everything",
    "train_model",
    "train_one_epoch",
]
