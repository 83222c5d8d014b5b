"""What training does with a model's BatchNorm layers (``train.batchnorm``).

det_al builds torchvision models with ``weights_backbone=None``, so their backbones get
trainable ``nn.BatchNorm2d`` layers, where torchvision's own recipe for a pretrained backbone
uses ``FrozenBatchNorm2d``. Fine-tuning a production checkpoint with batches of 2-8 images in
BatchNorm's train mode replaces its running statistics with those of tiny batches, which the
detection recipes avoid. ``train.batchnorm`` says what happens:

- ``frozen``: every ``BatchNorm2d`` becomes torchvision's ``FrozenBatchNorm2d`` with the same
  statistics, affine parameters and ``eps`` (:func:`freeze_batchnorm`): it normalises with the
  running statistics in train mode too and has nothing to train;
- ``train``: the layers train as PyTorch's ``BatchNorm2d`` does (batch statistics, running
  averages updated); under torchrun each process keeps its own and DDP copies rank 0's;
- ``sync``: as ``train`` but under torchrun the layers become ``nn.SyncBatchNorm``, with
  statistics over the processes' batches together (CUDA only, as PyTorch's kernel is);
- ``auto`` (the default): ``frozen`` when training starts from a checkpoint (``det-al train
  --init``, the loop's fine-tuning rounds), ``train`` when it starts from scratch.

A frozen model's checkpoint has no ``num_batches_tracked`` entries; it loads into a det_al model
all the same (:mod:`det_al.models.checkpoint`), and normalises exactly as before in eval mode.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from det_al.errors import InputError

logger = logging.getLogger(__name__)

BATCHNORM_MODES = ("auto", "train", "frozen", "sync")


def resolve_batchnorm(mode: str, from_checkpoint: bool) -> str:
    """The mode ``auto`` stands for (``frozen`` from a checkpoint, else ``train``); others as given.

    >>> resolve_batchnorm("auto", from_checkpoint=True), resolve_batchnorm("auto", from_checkpoint=False)
    ('frozen', 'train')
    """
    if mode not in BATCHNORM_MODES:
        raise InputError(f"train.batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got '{mode}'")
    if mode == "auto":
        return "frozen" if from_checkpoint else "train"
    return mode


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` inside ``module``, in place, by a ``FrozenBatchNorm2d``.

    The frozen layer takes the running mean and variance, the affine weight and bias (1 and 0 for
    a layer without them) and the ``eps`` of the one it replaces, so eval-mode outputs do not
    change. A layer that keeps no running statistics (``track_running_stats=False``) normalises
    with each batch's statistics even in eval mode: it has nothing to freeze and stays. Returns
    the number of layers replaced.
    """
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d and child.track_running_stats:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
            setattr(module, name, frozen.to(child.running_mean.device))
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


def prepare_batchnorm(model: nn.Module, mode: str, world: int, device: str, from_checkpoint: bool) -> nn.Module:
    """Apply ``mode`` (already resolved: ``train``, ``frozen`` or ``sync``) to ``model``; the model.

    Call before the optimizer is built (frozen layers have no parameters) and before the model
    is wrapped in DistributedDataParallel (``sync`` converts its layers). ``sync`` with one
    process is ``train``; with several on CPU it is an :class:`InputError`. Freezing a model
    that starts from scratch (``from_checkpoint`` false) logs a warning: its layers keep their
    initial statistics (mean 0, variance 1), which is seldom what anyone wants.
    """
    if mode == "frozen":
        count = freeze_batchnorm(model)
        if count and not from_checkpoint:
            logger.warning(
                "train.batchnorm=frozen on a model trained from scratch: its %d BatchNorm layers keep "
                "their initial statistics (mean 0, variance 1)", count,
            )
        elif count:
            logger.info("train.batchnorm=frozen: %d BatchNorm layers keep the checkpoint's statistics", count)
        return model
    if mode == "sync" and world > 1:
        check_sync(mode, world, device)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def check_sync(mode: str, world: int, device: str) -> None:
    """Refuse ``sync`` for several processes on CPU (an :class:`InputError`); else nothing."""
    if mode == "sync" and world > 1 and not str(device).startswith("cuda"):
        raise InputError(
            "train.batchnorm=sync needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); "
            "use train or frozen with --device cpu"
        )


__all__ = ["BATCHNORM_MODES", "check_sync", "freeze_batchnorm", "prepare_batchnorm", "resolve_batchnorm"]
