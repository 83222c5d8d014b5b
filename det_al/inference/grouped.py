"""Channel-group dropout at a convolution's input, computed for all passes at once.

With ``passes.dropout_groups`` N > 0 each (image, pass) keeps or drops the site input's channels
in N contiguous groups, the same at every position (:mod:`det_al.inference.dropout`). A
convolution is linear in its input, so its output in pass ``p`` is

    ``bias + sum_g f[p, g] * conv_g(x)``

where ``conv_g`` is the convolution restricted to group ``g``'s input channels (no bias) and
``f[p, g]`` the pass's factor of the group (0, or ``1 / (1 - rate)``). The N partial outputs
(:func:`partial_outputs`) cost one convolution in all; each pass then costs one N-term weighted
sum per output value (:func:`conv_passes`: a ``[P, N] x [N, O * L]`` matrix product) instead of
a convolution. The one-stage suffix (:mod:`det_al.inference.suffix`) uses it for the heads' last
convolutions; the result equals the hooks' (dropout on the input, then the convolution) up to
float rounding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from det_al.inference.dropout import Chunk, group_keep, group_of_channel


# The partial outputs computed at a time by conv_passes (float values: 32 MB in float32).
BLOCK_VALUES = 1 << 23


def decomposable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain ``Conv2d`` (no channel groups, zero padding): linear in its
    input channels, so :func:`conv_passes` computes it."""
    return isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.padding_mode == "zeros" \
        and isinstance(conv.padding, tuple)


def group_factors(chunks: Sequence[Chunk], groups: int, device: torch.device | str = "cpu") -> Tensor:
    """``[len(chunks), groups]``: each chunk's :func:`~det_al.inference.dropout.group_keep`
    factors, drawn in chunk order from the chunks' generators: the draws one hook call makes."""
    return torch.stack([group_keep(c.generator, c.rate, groups, device) for c in chunks])


def weight_columns(conv: nn.Conv2d, groups: int, rows: slice | None = None) -> tuple[Tensor, list[int]]:
    """``conv``'s weight (output channels ``rows``, default all) as ``[O, C * kh * kw]``, in
    im2col order, and the column bounds of each channel group (``N + 1`` values)."""
    weight = conv.weight if rows is None else conv.weight[rows]
    channels = int(conv.weight.shape[1])
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    index = group_of_channel(channels, groups, weight.device)
    bounds = torch.searchsorted(index, torch.arange(groups + 1, device=weight.device)) * kk
    return weight.reshape(weight.shape[0], channels * kk), bounds.tolist()


def partials(weight: Tensor, bounds: list[int], cols: Tensor, out: Tensor | None = None) -> Tensor:
    """``[N, O, n]``: ``weight`` ``[O, C * kh * kw]`` times ``cols`` ``[C * kh * kw, n]`` over each
    group's columns alone (:func:`weight_columns`), into ``out`` when given. A group with no
    channel (more groups than channels) gives 0."""
    if out is None:
        out = cols.new_empty((len(bounds) - 1, weight.shape[0], cols.shape[1]))
    for g in range(len(bounds) - 1):
        lo, hi = bounds[g], bounds[g + 1]
        if hi > lo:
            torch.matmul(weight[:, lo:hi].to(cols.dtype), cols[lo:hi], out=out[g])
        else:
            out[g].zero_()
    return out


def partial_outputs(conv: nn.Conv2d, x: Tensor, groups: int) -> Tensor:
    """``[N, O, L]``: ``conv`` of ``x`` ``[C, H, W]`` over each group's input channels alone,
    without bias; ``L`` output positions (``H' * W'``). Their sum is ``conv(x) - bias``."""
    weight, bounds = weight_columns(conv, groups)
    return partials(weight, bounds, _columns(conv, x))


def _columns(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``[C * kh * kw, L]``: the input patches of each output position (im2col)."""
    return torch.nn.functional.unfold(x[None], conv.kernel_size, conv.dilation, conv.padding, conv.stride)[0]


def output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """``conv``'s output height and width for an input of ``height`` x ``width``."""
    sizes = []
    for n, k, s, p, d in zip((height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        sizes.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return sizes[0], sizes[1]


def conv_passes(conv: nn.Conv2d, x: Tensor, factors: Tensor) -> Tensor:
    """``[P * B, O, H', W']``: ``conv`` of each pass's dropped input, pass-major rows.

    Args:
        conv: a :func:`decomposable` convolution.
        x: ``[B, C, H, W]`` the input without dropout.
        factors: ``[P * B, N]`` row ``p * B + i``: pass ``p``'s group factors for image ``i``
            (:func:`group_factors` of the suffix's pass-major chunks).
    """
    b_count = int(x.shape[0])
    groups = int(factors.shape[1])
    p_count = int(factors.shape[0]) // b_count
    height, width = output_size(conv, int(x.shape[-2]), int(x.shape[-1]))
    out = x.new_empty((p_count * b_count, conv.out_channels, height, width))
    bias = conv.bias.to(x.dtype)[:, None] if conv.bias is not None else None
    # output channels in blocks of ~BLOCK_VALUES partial values: one reused buffer instead of an
    # [N, O, L] tensor (RetinaNet at 512 px, N = 16: 286 MB of fresh pages per call)
    block = max(1, min(conv.out_channels, BLOCK_VALUES // max(1, groups * height * width)))
    buffer = x.new_empty((groups, block, height * width))
    weight, bounds = weight_columns(conv, groups)
    for i in range(b_count):
        cols = _columns(conv, x[i])
        f = factors[i::b_count].to(x.dtype)  # [P, N]
        for start in range(0, conv.out_channels, block):
            stop = min(start + block, conv.out_channels)
            part = partials(weight[start:stop], bounds, cols, buffer[:, : stop - start])
            y = torch.matmul(f, part.reshape(groups, -1)).view(p_count, stop - start, -1)
            if bias is not None:
                y += bias[start:stop]
            out[i::b_count, start:stop] = y.view(p_count, stop - start, height, width)
    return out
