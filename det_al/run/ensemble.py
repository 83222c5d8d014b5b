"""Checkpoint ensembles: several detectors' passes scored as one set of passes.

An ensemble (Beluch et al., CVPR 2018: ensembles beat MC dropout for active learning) is a
list of models of one family and one class list, e.g. the same architecture trained with
different seeds. Each member runs its own passes (:func:`det_al.run.score_lines.run_members`:
one :func:`~det_al.inference.passes.run_passes` per member, with its own seeds:
:func:`member_seed`); the members share nothing but the matching and scoring:

- the stochastic passes of all members are concatenated on the pass axis, member-major (the
  ``V * T`` passes of member 0 first, then member 1's, ...), so ``M`` members of ``T`` passes
  are scored as ``M * T`` passes (:func:`join_passes`); ``passes.passes = 1`` with
  ``passes.dropout = 0`` is a plain ensemble (one deterministic pass per member);
- the deterministic pass (the pseudo-labels, and the anchor the passes are matched to), the
  embedding (``diverse``, ``typical``, novelty) and the pre-threshold candidates of the dense
  signals are the first member's.

One member is exactly a single model: same seeds, same passes, same results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

from det_al.errors import InputError
from det_al.inference.dropout import check_sites
from det_al.inference.passes import ImagePasses
from det_al.models.build import has_masks, model_family, model_num_classes


@dataclass
class EnsemblePasses(ImagePasses):
    """:class:`ImagePasses` of several members; ``members``: the member index of each pass."""

    members: list[int] = field(default_factory=list)


def member_seed(seed: int, member: int) -> int:
    """The ``passes.seed`` of ensemble member ``member``: member 0 keeps ``seed`` (one member is a
    single model), the others get seeds derived from it, so their dropout masks differ."""
    if member == 0:
        return int(seed)
    digest = hashlib.blake2b(f"member/{seed}/{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


def members_sha256(shas: Sequence[str]) -> str:
    """The run key's checkpoint hash of an ensemble, from its members' hashes in order; one
    member's is its own hash (so a one-member run resumes a single-model run and vice versa)."""
    if len(shas) == 1:
        return shas[0]
    return hashlib.sha256("ensemble:".join(shas).encode()).hexdigest()


def as_members(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """The members of an ensemble: a single model is one member."""
    return [model] if isinstance(model, nn.Module) else list(model)


def _kind(model: nn.Module) -> str:
    return f"{type(model).__name__} ({model_family(model)}{', with masks' if has_masks(model) else ''})"


def check_members(
    models: Sequence[nn.Module],
    names: Sequence[str] | None = None,
    categories: Sequence[Sequence[dict] | None] | None = None,
    sites: Sequence[str] = (),
) -> None:
    """Refuse, before any image is read, an ensemble whose members cannot share matching and
    scoring: members of another family (or one with masks beside one without), another class
    count, other category names (``categories[m]``: member ``m``'s, ``None`` when unknown, e.g.
    a plain state dict), or missing a configured dropout site. The :class:`InputError` names the
    member (``names[m]``, e.g. its checkpoint path; default ``models[m]``) and the mismatch."""
    if not models:
        raise InputError("an ensemble needs at least one model")
    names = list(names) if names is not None else [f"models[{m}]" for m in range(len(models))]
    first, first_name = models[0], names[0]
    for m, model in enumerate(models):
        try:
            model_family(model)
        except ValueError as e:
            raise InputError(f"cannot score with this ensemble member: {e}", names[m]) from None
        if m == 0:  # the first member is checked as a single model is (det_al.run.checks.check_run)
            continue
        _check_member_sites(model, sites, names[m])
        if _kind(model) != _kind(first):
            raise InputError(f"ensemble member is a {_kind(model)} model but {first_name} is a {_kind(first)} model",
                             names[m])
        n, n0 = model_num_classes(model), model_num_classes(first)
        if n != n0:
            raise InputError(f"ensemble member has {n} classes (background included) but {first_name} has {n0}",
                             names[m])
        if categories is not None and categories[m] and categories[0]:
            _check_same_names(categories[m], categories[0], names[m], first_name)


def _check_member_sites(model: nn.Module, sites: Sequence[str], name: str) -> None:
    try:
        check_sites(model, sites)
    except InputError as e:
        raise InputError(f"ensemble member: {e}", name) from None


def _check_same_names(cats: Sequence[dict], first: Sequence[dict], name: str, first_name: str) -> None:
    ours = [str(c.get("name")) for c in cats]
    theirs = [str(c.get("name")) for c in first]
    for label, (a, b) in enumerate(zip(ours, theirs), start=1):
        if a != b:
            raise InputError(f"ensemble member's class {label} is {a!r} but {first_name}'s is {b!r}", name)


def join_passes(member_passes: Sequence[ImagePasses]) -> ImagePasses:
    """One image's passes of every member as one :class:`EnsemblePasses`: the stochastic passes
    concatenated member-major; the deterministic pass, embedding and candidates of member 0.
    One member's passes are returned as they are."""
    if len(member_passes) == 1:
        return member_passes[0]
    first = member_passes[0]
    return EnsemblePasses(
        first.deterministic,
        [det for run in member_passes for det in run.passes],
        [view for run in member_passes for view in run.views],
        first.embedding,
        first.candidates,
        members=[m for m, run in enumerate(member_passes) for _ in run.passes],
    )

