"""Training a torchvision detector on a COCO file (``det-al train``, the demo, the loop).

:func:`train_model` runs the whole job over :class:`det_al.data.datasets.CocoDetectionDataset`:
seeds, optimizer and learning-rate schedule from ``config.train``, progress bars, periodic COCO
evaluation, ``best.pt`` / ``last.pt`` in det_al's checkpoint format, ``metrics.jsonl``, resuming
from ``last.pt`` and a wall-clock cap; under ``torchrun``, DistributedDataParallel over the
processes (see :func:`train_model`).

What a training starts from (the checks of ``config.train``, the learning-rate schedule, the
optimiser, the model and a resumed run's state) is :mod:`det_al.loop.train_setup`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from det_al.config import Config
from det_al.data.datasets import collate_detection
from det_al.data.files import write_jsonl
from det_al.errors import InputError
from det_al.loop.evaluation import evaluate_coco, predict
from det_al.loop.train_setup import Training, prepare_training
from det_al.models.build import has_masks
from det_al.models.checkpoint import CheckpointWriteError, save_checkpoint
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
    world_size,
)

logger = logging.getLogger(__name__)


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
    out = Path(out_dir)
    with fail_together():  # no collective in here: a rank that fails makes every rank fail
        run = prepare_training(config, train_json, image_root, out, val_json, categories, init_checkpoint, resume, device,
                       overwrite, allow_outside_root)
    train_cfg = run.config.train
    # the same parameters on every rank (DDP broadcasts rank 0's), gradients averaged over ranks
    net = run.model if world_size() == 1 else DistributedDataParallel(
        run.model, device_ids=[torch.device(device)] if device.startswith("cuda") else None
    )
    deadline = t0 + 60.0 * train_cfg.max_minutes if train_cfg.max_minutes > 0 else None
    last_metrics: dict[str, Any] | None = None
    last_loss: float | None = None
    stopped = False
    epoch, skip_steps = run.start_epoch, run.skip_steps
    while epoch < train_cfg.epochs and not stopped:
        epoch_start = time.monotonic()
        stats = _one_epoch(run, net, epoch, skip_steps, device, deadline, progress)
        run.iteration += stats["steps"]
        done_steps = skip_steps + stats["steps"]
        finished_epoch = done_steps >= run.iters_per_epoch
        skip_steps = 0 if finished_epoch else done_steps
        run_epoch = epoch + 1
        if finished_epoch:
            epoch += 1
        stopped = stats["stopped"] and epoch < train_cfg.epochs  # the cap cut the run short
        if stats["steps"]:
            last_loss = stats["loss"]
        record: dict[str, Any] = {
            "epoch": run_epoch,
            "iteration": run.iteration,
            "lr": run.optimizer.param_groups[0]["lr"],
            **{k: round(v, 6) for k, v in stats.items() if k not in ("steps", "stopped")},
            "seconds": round(time.monotonic() - epoch_start, 3),
        }
        if stopped:
            record["stopped_early"] = True
        due = train_cfg.eval_every > 0 and run_epoch % train_cfg.eval_every == 0 and finished_epoch
        improved = False
        if run.val is not None and (due or epoch == train_cfg.epochs or stopped):
            last_metrics = _evaluate_on_main(run, image_root, device)
            record["val"] = last_metrics
            box_ap = last_metrics["bbox"]["AP"]
            if box_ap > run.best_map:
                run.best_map, run.best_epoch, improved = box_ap, run_epoch, True
        run.records.append(record)
        _save_epoch(run, out, epoch, skip_steps, improved, last_metrics)
        logger.info(
            "epoch %d/%d: loss %s%s, %.1f s", record["epoch"], train_cfg.epochs,
            f"{stats['loss']:.4f}" if stats["steps"] else "-",
            f", bbox AP {last_metrics['bbox']['AP']:.4f} (best {run.best_map:.4f})" if "val" in record else "",
            record["seconds"],
        )
    if stopped:
        logger.info("stopped at the time cap of %g min after %d iterations", train_cfg.max_minutes, run.iteration)
    run.model.eval()
    return _summary(run, out, epoch, last_loss, last_metrics, stopped, time.monotonic() - t0)


def _one_epoch(run: Training, net: nn.Module, epoch: int, skip_steps: int, device: str, deadline: float | None,
               progress: bool) -> dict[str, Any]:
    """Train ``epoch`` from step ``skip_steps`` on (a resume continues mid-epoch)."""
    train_cfg = run.config.train
    run.sampler.set_epoch(epoch)
    order = list(run.sampler)[skip_steps * train_cfg.batch_size :]
    if run.transform is not None:  # each rank its own augmentations
        run.transform.set_random_seed(train_cfg.seed * 100_003 + epoch + 1_000_003 * rank())
    loader = DataLoader(
        run.dataset, batch_size=train_cfg.batch_size, sampler=order,
        num_workers=train_cfg.num_workers, collate_fn=collate_detection,
    )
    bar = tqdm(
        total=run.iters_per_epoch, initial=skip_steps, desc=f"epoch {epoch + 1}/{train_cfg.epochs}",
        unit="it", disable=not progress, leave=False,
    )
    try:
        return train_one_epoch(net, run.optimizer, run.scheduler, loader, device, train_cfg.grad_clip, deadline, bar)
    finally:
        bar.close()


def _evaluate_on_main(run: Training, image_root, device: str) -> dict[str, Any]:
    """Rank 0 evaluates on the validation set; every rank gets the metrics."""
    metrics = None
    if is_main():  # the bare model: DDP's forward would wait for the other ranks
        metrics = _predict_and_evaluate(run.model, run.val, image_root, run.categories, device, run.config.train.batch_size)
    return broadcast_from_main(metrics)  # the others wait for rank 0's evaluation


def _resume_hint(last_path: Path, saved_epoch: int | None) -> str:
    """What a user does after a checkpoint could not be written."""
    if saved_epoch is not None and last_path.exists():
        return (f"The last good checkpoint, {last_path} (epoch {saved_epoch}), is kept: free space and run the "
                "same command with --resume to continue from it")
    return "No checkpoint of this run was written yet: free space and run the same command again"


def _save_epoch(run: Training, out: Path, epoch: int, skip_steps: int, improved: bool,
                last_metrics: dict[str, Any] | None) -> None:
    """``last.pt`` (with what a resume needs), ``best.pt`` when improved, ``metrics.jsonl``."""
    state = {
        "epoch": epoch,
        "step_in_epoch": skip_steps,
        "iteration": run.iteration,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "best_map": run.best_map,
        "best_epoch": run.best_epoch,
        "torch_rng": torch.get_rng_state(),
        "batchnorm": run.batchnorm,
    }
    if world_size() > 1:
        state["world_size"] = world_size()
        state["torch_rng_ranks"] = gather(torch.get_rng_state())
    if is_main():
        try:
            save_checkpoint(out / "last.pt", run.model, run.config, run.categories, extra=state)
            if improved:
                save_checkpoint(out / "best.pt", run.model, run.config, run.categories,
                                extra={"epoch": run.best_epoch, "iteration": run.iteration, "metrics": last_metrics})
        except CheckpointWriteError as e:  # a full disk: one line, and what to do
            raise CheckpointWriteError(f"{e}. {_resume_hint(out / 'last.pt', run.saved_epoch)}") from e
        run.saved_epoch = epoch
        write_jsonl(out / "metrics.jsonl", run.records)
    barrier()  # the others wait for rank 0's writes


def _summary(run: Training, out: Path, epoch: int, last_loss: float | None, last_metrics: dict[str, Any] | None,
             stopped: bool, seconds: float) -> dict[str, Any]:
    """What :func:`train_model` returns (and ``summary.json`` holds)."""
    has_best = run.best_epoch is not None
    last_path, best_path = out / "last.pt", out / "best.pt"
    return {
        "epochs": epoch,
        "iterations": run.iteration,
        "final_loss": last_loss,
        "best_map": run.best_map if has_best else None,
        "best_epoch": run.best_epoch,
        "metrics": last_metrics,
        "stopped_early": stopped,
        "batchnorm": run.batchnorm,
        "num_classes": run.config.model.num_classes,
        "seconds": round(seconds, 3),
        "last": str(last_path),
        "best": str(best_path) if has_best else None,
        "checkpoint": str(best_path if has_best else last_path),
        "metrics_log": str(out / "metrics.jsonl"),
    }


__all__ = ["train_model", "train_one_epoch"]
