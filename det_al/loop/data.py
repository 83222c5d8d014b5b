"""The loop's inputs: the labelled, pool, oracle and validation COCO files, and its settings.

:class:`LoopData` loads and cross-checks the four files (the oracle labels every pool image,
no image is both labelled and in the pool, the categories agree); :class:`LoopRun` is one
strategy and seed's labelled set and pool as rounds move images between them; :func:`check_loop_config`
range-checks ``config.loop``; :func:`quick_config` and ``LoopData.load(quick=True)`` cut a run
down to a smoke test.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from det_al.config import Config
from det_al.data.coco import load_coco
from det_al.data.images import check_file_names, check_image_root
from det_al.errors import InputError
from det_al.selection.strategies import get_strategy

RETRAIN = ("scratch", "finetune")


def check_loop_config(config: Config) -> None:
    """Range checks of ``config.loop``; a bad value is an :class:`InputError` naming the key."""
    loop = config.loop
    if loop.rounds < 0:
        raise InputError(f"loop.rounds must be >= 0, got {loop.rounds}")
    if loop.budget < 1 and loop.budget_boxes < 1:
        raise InputError("loop.budget (images) or loop.budget_boxes must be >= 1")
    if loop.budget_boxes < 0:
        raise InputError(f"loop.budget_boxes must be >= 0 (0: a budget in images), got {loop.budget_boxes}")
    if loop.retrain not in RETRAIN:
        raise InputError(f"loop.retrain must be scratch or finetune, got '{loop.retrain}'")
    if not loop.strategies:
        raise InputError("loop.strategies is empty")
    if len(set(loop.strategies)) != len(loop.strategies) or len(set(loop.seeds)) != len(loop.seeds):
        raise InputError("loop.strategies and loop.seeds must not repeat")
    if not loop.seeds:
        raise InputError("loop.seeds is empty")
    for name in loop.strategies:
        try:
            get_strategy(name)
        except ValueError as e:
            raise InputError(f"loop.strategies: {e}") from e
    if loop.finetune_epochs < 0 or loop.finetune_lr < 0:
        raise InputError("loop.finetune_epochs and loop.finetune_lr must be >= 0 (0: those of train)")
    if loop.finetune_warmup_iters < 0:
        raise InputError(f"loop.finetune_warmup_iters must be >= 0 (0: no warm-up), got {loop.finetune_warmup_iters}")
    if loop.pre_factor < 1:
        raise InputError(f"loop.pre_factor must be >= 1, got {loop.pre_factor}")
    if not 0 < loop.pseudo_threshold <= 1:
        raise InputError(f"loop.pseudo_threshold must be in (0, 1], got {loop.pseudo_threshold}")
    if not 0 <= loop.pseudo_ignore <= loop.pseudo_threshold:
        raise InputError(
            f"loop.pseudo_ignore must be in [0, loop.pseudo_threshold={loop.pseudo_threshold}], got {loop.pseudo_ignore}"
        )


def budgets(config: Config) -> tuple[int | None, int | None]:
    """``(budget, budget_boxes)`` for the strategies: a box budget when ``budget_boxes > 0``."""
    if config.loop.budget_boxes > 0:
        return None, config.loop.budget_boxes
    return config.loop.budget, None


def subset(coco: Mapping[str, Any], image_ids: Iterable[int]) -> dict:
    """The images (in ``coco``'s order) and annotations of ``image_ids``, plus the categories."""
    keep = set(int(i) for i in image_ids)
    return {
        "images": [im for im in coco["images"] if int(im["id"]) in keep],
        "annotations": [a for a in coco.get("annotations", []) if int(a["image_id"]) in keep],
        "categories": coco.get("categories", []),
    }


def shrink(coco: Mapping[str, Any], n: int) -> dict:
    """The first ``n`` images of ``coco`` with their annotations (for ``--quick``)."""
    return subset(coco, [im["id"] for im in coco["images"][:n]])


def quick_config(config: Config) -> Config:
    """Tiny settings for a smoke test: one seed, one round of at most 2 images (or 6 boxes), one
    epoch of one batch, two passes. The data are cut down by :func:`run_loop` with ``quick=True``."""
    loop = config.loop
    return dataclasses.replace(
        config,
        loop=dataclasses.replace(
            loop,
            rounds=min(loop.rounds, 1),
            budget=min(loop.budget, 2) if loop.budget_boxes <= 0 else loop.budget,
            budget_boxes=min(loop.budget_boxes, 6) if loop.budget_boxes > 0 else 0,
            seeds=loop.seeds[:1],
        ),
        train=dataclasses.replace(config.train, epochs=1, batch_size=8, warmup_iters=0, eval_every=0, max_minutes=0.5),
        passes=dataclasses.replace(config.passes, passes=2, dropout=config.passes.rates()[0], tta=()),
    )


QUICK_SIZES = {"labelled": 4, "pool": 8, "val": 4}


@dataclasses.dataclass
class LoopData:
    """The loop's inputs in memory."""

    labelled: dict
    pool: dict
    oracle: dict
    val: dict
    image_root: Path
    categories: list[dict]
    #: file names may escape ``image_root`` (checked by :meth:`load`, passed to scoring and training)
    allow_outside_root: bool = False

    @classmethod
    def load(
        cls,
        labelled: str | os.PathLike,
        pool: str | os.PathLike,
        oracle: str | os.PathLike,
        val: str | os.PathLike,
        image_root: str | os.PathLike,
        quick: bool = False,
        allow_outside_root: bool = False,
    ) -> "LoopData":

        data = {
            "labelled": load_coco(labelled, require_annotations=True),
            "pool": load_coco(pool),
            "oracle": load_coco(oracle, require_annotations=True),
            "val": load_coco(val, require_annotations=True),
        }
        check_image_root(image_root)
        for key, path in (("labelled", labelled), ("pool", pool), ("oracle", oracle), ("val", val)):
            check_file_names(data[key]["images"], image_root, path, allow_outside_root)
        if quick:
            data = {k: shrink(v, QUICK_SIZES.get(k, len(v["images"]))) for k, v in data.items()}
            data["oracle"] = subset(data["oracle"], [im["id"] for im in data["pool"]["images"]])
        oracle_ids = {int(im["id"]) for im in data["oracle"]["images"]}
        missing = [im["id"] for im in data["pool"]["images"] if int(im["id"]) not in oracle_ids]
        if missing:
            raise InputError(f"the oracle has no labels for pool image id {missing[0]}", oracle)
        overlap = {int(im["id"]) for im in data["labelled"]["images"]} & {
            int(im["id"]) for im in data["pool"]["images"]
        }
        if overlap:
            raise InputError(f"image id {min(overlap)} is both labelled and in the pool", pool)
        names = [c["name"] for c in data["labelled"]["categories"]]
        if [c["name"] for c in data["oracle"]["categories"]] != names or [
            c["name"] for c in data["val"]["categories"]
        ] != names:
            raise InputError("the labelled, oracle and validation files must have the same categories", oracle)
        return cls(image_root=Path(image_root), categories=list(data["labelled"]["categories"]),
                   allow_outside_root=allow_outside_root, **data)


class LoopRun:
    """One strategy and seed: the labelled set and the pool as they change."""

    def __init__(self, strategy: str, seed: int, data: LoopData):
        self.strategy, self.seed, self.data = strategy, seed, data
        self.labelled_ids = [int(im["id"]) for im in data.labelled["images"]]
        self.pool_ids = [int(im["id"]) for im in data.pool["images"]]
        self.added: list[int] = []
        self.pseudo: dict | None = None  # self-training: the pool's pseudo-labelled images

    def reveal(self, image_ids: Sequence[int]) -> None:
        """Move ``image_ids`` from the pool to the labelled set."""
        chosen = set(int(i) for i in image_ids)
        unknown = chosen - set(self.pool_ids)
        if unknown:
            raise InputError(f"selected image id {min(unknown)} is not in the pool")
        self.pool_ids = [i for i in self.pool_ids if i not in chosen]
        self.added.extend(int(i) for i in image_ids)

    def labelled(self) -> dict:
        """The labelled COCO set: the initial one plus the oracle's labels of what was added."""
        base = self.data.labelled
        added = subset(self.data.oracle, self.added)
        return {
            "images": list(base["images"]) + added["images"],
            "annotations": list(base.get("annotations", [])) + _renumber(added["annotations"], base),
            "categories": self.data.categories,
        }

    def pool(self) -> dict:
        return {**subset(self.data.pool, self.pool_ids), "annotations": []}

    def training_set(self) -> dict:
        """What a round trains on: the labelled set, plus the pseudo-labelled pool images."""
        labelled = self.labelled()
        if not self.pseudo or not self.pseudo["images"]:
            return labelled
        return {
            **labelled,
            "images": labelled["images"] + self.pseudo["images"],
            "annotations": labelled["annotations"] + _renumber(self.pseudo["annotations"], labelled),
        }


def _renumber(annotations: list[dict], base: Mapping[str, Any]) -> list[dict]:
    """Oracle annotations with ids that cannot collide with the labelled set's."""
    start = max([int(a.get("id", 0)) for a in base.get("annotations", [])] + [0]) + 1
    return [{**a, "id": start + k} for k, a in enumerate(annotations)]
