"""Score a pool: stochastic passes -> matched objects -> per-image informativeness.

Each pool image becomes one *result line* (see :mod:`det_al.results.stream`): its ranking record,
its pseudo-label annotations with per-object uncertainty, the boxes of every pass and its
embedding. :func:`score_to_dir` streams result lines to disk (resumable, shardable) and
assembles the outputs of ``det-al score`` with :mod:`det_al.results.assemble`; :func:`score_pool` does
the same in memory for small pools (the demo, the loop).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from det_al.data.coco import xyxy_to_xywh
from det_al.config import Config, config_to_dict
from det_al.data.datasets import PoolDataset, pool_collate
from det_al.errors import InputError
from det_al.data.images import check_image_root, outside_root, outside_root_error
from det_al.data.pool import PoolImages, as_pool_images
from det_al.data.sources import check_categories as check_model_categories
from det_al.results.stream import KEY, RESULTS, ResultsWriter, read_results, run_key
from det_al.results.assemble import assemble_outputs
from det_al.scoring.dense import dense_scores
from det_al.scoring.informativeness import combine_image, finalize_pool, image_informativeness
from det_al.scoring.matching import match_passes
from det_al.models.build import has_masks, model_family, model_num_classes
from det_al.scoring.one_pass import one_pass_scores
from det_al.inference.dropout import check_sites
from det_al.data.locate import check_images_found, probe_names
from det_al.inference.passes import ImagePasses, run_passes
from det_al.data.segmentation import mask_to_rle
from det_al.scoring.uncertainty import score_objects

logger = logging.getLogger(__name__)

# Per-object fields copied from score_objects() into each pseudo-label annotation.
OBJECT_FIELDS = (
    "uncertainty",
    "class_variance",
    "entropy",
    "mutual_information",
    "box_disagreement",
    "box_spread",
    "mask_disagreement",
    "presence",
)
COMPONENTS = ("class", "box", "mask", "presence")
#: A run stops when its first this many images that reach the model all fail with the same
#: error (a model-side fault: every other image would fail the same way), instead of skipping
#: the whole pool.
SAME_ERROR_STOP = 3
_DOTDOT = re.compile(r"(?:^|/)\.\.(?:/|$)")  # a ".." path component


@dataclass
class PoolScores:
    """A scored pool in memory: the result lines and the finished ranking."""

    results: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @property
    def skipped(self) -> list[dict]:
        return [
            {"image_id": r["image_id"], "file_name": r["file_name"], "reason": r["skipped"]}
            for r in self.results
            if "skipped" in r
        ]

    @property
    def annotations(self) -> list[dict]:
        return [{"image_id": r["image_id"], **a} for r in self.results if "record" in r for a in r["annotations"]]

    @property
    def embedding_ids(self) -> list[int]:
        return [r["image_id"] for r in self.results if "record" in r]

    @property
    def embeddings(self) -> np.ndarray:
        """``[N, D]`` float32, rows in the order of :attr:`embedding_ids`."""
        rows = [r["embedding"] for r in self.results if "record" in r]
        return np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, 0), np.float32)


def image_seed(seed: int, image_id: int) -> int:
    """The dropout seed of one image: independent of batch composition, order and sharding."""
    return (seed * 1_000_003 + int(image_id) * 7_919) % (2**31 - 1)


def check_model(model: nn.Module) -> None:
    """Refuse, before any image is read, a model that det_al cannot score with: not a
    torchvision detector of a supported class, or in train mode (it would return losses, and
    BatchNorm statistics would move)."""
    try:
        model_family(model)
    except ValueError as e:
        raise InputError(f"cannot score with this model: {e}") from None
    if model.training:
        raise InputError(
            "cannot score with a model in train mode: call model.eval() first "
            "(det_al.models.checkpoint.load_checkpoint returns it in eval mode)"
        )


def check_categories(categories: list[dict], model: nn.Module) -> None:
    """Refuse categories that do not name each of the model's labels exactly once
    (:func:`det_al.data.sources.check_categories`)."""
    check_model_categories(categories, model_num_classes(model) - 1)


def check_pool(
    images: PoolImages, image_root: str | os.PathLike | None, allow_outside_root: bool = False,
    source: str | os.PathLike | None = None,
) -> None:
    """Refuse a pool that cannot give a useful run: no images, an image root that is not a
    folder, (unless ``allow_outside_root``) a ``file_name`` that escapes the image root, or a
    root that holds most of the pool's files nowhere (:func:`det_al.data.locate.check_images_found`).
    ``image_root=None``: the images do not come from files (only emptiness is checked)."""
    if not len(images):
        raise InputError("the pool has no images", source)
    if image_root is None:
        return
    root = Path(image_root)
    check_image_root(root)
    if not allow_outside_root:
        _check_names_inside(images, root, source)
    check_images_found(probe_names(len(images), images.file_name), root, source)


def _check_names_inside(images: PoolImages, root: Path, source: str | os.PathLike | None) -> None:
    for start, stop, names, offsets in images._name_chunks():
        # Only an absolute name or one with a ".." component can escape: find the candidates with
        # numpy and a scan of the chunk's bytes (0.2 s for a million plain names).
        starts = np.asarray(offsets[:-1], dtype=np.int64)
        first = np.frombuffer(names, dtype=np.uint8)[np.minimum(starts, max(len(names) - 1, 0))] if names else starts
        candidates = np.flatnonzero(first == ord("/"))
        if b".." in names:
            dots = [m.start() for m in re.finditer(rb"(?=\.\.)", names)]  # overlapping: "a." + "../x"
            candidates = np.union1d(candidates, np.searchsorted(starts, dots, side="right") - 1)
        for i in (start + candidates).tolist():
            name = images.file_name(i)
            if (name.startswith("/") or _DOTDOT.search(name)) and outside_root(name, root):
                raise outside_root_error(i, images.image_id(i), name, root, source)


def _round(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))


def _rle_area(rle: dict) -> float:
    from pycocotools import mask as mask_utils

    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return float(mask_utils.area(r))


def score_image(
    image_passes: ImagePasses, config: Config, categories: list[dict], with_masks: bool
) -> dict:
    """Match and score one image's passes into a result line (without image id and name)."""
    anchor = image_passes.deterministic
    objects = match_passes(
        anchor,
        image_passes.passes,
        iou_threshold=config.matching.iou_threshold,
        class_aware=config.matching.class_aware,
    )
    values = score_objects(anchor, image_passes.passes, objects, config.scoring, masks=with_masks)
    image = image_informativeness(values, config.scoring, has_masks=with_masks)
    label_to_id = {i + 1: int(c["id"]) for i, c in enumerate(categories)}

    # Values are rounded with round() on the Python floats of .tolist() (exact widening of
    # float32): the same numbers as rounding each tensor element, at a fraction of the cost.
    annotations = []
    if len(anchor):
        labels = anchor.labels.tolist()
        scores = anchor.scores.double().tolist()
        columns = [(name, values[name].double().tolist()) for name in OBJECT_FIELDS if name in values]
        for k, (x, y, w, h) in enumerate(xyxy_to_xywh(anchor.boxes)):
            ann: dict[str, Any] = {
                "category_id": label_to_id.get(labels[k], -1),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2),
                "iscrowd": 0,
                "score": round(scores[k], 6),
            }
            for name, column in columns:
                ann[name] = round(column[k], 6)
            if anchor.masks is not None:
                rle = mask_to_rle(anchor.masks[k] > 0.5)
                ann["segmentation"] = rle
                ann["area"] = _round(_rle_area(rle), 2)
            annotations.append(ann)

    pass_boxes = []
    for det in image_passes.passes:
        rows = []
        if len(det):
            for (x, y, w, h), lab, s in zip(xyxy_to_xywh(det.boxes), det.labels.tolist(), det.scores.double().tolist()):
                rows.append([round(x, 1), round(y, 1), round(w, 1), round(h, 1), label_to_id.get(lab, -1), round(s, 4)])
        pass_boxes.append(rows)

    one_pass = one_pass_scores(anchor)
    dense = dense_scores(image_passes.candidates, anchor.boxes, anchor.scores, config.scoring)
    record = {
        "informativeness": _round(image["informativeness"]),
        **{c: _round(image.get(c, 0.0)) for c in COMPONENTS},
        "n_objects": int(image["n_objects"]),
        "n_detections": len(anchor),
        "least_confidence": _round(one_pass["least_confidence"]),
        "max_entropy": _round(one_pass["max_entropy"]),
        **{k: v if isinstance(v, int) else _round(v) for k, v in dense.items()},
        "empty": bool(image["empty"]),
    }
    weights = config.scoring.image_weights
    if weights:  # the image-level combination (informativeness.IMAGE_COMPONENTS)
        record["objects"] = record["informativeness"]
        record["informativeness"] = _round(combine_image(record, weights))
        record["empty"] = bool(image["empty"] and not dense["n_candidates"])
    return {
        "record": record,
        "annotations": annotations,
        "passes": {"views": list(image_passes.views), "passes": pass_boxes},
        "embedding": [round(v, 5) for v in image_passes.embedding.detach().float().cpu().tolist()],
    }


def _run_or_skip(model: nn.Module, items: list[dict], p, device: str, amp: bool) -> list[ImagePasses | str]:
    """``run_passes`` on a batch; if the model fails, image by image: a failing image gives its reason."""
    seeds = [image_seed(p.seed, it["image_id"]) for it in items]
    try:
        return run_passes(model, [it["image"] for it in items], p, seeds=seeds, device=device, amp=amp)
    except Exception as e:
        if len(items) == 1:
            logger.debug("model failed on %s", items[0]["file_name"], exc_info=True)
            return [f"model failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"]
    return [r for it in items for r in _run_or_skip(model, [it], p, device, amp)]


def iter_results(
    model: nn.Module,
    config: Config,
    categories: list[dict],
    images: PoolImages | list[dict],
    image_root: str | os.PathLike,
    device: str = "cpu",
    amp: bool = False,
    progress: bool = True,
    make_dataset: Callable[[PoolImages], torch.utils.data.Dataset] | None = None,
    batches: Iterable[list[int]] | None = None,
    allow_outside_root: bool = False,
) -> Iterator[list[dict]]:
    """Score ``images`` (:class:`PoolImages` or COCO image dicts) batch by batch; yields each
    batch's result lines.

    Images that cannot be read, or that the model fails on, give a ``skipped`` line with the
    reason; the run goes on. But if the first :data:`SAME_ERROR_STOP` images that reach the
    model (or all of them, if fewer) fail with the same error, the fault is the model's, not
    the images': an :class:`InputError` with that error, and no line of them is yielded.
    ``make_dataset(images)`` replaces :class:`PoolDataset` (images
    from elsewhere than files, e.g. rendered on the fly); its items are those of PoolDataset.
    ``batches`` (index lists into ``images``) replaces the default batching, consecutive runs
    of ``passes.batch_size`` images; an image's passes depend on the images batched with it
    (torchvision pads a batch to its largest image).

    Checked before the first image is read (:class:`InputError`): the model
    (:func:`check_model`), the categories (:func:`check_categories`) and, for images read from
    ``image_root``, the root and the file names (:func:`check_pool`; ``allow_outside_root``
    lets a ``file_name`` escape the root). An empty ``images`` yields nothing.
    """
    images = as_pool_images(images)
    check_model(model)
    check_sites(model, config.passes.sites)
    check_categories(categories, model)
    if len(images) and make_dataset is None:
        check_pool(images, image_root, allow_outside_root)
    p = config.passes
    dataset = make_dataset(images) if make_dataset else PoolDataset(images, image_root)
    if batches is None:
        batches = _runs(np.arange(len(dataset)) // p.batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=p.num_workers, collate_fn=pool_collate)
    with_masks = has_masks(model)
    bar = tqdm(total=len(dataset), desc="scoring", unit="img", disable=not progress, dynamic_ncols=True)
    held: list[list[dict]] = []  # batches held back while every image that reached the model failed
    failures: list[str] = []  # their model errors
    try:
        for batch in loader:
            lines, good = [], []
            for item in batch:
                if "error" in item:
                    logger.warning("skipping %s: %s", item["file_name"], item["error"])
                    lines.append({"image_id": item["image_id"], "file_name": item["file_name"], "skipped": item["error"]})
                else:
                    good.append(item)
            if good:
                for item, res in zip(good, _run_or_skip(model, good, p, device, amp)):
                    if isinstance(res, str):
                        logger.warning("skipping %s: %s", item["file_name"], res)
                        lines.append({"image_id": item["image_id"], "file_name": item["file_name"], "skipped": res})
                        continue
                    h, w = item["image"].shape[-2:]
                    line = {"image_id": item["image_id"], "file_name": item["file_name"], "width": int(w), "height": int(h)}
                    line.update(score_image(res, config, categories, with_masks))
                    if not all(math.isfinite(v) for v in line["record"].values() if isinstance(v, float)):
                        reason = "model gave non-finite scores (NaN or infinity): check the checkpoint"
                        logger.warning("skipping %s: %s", item["file_name"], reason)
                        line = {"image_id": item["image_id"], "file_name": item["file_name"], "skipped": reason}
                    lines.append(line)
            bar.update(len(batch))
            if held is not None:
                held.append(lines)
                failures += [ln["skipped"] for ln in lines if ln.get("skipped", "").startswith("model failed")]
                if any("record" in ln for ln in lines):
                    lines, held = [ln for b in held for ln in b], None  # the model works: go on
                elif len(failures) >= SAME_ERROR_STOP:
                    _stop_if_same(failures)
                    lines, held = [ln for b in held for ln in b], None
                elif not failures:  # only unreadable images so far: nothing to decide yet
                    lines, held = [ln for b in held for ln in b], []
                else:
                    continue
            yield lines
        if held:
            if failures:
                _stop_if_same(failures)
            yield [ln for b in held for ln in b]
    finally:
        bar.close()


def _stop_if_same(failures: list[str]) -> None:
    """Raise if the model errors ``failures`` (the first images that reached the model, all
    failed) are one and the same error."""
    if len(set(failures)) == 1:
        raise InputError(
            f"stopped: the first {len(failures)} image{'s' if len(failures) > 1 else ''} of the pool all failed "
            f"in the model with the same error, so the model (or checkpoint, device, config) is at fault, "
            f"not the images: {failures[0]}"
        )


def records_from_results(results: list[dict], config: Config) -> list[dict]:
    """The ranking (sorted, ranked, empty policy applied) of in-memory result lines."""
    records = [
        {"image_id": r["image_id"], "file_name": r["file_name"], **r["record"]}
        for r in results
        if "record" in r
    ]
    return finalize_pool(records, config.scoring, config.passes.seed)


def score_pool(
    model: nn.Module,
    config: Config,
    categories: list[dict],
    pool: dict,
    image_root: str | os.PathLike,
    device: str = "cpu",
    amp: bool = False,
    progress: bool = True,
    allow_outside_root: bool = False,
) -> PoolScores:
    """Score a (small) pool in memory. Same config and seed give the same ranking.

    The checks of :func:`iter_results` apply; an empty pool gives empty scores."""
    results: list[dict] = []
    for lines in iter_results(model, config, categories, pool["images"], image_root, device, amp, progress,
                              allow_outside_root=allow_outside_root):
        results.extend(lines)
    return PoolScores(results=results, records=records_from_results(results, config))


def write_outputs(
    scores: PoolScores,
    out_dir: str | os.PathLike,
    pool: dict,
    categories: list[dict],
    config: Config,
    run_info: dict | None = None,
) -> dict:
    """Write the outputs of ``det-al score`` for an in-memory :class:`PoolScores`."""
    info = {"n_pool": len(pool["images"]), **(run_info or {})}
    return assemble_outputs(lambda: iter(scores.results), out_dir, categories, config, info)


def shard_positions(n_pool: int, num_shards: int, shard_index: int, block: int = 1) -> np.ndarray:
    """Pool positions ``[M]`` of shard ``shard_index`` of ``num_shards``.

    The pool is cut into blocks of ``block`` consecutive images (``passes.batch_size``: one
    scoring batch each) and the blocks are dealt round-robin, so every shard scores exactly the
    batches a single run scores. (torchvision pads a batch to its largest image, so an image's
    passes depend on the images batched with it; dealing single images would change that.)
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InputError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    positions = np.arange(n_pool, dtype=np.int64)
    return positions[(positions // max(block, 1)) % num_shards == shard_index]


def _runs(labels: np.ndarray, chunk: int = 65_536) -> Iterator[list[int]]:
    """Index lists of the runs of equal consecutive values of ``labels`` ``[N]``, made as they
    are consumed (a million runs stay a numpy array, not a million Python lists)."""
    if not len(labels):
        return
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(labels)) + 1, [len(labels)]))
    for start in range(0, len(bounds) - 1, chunk):
        edges = bounds[start:start + chunk + 1].tolist()
        for a, b in zip(edges[:-1], edges[1:]):
            yield list(range(a, b))


def _resume_batches(positions: np.ndarray, done: np.ndarray, block: int) -> tuple[np.ndarray, Iterator[list[int]]]:
    """Which shard images to score, and how to batch them, so every batch is a whole pool block.

    Args:
        positions: ``[M]`` pool positions of the shard's images.
        done: ``[M]`` bool, images whose result line is already written.
        block: images per batch.

    Returns:
        ``(rerun [M] bool, batches)``: every image of a block with anything left to score, and
        the batches as index lists into ``images[rerun]``. A block a kill interrupted is scored
        whole again (the caller does not write its written lines twice).
    """
    blocks = positions // block
    rerun = np.isin(blocks, blocks[~done])
    return rerun, _runs(blocks[rerun])


def _remove_empty_run(out_dir: Path, new_dir: bool) -> None:
    """Remove the empty ``results.jsonl`` and the ``key.json`` of a run that wrote no result
    (and ``out_dir`` itself if this run made it and it is empty now)."""
    for name in (RESULTS, KEY):
        try:
            (out_dir / name).unlink()
        except FileNotFoundError:
            pass
    if new_dir:
        try:
            out_dir.rmdir()
        except OSError:  # not empty: something else is there
            pass


def score_to_dir(
    model: nn.Module,
    config: Config,
    categories: list[dict],
    pool: dict,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    checkpoint_sha: str,
    resume: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    device: str = "cpu",
    amp: bool = False,
    progress: bool = True,
    assemble: bool = True,
    run_info: dict | None = None,
    make_dataset: Callable[[PoolImages], torch.utils.data.Dataset] | None = None,
    overwrite: bool = False,
    allow_outside_root: bool = False,
    labelled_embeddings: np.ndarray | None = None,
) -> dict:
    """Score a pool (or one shard of it) streaming result lines to ``out_dir/results.jsonl``.

    ``pool["images"]`` is :class:`PoolImages` (:func:`det_al.data.pool.read_pool`) or a list of
    COCO image dicts. With ``resume``, images already in a matching results file are skipped;
    a kill at any instant loses at most the batch in flight. Without it, a folder holding
    results is an :class:`InputError` unless ``overwrite`` (see :class:`ResultsWriter`). With
    ``assemble`` (single shard), the final outputs are written at the end; shards are joined by
    :func:`det_al.results.shards.merge_shards`. ``labelled_embeddings`` ``[M, D]`` (the labelled set's,
    :func:`det_al.scoring.novelty.embed_images`) add ``novelty`` to every ranking record when assembling.

    Bad input (see :func:`iter_results`; here an empty pool too) is an :class:`InputError`
    raised before anything is written; when the first images all fail in the model with the
    same error, a new run's ``results.jsonl`` and ``key.json`` are removed again.
    """
    pool_images = as_pool_images(pool["images"])
    check_model(model)
    check_sites(model, config.passes.sites)
    check_categories(categories, model)
    check_pool(pool_images, None if make_dataset else image_root, allow_outside_root)
    block = config.passes.batch_size
    positions = shard_positions(len(pool_images), num_shards, shard_index, block)
    images = pool_images if num_shards == 1 else pool_images[positions]
    # Results depend on the thread count in their last bits (CPU kernels sum in a thread-count
    # dependent order): it is part of the key, so a resume never mixes two counts' results.
    threads = torch.get_num_threads()
    key = run_key(checkpoint_sha, config_to_dict(config), pool_images.sha256(), num_shards, shard_index, block, threads)
    out_dir = Path(out_dir)
    meta = {"config": config_to_dict(config), "categories": categories, "n_pool": len(pool_images)}
    new_dir = not out_dir.exists()
    with ResultsWriter(out_dir, key, resume=resume, meta=meta, overwrite=overwrite) as writer:
        done = np.isin(images.ids, writer.done_ids)
        rerun, batches = _resume_batches(positions, done, block)
        todo = images if rerun.all() else images[rerun]
        written = set(images.ids[rerun & done].tolist())
        if done.any():
            logger.info("%d of %d images left to score", int((~done).sum()), len(images))
        try:
            for lines in iter_results(model, config, categories, todo, image_root, device, amp, progress, make_dataset,
                                      batches, allow_outside_root):
                writer.write_batch([line for line in lines if line["image_id"] not in written] if written else lines)
        except InputError:
            if writer.n_results == 0:  # a run that never got going leaves nothing behind
                writer.close()
                _remove_empty_run(out_dir, new_dir)
            raise
        writer.mark_done(len(images))
    counts = {"n_pool": len(pool_images), "n_shard": len(images)}
    if assemble:
        counts.update(
            assemble_outputs(
                lambda: read_results([out_dir / RESULTS]), out_dir, categories, config,
                {**counts, "threads_per_process": threads, **(run_info or {})},
                labelled_embeddings=labelled_embeddings,
            )
        )
    return counts
