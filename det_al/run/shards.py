"""Join the results of sharded scoring runs into the outputs of one run.

The pool is cut into blocks of ``passes.batch_size`` consecutive images, one scoring batch
each, and shard ``i`` of ``N`` scores every ``N``-th block from block ``i``
(:func:`shard_positions`), writing its result lines to its own folder
(``det-al score --num-shards N --shard-index i``, or one rank of ``torchrun``). Each shard
thus batches exactly the images a single run batches together. :func:`merge_shards` checks that
the folders are the ``N`` finished shards of one run (same checkpoint, config, pool and split)
and reads their lines a block at a time round-robin, which restores pool order, so the merged
outputs equal those of a single-process run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from det_al.run.assemble import assemble_outputs
from det_al.config import config_from_dict
from det_al.errors import InputError
from det_al.data.files import read_json
from det_al.run.result_line import ResultLine
from det_al.run.score_lines import consecutive_runs
from det_al.run.stream import DONE, RESULTS, is_done, read_key

SAME = {
    "checkpoint_sha256": "checkpoint",
    "config_sha256": "config",
    "pool_sha256": "pool",
    "num_shards": "--num-shards",
    "shard_block": "split of the pool",
}


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


def resume_batches(positions: np.ndarray, done: np.ndarray, block: int) -> tuple[np.ndarray, Iterator[list[int]]]:
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
    return rerun, consecutive_runs(blocks[rerun])


def check_shards(dirs: list[str | os.PathLike]) -> list[tuple[Path, dict]]:
    """The shard folders sorted by shard index, after checking they form one complete run."""
    if not dirs:
        raise InputError("no shard folders given")
    keys = [(Path(d), read_key(d)) for d in dirs]
    for d, key in keys:
        if not isinstance(key.get("shard_index"), int) or not isinstance(key.get("num_shards"), int):
            raise InputError("key.json has no shard_index/num_shards: not a det_al scoring output", d)
        if key["num_shards"] > 1 and (not isinstance(key.get("shard_block"), int) or key["shard_block"] < 1):
            raise InputError("key.json has no shard_block: scored by an older det_al version; score the shard again", d)
    shards = sorted(keys, key=lambda x: x[1]["shard_index"])
    first_dir, first = shards[0]
    for d, key in shards:
        for name, what in SAME.items():
            if key.get(name) != first.get(name):
                raise InputError(f"shard was scored with a different {what} than {first_dir}", d)
        if not is_done(d) or not (d / RESULTS).exists():
            raise InputError("shard is not finished (run it again with --resume)", d)
        done = read_json(d / DONE)
        if done.get("n_results") != done.get("n_expected"):
            raise InputError(f"shard holds {done.get('n_results')} results for {done.get('n_expected')} images", d)
    n = first["num_shards"]
    indices = [key["shard_index"] for _, key in shards]
    if indices != list(range(n)):
        missing = sorted(set(range(n)) - set(indices))
        dup = sorted({i for i in indices if indices.count(i) > 1})
        what = f"missing shard(s) {missing}" if missing else f"shard(s) {dup} given twice"
        raise InputError(f"{what} of {n}")
    return shards


def _round_robin(paths: list[Path], block: int) -> Iterator[ResultLine]:
    """The lines of ``paths``, ``block`` at a time from each in turn, until all are read."""
    files = [open(p, "rb") for p in paths]
    try:
        live = list(files)
        while live:
            still = []
            for f in live:
                n = 0
                while n < block:
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        break
                    yield ResultLine.from_json(line)
                    n += 1
                if n == block:
                    still.append(f)
            live = still
    finally:
        for f in files:
            f.close()


def merge_shards(dirs: list[str | os.PathLike], out_dir: str | os.PathLike, run_info: dict | None = None) -> dict:
    """Write the outputs of the run the shard folders ``dirs`` belong to into ``out_dir``."""
    shards = check_shards(dirs)
    meta = shards[0][1].get("meta") or {}
    if "config" not in meta:
        raise InputError("key.json holds no config: not written by this det_al version", shards[0][0])
    config = config_from_dict(meta["config"], str(shards[0][0] / "key.json"))
    paths = [d / RESULTS for d, _ in shards]
    info = {"n_pool": meta.get("n_pool"), "shards": [os.fspath(d) for d, _ in shards], **(run_info or {})}
    # the pool's image root (the exporters and the report default to it), an ensemble's checkpoints
    for name in ("image_root", "checkpoints", "members"):
        if meta.get(name):
            info.setdefault(name, meta[name])
    block = shards[0][1].get("shard_block", 1)
    return assemble_outputs(lambda: _round_robin(paths, block), out_dir, meta.get("categories", []), config, info)


