"""What a training starts from (:mod:`det_al.loop.training`): the checks of ``config.train``,
the learning-rate schedule and the optimiser, and :func:`prepare_training`, which checks the
data, builds or loads the model (from ``last.pt`` on a resume) and restores where a resumed
run stopped.

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
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from det_al.config import Config, TrainConfig
from det_al.data.augment import build_augment
from det_al.data.coco import load_coco
from det_al.data.datasets import CocoDetectionDataset
from det_al.data.files import remove_earlier_outputs
from det_al.data.images import check_file_names, check_image_root
from det_al.data.locate import check_images_found, probe_names
from det_al.errors import InputError
from det_al.models.batchnorm import BATCHNORM_MODES, prepare_batchnorm, resolve_batchnorm
from det_al.models.build import build_model, has_masks
from det_al.models.checkpoint import load_checkpoint
from det_al.run.distributed import is_main, rank, rank_sampler, world_size

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
WARMUP_START = 0.001  # the warm-up starts at this share of train.lr (torchvision's reference)


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


@dataclasses.dataclass
class Training:
    """A training ready to run on this process (:func:`_prepare`): the model, data, optimiser
    and, on a resume, where the run stopped."""

    config: Config
    model: nn.Module
    categories: list[dict]
    val: dict | None
    transform: Any
    batchnorm: str
    dataset: CocoDetectionDataset
    sampler: Any
    iters_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start_epoch: int = 0
    skip_steps: int = 0
    iteration: int = 0
    best_map: float = -1.0
    best_epoch: int | None = None
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    saved_epoch: int | None = None  # the epoch of the last.pt on disk (what a resume continues)


def _check_found(coco: dict, image_root, source, kind: str) -> None:
    """Most of a COCO file's images missing under ``image_root``: one line naming the folder
    that holds them (a merged ``train.json`` keeps the pool's file names, relative to its root)."""
    images = coco["images"]
    check_images_found(probe_names(len(images), lambda i: images[i]["file_name"]), image_root, source, kind)


def _checked_data(config: Config, train_json, val_json, image_root, categories, allow_outside_root: bool):
    """The training and validation COCO dicts, checked against the image root, and the config
    with ``model.num_classes`` from the data when it is not set."""
    train = load_coco(train_json, require_annotations=True)
    val = load_coco(val_json, require_annotations=True) if val_json is not None else None
    check_image_root(image_root)
    check_file_names(train["images"], image_root, train_json, allow_outside_root)
    _check_found(train, image_root, train_json, "training")
    if val is not None:
        check_file_names(val["images"], image_root, val_json, allow_outside_root)
        _check_found(val, image_root, val_json, "validation")
    if config.model.num_classes is None:  # "from the data"
        given = train["categories"] if categories is None else categories
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=len(given) + 1))
        logger.info("model.num_classes not set: %d (%d categories of %s + background)",
                    config.model.num_classes, len(given), "the given categories" if categories is not None else train_json)
    return config, train, val


def _start_model(config: Config, train: dict, categories, init_checkpoint, last_path: Path | None, world: int,
                 device: str) -> tuple[nn.Module, list[dict], dict[str, Any]]:
    """The model to train: ``last.pt``'s on a resume (``last_path``), the weights of
    ``init_checkpoint``, or a new one; its categories and the resumed checkpoint's extra."""
    extra: dict[str, Any] = {}
    if last_path is not None:
        if not last_path.exists():
            raise InputError("cannot resume: no last.pt in the output folder", last_path.parent)
        model, _, categories, extra = load_checkpoint(last_path, config, device=device)
        if int(extra.get("world_size", 1)) != world:
            raise InputError(
                f"cannot resume: last.pt was written by a run of {extra.get('world_size', 1)} "
                f"processes, this one has {world} (resume with the same torchrun --nproc-per-node)",
                last_path,
            )
        logger.info("resuming from %s (epoch %s, iteration %s)", last_path, extra.get("epoch"), extra.get("iteration"))
    elif init_checkpoint is not None:
        # the given categories are used only by a plain torchvision state dict, which has none
        given = list(train["categories"]) if categories is None else list(categories)
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
    return model, categories, extra


def _batchnorm_mode(train_cfg: TrainConfig, extra: dict[str, Any], resume: bool, from_init: bool, world: int,
                    last_path: Path) -> str:
    """The BatchNorm mode of the run (``train.batchnorm``; on a resume, the one it was trained with)."""
    batchnorm = resolve_batchnorm(train_cfg.batchnorm, from_checkpoint=from_init)
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
    return batchnorm


def prepare_training(config: Config, train_json, image_root, out: Path, val_json, categories, init_checkpoint, resume: bool,
             device: str, overwrite: bool, allow_outside_root: bool) -> Training:
    """Every check, then the model, data and optimiser (restored on a resume); an earlier run's
    outputs are removed once every check passed. Runs inside ``fail_together``: no collective."""
    train_cfg = config.train
    world, this_rank = world_size(), rank()
    last_path, best_path, log_path = out / "last.pt", out / "best.pt", out / "metrics.jsonl"
    check_train_config(train_cfg)
    if not resume and not overwrite and (last_path.exists() or best_path.exists()):
        raise InputError(
            f"holds the checkpoints of an earlier training ({(last_path if last_path.exists() else best_path).name}): "
            "add --resume to continue it, or --overwrite to start over", out,
        )
    transform = build_augment(train_cfg.augment)
    config, train, val = _checked_data(config, train_json, val_json, image_root, categories, allow_outside_root)
    seed_everything(train_cfg.seed)
    model, categories, extra = _start_model(config, train, categories, init_checkpoint, last_path if resume else None,
                                            world, device)
    _check_categories(categories, train, train_json)
    if val is not None:
        _check_categories(categories, val, val_json)
    model.to(device)
    from_init = init_checkpoint is not None
    batchnorm = _batchnorm_mode(train_cfg, extra, resume, from_init, world, last_path)
    model = prepare_batchnorm(model, batchnorm, world, device, from_checkpoint=from_init or resume)

    dataset = CocoDetectionDataset(train, image_root, categories, transform, with_masks=has_masks(model))
    if len(dataset) == 0:
        raise InputError("the training file has no images", train_json)
    # this rank's share of each epoch; with one process, the whole epoch in a seeded order
    sampler = rank_sampler(len(dataset), train_cfg.seed * 100_003, this_rank, world)
    iters_per_epoch = math.ceil(len(sampler) / train_cfg.batch_size)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, iters_per_epoch, train_cfg))
    run = Training(config, model, categories, val, transform, batchnorm, dataset, sampler, iters_per_epoch,
                    optimizer, scheduler)
    if resume:
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        run.start_epoch, run.skip_steps = int(extra["epoch"]), int(extra.get("step_in_epoch", 0))
        run.saved_epoch = run.start_epoch
        run.iteration = int(extra["iteration"])
        run.best_map = float(extra.get("best_map", -1.0))
        run.best_epoch = extra.get("best_epoch")
        if "torch_rng_ranks" in extra:
            torch.set_rng_state(extra["torch_rng_ranks"][this_rank])
        elif "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
        run.records = _read_metrics(log_path, run.iteration)
    if is_main() and not resume:  # every check passed: nothing of an earlier run stays to mislead
        removed = remove_earlier_outputs((last_path, best_path, log_path, out / "summary.json"))
        if removed:
            logger.warning("%s: starting over, removed %s of an earlier run", out, ", ".join(p.name for p in removed))
    return run
