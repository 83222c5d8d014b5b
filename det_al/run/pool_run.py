"""The scoring run: a checked pool through the model, to result lines in memory or streamed to disk.

:func:`score_in_memory` collects the result lines of a (small) pool; :func:`score_to_dir`
streams them to ``results.jsonl`` (:mod:`det_al.run.stream`: resumable, a kill loses at most the
batch in flight), one shard of the pool or all of it (:mod:`det_al.run.shards`), and assembles
the outputs of ``det-al score`` (:mod:`det_al.run.assemble`). Both trust their input: the entry
(:func:`det_al.score_images`, ``det-al score``) checked it once with
:func:`det_al.run.checks.check_run`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from det_al.config import Config, config_to_dict
from det_al.data.pool import PoolImages, as_pool_images
from det_al.errors import InputError
from det_al.run.assemble import assemble_outputs
from det_al.run.ensemble import as_members
from det_al.run.result_line import ResultLine
from det_al.run.score_lines import iter_results
from det_al.run.shards import resume_batches, shard_positions
from det_al.run.stream import KEY, RESULTS, ResultsWriter, read_results, run_key

logger = logging.getLogger(__name__)


def score_in_memory(
    model: nn.Module | Sequence[nn.Module],
    config: Config,
    categories: list[dict],
    images: PoolImages | list[dict],
    image_root: str | os.PathLike,
    device: str = "cpu",
    amp: bool = False,
    progress: bool = True,
    make_dataset: Callable[[PoolImages], torch.utils.data.Dataset] | None = None,
) -> list[ResultLine]:
    """Every result line of ``images``, in pool order (:func:`iter_results`)."""
    lines: list[ResultLine] = []
    for batch in iter_results(model, config, categories, images, image_root, device, amp, progress, make_dataset):
        lines.extend(batch)
    return lines


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
    model: nn.Module | Sequence[nn.Module],
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
    labelled_embeddings: np.ndarray | None = None,
) -> dict:
    """Score a pool (or one shard of it) streaming result lines to ``out_dir/results.jsonl``.

    ``pool["images"]`` is :class:`PoolImages` (:func:`det_al.data.pool.read_pool`) or a list of
    COCO image dicts. With ``resume``, images already in a matching results file are skipped;
    a kill at any instant loses at most the batch in flight. Without it, a folder holding
    results is an :class:`InputError` unless ``overwrite`` (see :class:`ResultsWriter`). With
    ``assemble`` (single shard), the final outputs are written at the end; shards are joined by
    :func:`det_al.run.shards.merge_shards`. ``labelled_embeddings`` ``[M, D]`` (the labelled set's,
    :func:`det_al.run.labelled.labelled_embeddings`) add ``novelty`` to every ranking record when assembling.
    ``model`` may be an ensemble's models (:mod:`det_al.run.ensemble`); ``checkpoint_sha`` is then
    :func:`det_al.run.ensemble.members_sha256` of theirs.

    The input is trusted (the entry checked it: :func:`det_al.run.checks.check_run`). When the
    first images all fail in the model with the same error (:func:`iter_results`), a new run's
    ``results.jsonl`` and ``key.json`` are removed again.
    """
    pool_images = as_pool_images(pool["images"])
    block = config.passes.batch_size
    positions = shard_positions(len(pool_images), num_shards, shard_index, block)
    images = pool_images if num_shards == 1 else pool_images[positions]
    # Results depend on the thread count in their last bits (CPU kernels sum in a thread-count
    # dependent order): it is part of the key, so a resume never mixes two counts' results.
    threads = torch.get_num_threads()
    key = run_key(checkpoint_sha, config_to_dict(config), pool_images.sha256(), num_shards, shard_index, block, threads,
                  members=len(as_members(model)))
    out_dir = Path(out_dir)
    meta = {"config": config_to_dict(config), "categories": categories, "n_pool": len(pool_images)}
    for name in ("image_root", "checkpoints", "members"):  # a merge of the shards remembers them too
        if (run_info or {}).get(name):
            meta[name] = run_info[name]
    new_dir = not out_dir.exists()
    with ResultsWriter(out_dir, key, resume=resume, meta=meta, overwrite=overwrite) as writer:
        done = np.isin(images.ids, writer.done_ids)
        rerun, batches = resume_batches(positions, done, block)
        todo = images if rerun.all() else images[rerun]
        written = set(images.ids[rerun & done].tolist())
        if done.any():
            logger.info("%d of %d images left to score", int((~done).sum()), len(images))
        try:
            for lines in iter_results(model, config, categories, todo, image_root, device, amp, progress, make_dataset,
                                      batches):
                writer.write_batch([line for line in lines if line.image_id not in written] if written else lines)
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
