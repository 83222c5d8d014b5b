"""MC dropout through forward pre-hooks: the only module that installs hooks on a model.

torchvision's detection heads have no dropout of their own, so det_al adds it on the *input*
of named modules ("sites") while the model stays in ``eval()`` (batch norm frozen, no weight
changes): a pre-hook multiplies the input by a Bernoulli keep-mask scaled by ``1 / (1 - p)``
(inverted dropout, as ``nn.functional.dropout``).

Channel groups (``passes.dropout_groups`` N > 0): instead of one draw per input value, the
input's channels fall in N contiguous groups (channel ``c`` in group ``c * N // C``), and one draw
per group keeps or drops the group's channels at every position and row of an (image, pass):
dropout on the site's weights, one sampled sub-network per pass. The site's output is then a
weighted sum of N per-group outputs, which :mod:`det_al.inference.grouped` computes once for all
passes.

Reproducible passes. Every stochastic pass of every image owns a ``torch.Generator``. The rows
(dimension 0) of a site's input are laid out in :class:`Chunk` s, one per (image, pass), and
each chunk draws its mask from its own generator. Pass ``t`` of image ``i`` therefore gets the
same masks whether it runs alone through the whole model (the plain path) or batched with the
other passes in one call of the suffix (the fast path, see :mod:`det_al.inference.passes`): what matters
is only the order of the draws *per generator*, which both paths keep.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Identity(), nn.Linear(4, 4)).eval()
>>> with mc_dropout(net, ["1"], rates=0.5, generators=[torch.Generator().manual_seed(0)]):
...     y = net(torch.ones(2, 4))
>>> [h for h in net[1]._forward_pre_hooks.values()]
[]
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from det_al.errors import InputError

logger = logging.getLogger(__name__)

# Per model family, the module paths whose input gets dropout. The first site of each family
# is where det_al.inference.passes splits the model into a deterministic prefix and a stochastic suffix.
DEFAULT_SITES: dict[str, tuple[str, ...]] = {
    "rcnn": ("roi_heads.box_predictor", "roi_heads.mask_predictor"),
    "retinanet": ("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
    "fcos": (
        "head.classification_head.cls_logits",
        "head.regression_head.bbox_reg",
        "head.regression_head.bbox_ctrness",
    ),
    "ssd": ("head",),
}


@dataclass
class Chunk:
    """A block of rows of a site's input that belongs to one (image, pass).

    Attributes:
        generator: draws this chunk's keep-mask; ``None`` with ``rate == 0``.
        rate: dropout probability of this chunk, in ``[0, 1)``; 0 leaves the rows untouched.
        rows: number of rows along dimension 0; ``None`` means an equal share of what the
            chunks with a given row count leave over.
    """

    generator: torch.Generator | None
    rate: float
    rows: int | None = None


def default_sites(family: str, model: nn.Module | None = None) -> tuple[str, ...]:
    """The default dropout sites of ``family`` that exist in ``model`` (all of them if None)."""
    if family not in DEFAULT_SITES:
        raise ValueError(f"unknown model family {family!r} (valid: {', '.join(DEFAULT_SITES)})")
    sites = DEFAULT_SITES[family]
    if model is None:
        return sites
    names = {name for name, _ in model.named_modules()}
    return tuple(s for s in sites if s in names)


def check_sites(model: nn.Module, sites: Sequence[str]) -> None:
    """Raise :class:`InputError` when a configured dropout site (``passes.sites``) is not a module
    of ``model``: a typo would otherwise give a whole run of identical passes (every component 0).
    Empty ``sites`` (the family's defaults) is always valid.

    >>> check_sites(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), ["2"])
    Traceback (most recent call last):
    det_al.errors.InputError: passes.sites: '2' is not a module of the Sequential (its modules include '0', '1')
    """
    names = [name for name, _ in model.named_modules() if name]
    missing = [s for s in sites if s not in set(names)]
    if not missing:
        return
    site = missing[0]
    close = difflib.get_close_matches(site, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else (
        f"its modules include {', '.join(map(repr, names[:5]))}")
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise InputError(f"passes.sites: {site!r}{more} is not a module of the {type(model).__name__} ({hint})")


def chunk_rows(total: int, chunks: Sequence[Chunk]) -> list[int]:
    """Row count of each chunk; chunks with ``rows=None`` share the remainder equally."""
    fixed = sum(c.rows for c in chunks if c.rows is not None)
    free = [c for c in chunks if c.rows is None]
    share = 0
    if free:
        rest = total - fixed
        if rest < 0 or rest % len(free):
            raise ValueError(f"cannot split {total} rows into {len(free)} equal chunks after {fixed} fixed rows")
        share = rest // len(free)
    elif fixed != total:
        raise ValueError(f"chunks cover {fixed} rows but the site's input has {total}")
    return [share if c.rows is None else c.rows for c in chunks]


def group_of_channel(channels: int, groups: int, device: torch.device | str = "cpu") -> Tensor:
    """``[C]``: the group of each channel, ``c * groups // channels`` (contiguous, near-equal groups).

    >>> group_of_channel(6, 4).tolist()
    [0, 0, 1, 2, 2, 3]
    """
    return torch.arange(channels, device=device) * groups // channels


def group_keep(generator: torch.Generator | None, rate: float, groups: int,
               device: torch.device | str = "cpu") -> Tensor:
    """``[groups]`` float32 factors of one (image, pass): ``rand(groups) >= rate`` from
    ``generator``, kept groups ``1 / (1 - rate)``, dropped ones 0 (all ones at rate 0, no draw)."""
    if rate == 0.0:
        return torch.ones(groups, device=device)
    keep = torch.rand(groups, generator=generator, device=device) >= rate
    return keep.float() * (1.0 / (1.0 - rate))


def _drop_groups(x: Tensor, chunks: Sequence[Chunk], sizes: list[int], groups: int) -> Tensor:
    """:func:`drop_rows` with channel groups: each chunk scales channel ``c`` (dim 1) of all its
    rows and positions by its group's :func:`group_keep` factor."""
    if x.ndim < 2:
        raise ValueError(f"channel-group dropout needs a channel dimension (dim 1); the site's input is {tuple(x.shape)}")
    index = group_of_channel(int(x.shape[1]), groups, x.device)
    shape = (1, int(x.shape[1])) + (1,) * (x.ndim - 2)
    pieces = []
    for c, part in zip(chunks, x.split(sizes, dim=0)):
        if c.rate == 0.0 or part.numel() == 0:
            pieces.append(part)
            continue
        factors = group_keep(c.generator, c.rate, groups, x.device)[index]
        pieces.append(part * factors.to(x.dtype).view(shape))
    return torch.cat(pieces, dim=0)


def drop_rows(x: Tensor, chunks: Sequence[Chunk], groups: int = 0) -> Tensor:
    """Inverted dropout on ``x`` (any shape, rows along dim 0), each chunk with its generator.

    The keep-mask of a chunk is ``rand(shape) >= rate`` drawn in float32 from the chunk's
    generator; kept values are multiplied by ``1 / (1 - rate)``. With ``groups`` > 0, one
    draw per channel group instead (module docstring).
    """
    sizes = chunk_rows(x.shape[0], chunks)
    if all(c.rate == 0.0 for c in chunks):
        return x
    if groups > 0:
        return _drop_groups(x, chunks, sizes, groups)
    if x.dtype != torch.float32 or (x.requires_grad and torch.is_grad_enabled()):
        # half precision or autograd: out-of-place, the mask still drawn in float32
        pieces = []
        for c, part in zip(chunks, x.split(sizes, dim=0)):
            if c.rate == 0.0 or part.numel() == 0:
                pieces.append(part)
                continue
            keep = torch.rand(part.shape, generator=c.generator, device=part.device) >= c.rate
            pieces.append(part * keep.to(part.dtype) * (1.0 / (1.0 - c.rate)))
        return torch.cat(pieces, dim=0)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for c, part, o in zip(chunks, x.split(sizes, dim=0), out.split(sizes, dim=0)):
        if c.rate == 0.0 or part.numel() == 0:
            o.copy_(part)
        else:  # same values as the branch above, without temporaries
            torch.rand(part.shape, generator=c.generator, device=part.device, out=o)
            o.ge_(c.rate).mul_(part).mul_(1.0 / (1.0 - c.rate))
    return out


def _drop_any(value: Any, chunks: Sequence[Chunk], groups: int = 0) -> Any:
    """Apply :func:`drop_rows` to a tensor, or to each tensor of a list/tuple/dict, in order."""
    if isinstance(value, Tensor) and value.is_floating_point():
        return drop_rows(value, chunks, groups)
    if isinstance(value, (list, tuple)):
        return type(value)(_drop_any(v, chunks, groups) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _drop_any(v, chunks, groups)) for k, v in value.items())
    return value


class MCDropout:
    """What the installed hooks do; yielded by :func:`mc_dropout`.

    ``chunks`` is the row layout of the next calls (set it with :meth:`layout`); by default
    one chunk per pass, equal shares, in pass order. ``groups``: 0 element-wise dropout, N > 0
    channel groups (module docstring).
    """

    def __init__(self, sites: tuple[str, ...], chunks: list[Chunk], groups: int = 0):
        self.sites = sites
        self.chunks = chunks
        self.groups = groups

    @contextlib.contextmanager
    def layout(self, chunks: Sequence[Chunk]) -> Iterator[None]:
        """Use ``chunks`` as the row layout inside the ``with`` block."""
        saved = self.chunks
        self.chunks = list(chunks)
        try:
            yield
        finally:
            self.chunks = saved

    def hook(self, module: nn.Module, args: tuple) -> tuple:
        if not args:
            return args
        return (_drop_any(args[0], self.chunks, self.groups), *args[1:])


def make_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One seeded generator per seed, on ``device`` (where the masks are drawn)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@contextlib.contextmanager
def mc_dropout(
    model: nn.Module,
    sites: Sequence[str],
    rates: float | Sequence[float] = 0.0,
    generators: Sequence[torch.Generator | None] | None = None,
    groups: int = 0,
) -> Iterator[MCDropout]:
    """Install dropout pre-hooks on the modules named in ``sites`` for the ``with`` block.

    Args:
        model: any module; left in whatever mode it is in and never modified.
        sites: module paths as ``model.named_modules()`` names them.
        rates: one rate for every pass or one per pass.
        generators: one generator per pass (``None``: the global RNG). The default row layout
            splits dimension 0 of each site's input into ``len(generators)`` equal chunks in
            pass order; :meth:`MCDropout.layout` sets any other layout.

    Warns (``UserWarning``) when no site matched a module: the passes would all be equal.
    The hooks are removed when the block exits, also after an error.
    """
    n = len(generators) if generators is not None else (1 if isinstance(rates, (int, float)) else len(rates))
    gens = list(generators) if generators is not None else [None] * n
    rate_list = [float(rates)] * n if isinstance(rates, (int, float)) else [float(r) for r in rates]
    if len(rate_list) != n:
        raise ValueError(f"got {len(rate_list)} rates for {n} generators")
    if groups < 0:
        raise ValueError(f"dropout groups must be >= 0, got {groups}")
    if any(not 0.0 <= r < 1.0 for r in rate_list):
        raise ValueError(f"dropout rates must be in [0, 1), got {rate_list}")
    modules = dict(model.named_modules())
    matched = tuple(s for s in sites if s in modules)
    missing = [s for s in sites if s not in modules]
    if missing and matched:
        logger.warning("dropout sites not found in the model: %s", ", ".join(missing))
    if not matched:
        warnings.warn(
            f"MC dropout: none of the sites {list(sites)} is a module of "
            f"{type(model).__name__}; the stochastic passes will all be identical",
            UserWarning,
            stacklevel=3,
        )
    control = MCDropout(matched, [Chunk(g, r) for g, r in zip(gens, rate_list)], groups)
    handles = []
    try:
        for name in matched:
            handles.append(modules[name].register_forward_pre_hook(control.hook))
        yield control
    finally:
        for h in handles:
            h.remove()
