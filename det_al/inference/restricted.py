"""Head convolutions evaluated only at chosen anchors: the restricted tail (``passes.tail: candidates``).

The stochastic passes of RetinaNet, FCOS and SSD evaluate the heads' last 3x3 convolutions only
for the anchors the deterministic pass chose (:func:`choose_anchors`: its ``passes.dense_candidates``
best by foreground probability, plus every anchor above the score threshold), as matrix
products over the gathered 3x3 neighbourhoods of their positions (:func:`conv_at`) instead of a
convolution over every position and anchor. A pass can then detect only at those anchors: what
that changes against ``exact`` is measured by ``benchmarks/bench_passes.py``. Dropout is drawn on
the input pixels the neighbourhoods read (element-wise, as the hook does, so neighbouring anchors
share their inputs' masks), from the pass's own generator, but in a different order than a
whole-map mask: the passes differ from ``exact`` ones, not their distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from det_al.inference.dropout import group_keep, group_of_channel
from det_al.inference.prefix import Prefix

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # the order of a 3x3 kernel

# A convolution with at most this many output channels (box regression, centerness) is computed
# per distinct input pixel and kernel offset and summed over each row's neighbourhood; a wider one
# (class logits) as one matrix product over each row's gathered 9C-long neighbourhood. Gathering a
# 9C patch per row and pass costs about what ~100 output channels of the product do (measured on
# FCOS at 512 px), so narrow outputs skip the gather, wide ones would compute too much without it.
NARROW_OUTPUTS = 64


def restrictable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3, stride 1, padding 1 convolution (what :func:`conv_at` computes)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def neighbourhoods(positions: Tensor, height: int, width: int) -> Tensor:
    """``[n, 9]`` flat indices (``y * W + x``) of each position's 3x3 neighbourhood in kernel
    order; a neighbour outside the map is ``H * W`` (a zero column appended to the map).

    >>> neighbourhoods(torch.tensor([0, 4]), 3, 3).tolist()
    [[9, 9, 9, 9, 0, 1, 9, 3, 4], [0, 1, 2, 3, 4, 5, 6, 7, 8]]
    """
    y, x = positions // width, positions % width
    dy = torch.tensor([o[0] for o in _OFFSETS], device=positions.device)
    dx = torch.tensor([o[1] for o in _OFFSETS], device=positions.device)
    yy, xx = y[:, None] + dy, x[:, None] + dx
    inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    return torch.where(inside, yy * width + xx, torch.full_like(yy, height * width))


@dataclass
class Pixels:
    """The input pixels ``m`` rows read: ``values [U, C]`` (the U distinct pixels, sorted by
    flat index, the zero padding last) and ``index [m, 9]`` into them, rows in group-major
    ``order`` (``[m]``, a permutation of the rows) with ``counts[g]`` rows of group ``g``."""

    values: Tensor
    index: Tensor
    order: Tensor
    counts: list[int]


def gather_pixels(x: Tensor, positions: Tensor, groups: Tensor) -> Pixels:
    """The pixels of ``x`` ``[C, H, W]`` that 3x3 convolutions at flat ``positions`` read."""
    c, h, w = x.shape
    order = torch.argsort(groups * (h * w + 1) + positions)  # group-major: one product per group
    needed, inverse = torch.unique(neighbourhoods(positions[order], h, w), return_inverse=True)
    values = torch.cat([x.reshape(c, h * w), x.new_zeros((c, 1))], 1)[:, needed].t().contiguous()
    return Pixels(values, inverse, order, torch.bincount(groups, minlength=1).tolist())


def drop_pixels(values: Tensor, generators: Sequence["torch.Generator | None"], rates: Sequence[float],
                groups: int = 0) -> Tensor:
    """``[P, U, C]``: pass ``p`` applies inverted dropout at ``rates[p]`` to ``values`` ``[U, C]``
    (keep-mask ``rand([U, C]) >= rate`` from ``generators[p]``, kept values scaled by ``1 / (1 - rate)``;
    with ``groups`` > 0 one factor per channel group, the same for every pixel: :func:`~det_al.inference.dropout.group_keep`)."""
    out = values.new_empty((len(rates), *values.shape))
    index = group_of_channel(int(values.shape[1]), groups, values.device) if groups > 0 else None
    for g, r, v in zip(generators, rates, out):
        if index is not None:
            torch.mul(values, group_keep(g, r, groups, values.device)[index].to(values.dtype), out=v)
        elif r == 0.0:
            v.copy_(values)
        else:  # without temporaries
            torch.rand(values.shape, generator=g, device=values.device, out=v)
            v.ge_(r).mul_(values).mul_(1.0 / (1.0 - r))
    return out


@torch.no_grad()
def _conv_rows(values: Tensor, pixels: Pixels, conv: nn.Conv2d, width: int) -> Tensor:
    """``[P, m, width]`` in group-major order: row ``j`` of group ``g`` gets output channels
    ``g * width .. (g + 1) * width`` of ``conv`` over its neighbourhood of ``values`` ``[P, U, C]``."""
    p_count, c = values.shape[0], values.shape[-1]
    m = int(pixels.index.shape[0])
    bias = conv.bias.to(values.dtype) if conv.bias is not None else None
    if conv.out_channels <= NARROW_OUTPUTS:
        # per pixel and kernel offset k, then the sum over each row's nine neighbours
        weight = conv.weight.permute(1, 2, 3, 0).reshape(c, 9 * conv.out_channels).to(values.dtype)
        per_pixel = torch.matmul(values, weight).view(p_count, -1, 9, conv.out_channels)  # [P, U, 9, O]
        full = per_pixel[:, pixels.index, torch.arange(9, device=values.device)].sum(2)  # [P, m, O]
        if bias is not None:
            full = full + bias
        return full.gather(2, _columns(pixels, width).expand(p_count, m, width))
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, 9 * c).to(values.dtype)
    y = values.new_empty((p_count, m, width))
    # one pass at a time into one buffer: a fresh [P, m, 9C] tensor per call costs more in page
    # faults than the gather itself (SSD300: 378 MB at T = 10)
    patches = values.new_empty((m, 9 * c))
    index = pixels.index.reshape(-1)
    for p in range(p_count):
        torch.index_select(values[p], 0, index, out=patches.view(m * 9, c))  # kernel-major, as the weight
        start = 0
        for g, n in enumerate(pixels.counts):
            if n:
                rows = slice(g * width, (g + 1) * width)
                torch.matmul(patches[start:start + n], weight[rows].t(), out=y[p, start:start + n])
            start += n
    if bias is not None:
        y += bias[_columns(pixels, width)]
    return y


def _columns(pixels: Pixels, width: int) -> Tensor:
    """``[m, width]``: the output channels of each row (group-major order), ``g * width + 0..width``."""
    device = pixels.index.device
    groups = torch.repeat_interleave(torch.arange(len(pixels.counts), device=device),
                                     torch.tensor(pixels.counts, device=device))
    return groups[:, None] * width + torch.arange(width, device=device)


def conv_at(x: Tensor, positions: Tensor, groups: Tensor, convs: Sequence[tuple[nn.Conv2d, int]],
            generators: Sequence["torch.Generator | None"], rates: Sequence[float],
            drop: bool | Sequence[bool], shared: bool = True, channel_groups: int = 0) -> list[Tensor]:
    """3x3 convolutions of ``x`` ``[C, H, W]`` at ``m`` rows for P passes: ``[P, m, width]`` per conv.

    Row ``j`` is output channels ``groups[j] * width .. (groups[j] + 1) * width`` of ``conv`` at
    flat position ``positions[j]`` (``y * W + x``): one anchor's outputs when a head lays its
    channels out anchor by anchor, as torchvision's do. Where ``drop`` (one flag, or one per
    conv), pass ``p`` first applies inverted dropout at rate ``rates[p]`` to the input pixels the
    rows read (:func:`drop_pixels`): with ``shared`` one draw that all those convs read (one
    dropout site before all of them, as SSD's head input), else a draw per conv, in order (a
    site at each conv's input); ``channel_groups`` > 0: channel-group dropout. The pixels are gathered
    once for all ``convs``.
    """
    pixels = gather_pixels(x, positions, groups)
    p_count = len(rates)
    flags = [drop] * len(convs) if isinstance(drop, bool) else list(drop)
    active = any(r > 0.0 for r in rates)
    clean = pixels.values[None]
    common = drop_pixels(pixels.values, generators, rates, channel_groups) if shared and active and any(flags) else None
    out = []
    for (conv, width), flag in zip(convs, flags, strict=True):
        if not (flag and active):
            values = clean
        else:
            values = common if shared else drop_pixels(pixels.values, generators, rates, channel_groups)
        y = _conv_rows(values, pixels, conv, width)
        result = torch.empty_like(y)
        result[:, pixels.order] = y
        out.append(result.expand(p_count, -1, -1))
    return out


def choose_anchors(prefix: Prefix, above: Tensor, foreground: Tensor, sizes: Sequence[int],
                   max_candidates: int, chosen_index: Sequence["Tensor | None"] | None = None) -> None:
    """The deterministic pass picks, per image and level, the anchors the restricted tail
    evaluates (``prefix.tail_anchors``, sorted indices within the level): its ``max_candidates``
    anchors of highest ``foreground`` ``[B, R]`` (``chosen_index[i]`` instead when given, the
    dense candidates' choice) and every anchor where ``above`` ``[B, R]`` (a class probability
    above the score threshold); every anchor when ``max_candidates`` is 0. ``sizes``: the
    anchors of each level."""
    chosen_anchors: list[list[Tensor]] = []
    for i in range(above.shape[0]):
        chosen = above[i].clone()
        index = chosen_index[i] if chosen_index is not None else None
        if max_candidates <= 0:
            chosen[:] = True
        elif index is not None:
            chosen[index] = True
        else:
            chosen[foreground[i].topk(min(max_candidates, int(foreground.shape[1]))).indices] = True
        chosen_anchors.append([torch.where(part)[0] for part in chosen.split(list(sizes))])
    prefix.tail_anchors = chosen_anchors
