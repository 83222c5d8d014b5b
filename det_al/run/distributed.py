"""torchrun support: this process's rank, the process group, and the few collectives det_al uses.

Under ``torchrun`` (environment ``WORLD_SIZE`` > 1) every process runs the same command;
:func:`process_group` joins them (gloo on CPU, NCCL on ``cuda:LOCAL_RANK``) for a block and
leaves the group at its end. Without torchrun, or outside that block, every helper here is the
single-process case: :func:`is_main` is true, :func:`barrier` returns at once,
:func:`broadcast_from_main` returns its argument, :func:`any_rank` its flag.

Helpers that communicate must be called by every process, in the same order; one process that
skips one leaves the others waiting until torchrun stops the job.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from det_al.errors import InputError

# How long a process waits in a collective: rank 0 evaluates (and, in the loop, scores and
# selects) while the others wait, so a long wait is not a hang. When a process dies, torchrun
# stops the others at once, whatever this says.
WAIT = datetime.timedelta(hours=24)


def world_info() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment, else ``(0, 1, 0)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """Whether this process is in a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """The process group's rank of this process; torchrun's ``RANK`` outside a group (0 without torchrun)."""
    return dist.get_rank() if active() else world_info()[0]


def world_size() -> int:
    """How many processes train together: the process group's size, 1 outside a group."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes outputs, logs and evaluates."""
    return rank() == 0


def rank_device(device: str | torch.device, local_rank: int) -> str:
    """The device of the process of ``local_rank``: ``cuda`` becomes ``cuda:LOCAL_RANK``, ``cpu`` stays.

    ``cuda:N`` is accepted only for ``N == local_rank`` (two processes cannot share a GPU under
    NCCL); other device types are an :class:`InputError`.
    """
    kind, _, index = str(device).partition(":")
    if kind == "cpu":
        return "cpu"
    if kind != "cuda":
        raise InputError(f"under torchrun det_al runs on cpu (gloo) or cuda (NCCL), not '{device}'")
    if index and index != str(local_rank):
        raise InputError(
            f"under torchrun each process uses cuda:LOCAL_RANK: give --device cuda, not {device} "
            f"(this is local rank {local_rank})"
        )
    return f"cuda:{local_rank}"


def _check_launch(device: str, world: int, local_rank: int) -> None:
    """Everything that would make ``init_process_group`` fail or hang, as an :class:`InputError`."""
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(f"WORLD_SIZE is {world} but {', '.join(missing)} not set: launch det_al with torchrun")
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.startswith("cuda"):
        if not torch.cuda.is_available() or not dist.is_nccl_available():
            raise InputError(f"--device {device}: CUDA with NCCL is not available (use --device cpu for gloo)")
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                f"start at most --nproc-per-node {torch.cuda.device_count()}"
            )


_joined = 0  # process groups this process has started; the same count on every rank


def _init(device: str) -> None:
    """``init_process_group`` from torchrun's environment, under a key prefix of its own.

    torchrun's key-value store outlives a process group, and a group started again after
    ``destroy_process_group`` would read the previous group's addresses under the default
    prefix (and hang, or fail with "connection reset"); one prefix per group avoids that.
    """
    global _joined
    store, rank_, world = next(dist.rendezvous("env://", timeout=WAIT))
    store.set_timeout(WAIT)
    store = dist.PrefixStore(f"det_al/{_joined}", store)
    _joined += 1
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl", store=store, rank=rank_, world_size=world, timeout=WAIT, device_id=torch.device(device)
        )
    else:
        dist.init_process_group("gloo", store=store, rank=rank_, world_size=world, timeout=WAIT)


@contextlib.contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[str]:
    """Join torchrun's processes for the block; yields this process's device.

    Under torchrun: ``init_process_group`` with gloo for ``cpu`` or NCCL for ``cuda`` (on
    ``cuda:LOCAL_RANK``, see :func:`rank_device`), the ``det_al`` loggers of ranks > 0 quieted to
    warnings, and ``destroy_process_group`` at the end, also after an error. Inside a block that
    already joined (or with a group the caller started) it only yields the device. Without
    torchrun it yields ``device`` as given.
    """
    _, world, local_rank = world_info()
    if world <= 1:
        yield str(device)
        return
    device = rank_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        yield device
        return
    _check_launch(device, world, local_rank)
    try:
        _init(device)
    except RuntimeError as e:  # another process died while the group formed: its line says why
        raise InputError(
            f"rank {os.environ.get('RANK', '?')}: could not join the other torchrun processes "
            f"({' '.join(str(e).split())[:160]})"
        ) from e
    package_logger = logging.getLogger("det_al")
    level = package_logger.level
    if dist.get_rank() > 0:
        package_logger.setLevel(logging.WARNING)
    try:
        yield device
    finally:
        package_logger.setLevel(level)
        dist.destroy_process_group()


@contextlib.contextmanager
def fail_together() -> Iterator[None]:
    """If the block raises on any process, raise on every process (a no-op outside a group).

    Every process must run the block, and the block must not communicate. At its end the
    processes compare outcomes (one all-gather): a process whose block raised re-raises its own
    exception; the others raise an :class:`InputError` with the first failing rank's message.
    So bad input gives every rank its one-line error and exit status, instead of the healthy
    ranks waiting in the next collective until torchrun kills them without a word.
    """
    if not active():
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as e:  # compared below, then re-raised
        error = e
    messages = gather(None if error is None else str(error) or type(error).__name__)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        raise InputError(f"rank {failed[0][0]}: {failed[0][1]}")


def barrier() -> None:
    """Wait until every process is here."""
    if active():
        dist.barrier()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (picklable; the others' ``obj`` is ignored)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: str | torch.device = "cpu") -> bool:
    """Whether ``flag`` is true on any process (one all-reduce of one number on ``device``)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(values: Mapping[str, float], device: str | torch.device = "cpu") -> dict[str, float]:
    """Each value averaged over the processes; every process passes the same keys."""
    if not active() or not values:
        return dict(values)
    keys = sorted(values)
    summed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    mean = dict(zip(keys, (summed / dist.get_world_size()).tolist()))
    return {k: mean[k] for k in values}


def rank_sampler(size: int, seed: int, rank: int = 0, world: int = 1) -> DistributedSampler:
    """Rank ``rank``'s share of each shuffled epoch of ``size`` items (``set_epoch`` before each).

    Epoch ``e`` is ``torch.randperm(size)`` from a generator seeded ``seed + e``, padded with its
    own first items to a multiple of ``world``; rank ``r`` takes every ``world``-th index from
    position ``r``. The shares have equal length ``ceil(size / world)``, cover every item and are
    disjoint when ``world`` divides ``size``; with ``world == 1`` the share is the whole permutation.

    >>> shares = [list(rank_sampler(5, seed=0, rank=r, world=2)) for r in range(2)]
    >>> [len(s) for s in shares], sorted(set(shares[0] + shares[1]))
    ([3, 3], [0, 1, 2, 3, 4])
    """
    return DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed)


__all__ = [
    "active",
    "any_rank",
    "barrier",
    "broadcast_from_main",
    "fail_together",
    "gather",
    "is_main",
    "mean_over_ranks",
    "process_group",
    "rank",
    "rank_device",
    "rank_sampler",
    "world_info",
    "world_size",
]
