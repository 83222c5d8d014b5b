"""The device a run uses, checked before anything is read or written.

A device that this machine does not have (``--device cuda`` without a GPU, ``cuda:3`` on a
one-GPU machine, ``mps`` off a Mac) or a name torch does not know (``gpu``) is an
:class:`~det_al.errors.InputError` in one line, raised before any file is written or any image
is scored; torch itself would fail later, in the middle of a run.
"""

from __future__ import annotations

import torch

from det_al.errors import InputError


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` that this machine has, or an :class:`InputError`.

    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("gpu")
    Traceback (most recent call last):
    det_al.errors.InputError: --device 'gpu' is not a device name torch knows (cpu, cuda, cuda:1, mps, ...)
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {str(device)!r} is not a device name torch knows (cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: this machine has no CUDA device (torch sees none): use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(f"--device {device}: Apple's MPS is not available on this machine: use --device cpu")
    elif parsed.type != "cpu":
        raise InputError(f"--device {device}: det_al runs on cpu, cuda or mps")
    return parsed

