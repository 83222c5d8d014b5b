"""What ``run.json`` records of a scoring run besides its config and counts (the assembler,
:mod:`det_al.run.assemble`, adds those)."""

from __future__ import annotations

import os
from typing import Any

import torch

from det_al.data.sources import PoolSource
from det_al.run.labelled import labelled_classes


def run_info(source: PoolSource, device: torch.device | str, labelled: Any = None, members: int = 1) -> dict:
    """What ``run.json`` records of a run besides its config and counts: the device, the thread
    count (CPU results depend on it in their last bits), the pool, its image root (absolute:
    the exporters default to it), the labelled set when given as a file, and its objects per
    class (``labelled_classes``, for ``class-balanced``) when given as COCO, and the number of
    ensemble ``members`` when more than one."""
    info: dict[str, Any] = {"device": str(device), "threads_per_process": torch.get_num_threads(),
                            "n_pool": len(source.pool["images"])}
    if source.path is not None:
        info["pool"] = os.fspath(source.path)
    if source.file_root is not None:
        info["image_root"] = os.path.abspath(source.file_root)
    if isinstance(labelled, (str, os.PathLike)):
        info["labelled"] = os.fspath(labelled)
    counts = None if labelled is None else labelled_classes(labelled)
    if counts is not None:
        info["labelled_classes"] = {str(c): n for c, n in counts.items()}
    if members > 1:
        info["members"] = members
    return info
