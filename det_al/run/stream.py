"""The append-only per-image results file of a scoring run, and its resume key.

A scoring run writes one JSON line per pool image to ``results.jsonl`` as it goes: each batch's
lines are handed to the kernel with unbuffered ``write`` calls as soon as the batch is scored,
so a process killed at any instant (SIGKILL included) loses at most the batch in flight (what
was written survives the process; a line cut by the kill is removed on resume). ``fsync``, which
only matters if the machine itself goes down (power cut, kernel crash), runs at most every
:data:`SYNC_SECONDS` and never takes more than 1% of the run: a machine crash loses at most the
lines written since the last one, and always before ``done.json`` is written. ``key.json``
beside it records what the results were computed from (hashes of the checkpoint, of the config
and of the pool's image list, and the shard); ``--resume`` continues only when the key matches,
and refuses a stale or foreign file with a clear message. Without ``--resume``, a folder that
already holds results is refused too, unless ``--overwrite`` says to start over: a forgotten
flag (or a job re-queued by its scheduler) never throws hours of scoring away.

A line is a :class:`~det_al.run.result_line.ResultLine`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from array import array
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from det_al import __version__
from det_al.errors import InputError
from det_al.data.files import read_json, remove_earlier_outputs, write_json
from det_al.run.result_line import ResultLine

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
KEY = "key.json"
DONE = "done.json"
SHARDS = "shards"  # OUT/shards/rank-R-of-W/: a torchrun run's per-rank results (det-al score)
IGNORED = ("det_al_version", "meta")  # key.json fields that do not decide whether results match
#: Seconds between two fsyncs of ``results.jsonl`` at least (stretched to 100 times the last
#: fsync's duration on a slow disk, so that syncing takes at most 1% of the run).
SYNC_SECONDS = 2.0


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_sha256(obj: Any) -> str:
    """Hash of plain data (sorted-key JSON)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


#: Config keys (section, key) that cannot change a result line: left out of the config hash,
#: so that a run may be resumed with, e.g., more DataLoader workers. ``train.batchnorm`` came
#: after runs had been keyed: leaving it out keeps their keys valid across the upgrade.
RESULT_NEUTRAL = (("passes", "num_workers"), ("train", "batchnorm"))


def run_key(
    checkpoint_sha: str, config: dict, pool_sha: str, num_shards: int, shard_index: int, block: int = 1,
    threads: int | None = None, members: int = 1,
) -> dict:
    """What a results file was computed from; two runs with equal keys give equal results.

    ``block``: images per block dealt to the shards (``passes.batch_size``, see
    :func:`det_al.run.shards.shard_positions`); a merge reads the shards' lines that many at a time.
    It is recorded (``shard_block``) for sharded runs only: one shard is the pool in order.
    ``threads``: the intra-op thread count of the scoring process (``torch.get_num_threads()``).
    CPU kernels sum in an order that depends on it, so MC results differ in their last bits
    between thread counts; a run is resumed only with the count it started with.
    ``members``: the models of an ensemble (:mod:`det_al.run.ensemble`; recorded when more than
    one, ``checkpoint_sha`` is then the hash of their hashes in order).
    """
    config = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for section, key in RESULT_NEUTRAL:
        if isinstance(config.get(section), dict):
            config[section].pop(key, None)
    return {
        "checkpoint_sha256": checkpoint_sha,
        "config_sha256": data_sha256(config),
        "pool_sha256": pool_sha,
        "num_shards": num_shards,
        "shard_index": shard_index,
        **({"shard_block": block} if num_shards > 1 else {}),
        **({"threads": int(threads)} if threads is not None else {}),
        **({"members": int(members)} if members != 1 else {}),
    }


def _describe_mismatch(old: dict, new: dict) -> str:
    names = {
        "checkpoint_sha256": "a different checkpoint (or list of ensemble checkpoints)",
        "members": f"{old.get('members', 1)} ensemble members, this run has {new.get('members', 1)}",
        "config_sha256": "a different config",
        "pool_sha256": "a different pool",
        "num_shards": "a different --num-shards",
        "shard_index": "a different --shard-index",
        "shard_block": "another split of the pool into shards (shards scored by an older det_al version)",
        "threads": f"{old.get('threads')} threads per process, this process has {new.get('threads')} "
                   f"(set OMP_NUM_THREADS={old.get('threads')} to continue it)",
    }
    diffs = [names.get(k, k) for k in {**old, **new} if old.get(k) != new.get(k)]
    return ", ".join(diffs) or "an unknown run"


def encode_lines(lines: list[ResultLine]) -> bytes:
    """Result lines as JSON lines (:meth:`ResultLine.to_json`), ``image_id`` first (see
    :func:`repair_and_read_ids`)."""
    return b"".join(line.to_json() for line in lines)


class ResultsWriter:
    """Appends result lines to ``DIR/results.jsonl``; resumes a matching partial run.

    With ``resume``, a results file whose key matches is continued (its ids in ``done_ids``)
    and any other is refused; without it, an existing results file is refused unless
    ``overwrite``, which removes it. Either way an empty folder starts a new run.

    Usage::

        with ResultsWriter(dir, key, resume=True) as w:
            ...  # score what w.done_ids lacks (score_to_dir re-scores a cut-short batch whole)
            w.write_batch(lines)
            w.mark_done(len(images))
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        key: dict,
        resume: bool = False,
        meta: dict | None = None,
        sync_seconds: float = SYNC_SECONDS,
        overwrite: bool = False,
    ):
        self.dir = Path(directory)
        self.key = dict(key, det_al_version=__version__)
        self.meta = meta or {}
        self.path = self.dir / RESULTS
        self.sync_seconds = sync_seconds
        #: ``[M]`` int64: the image ids of the lines already in the file when it was opened.
        self.done_ids = np.zeros(0, dtype=np.int64)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create output folder: {e.strerror}", self.dir) from e
        key_path = self.dir / KEY
        if resume and self.path.exists():
            if not key_path.exists():
                raise InputError(
                    f"refusing to resume: {self.path.name} has no {KEY}; it is not from a det_al run "
                    "(--overwrite replaces it, or choose another --out)", self.dir,
                )
            old = read_json(key_path)
            old_cmp = {k: v for k, v in old.items() if k not in IGNORED}
            new_cmp = {k: v for k, v in self.key.items() if k not in IGNORED}
            if "threads" not in old_cmp and "threads" in new_cmp:  # keyed before det_al recorded it
                logger.warning("%s does not record the thread count of the partial results: resuming "
                               "with %s threads per process", key_path, new_cmp["threads"])
                new_cmp.pop("threads")
            if old_cmp != new_cmp:
                raise InputError(
                    f"refusing to resume: the partial results were computed with {_describe_mismatch(old_cmp, new_cmp)} "
                    "(run with --overwrite instead of --resume to start over, or choose another --out)", self.dir,
                )
            self.done_ids = repair_and_read_ids(self.path)
            logger.info("resuming: %d images already scored in %s", len(self.done_ids), self.path)
        else:
            if not overwrite:  # hours of scoring are not thrown away by default
                refuse_existing_results(self.dir)
            if remove_earlier_outputs(self.dir / name for name in (RESULTS, DONE)):
                logger.warning("starting over (--overwrite): removed the previous results in %s", self.dir)
            try:
                write_json(key_path, {**self.key, "meta": self.meta}, indent=1)
            except OSError as e:
                raise InputError(f"cannot write {KEY}: {e.strerror}", self.dir) from e
        try:
            # Unbuffered: every byte written is either in the kernel's hands or reported, never
            # held in a buffer that a kill would lose or a later flush append out of turn.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise InputError(f"cannot write results: {e.strerror}", self.path) from e
        #: Result lines in the file: those found on resume plus those written since.
        self.n_results = len(self.done_ids)
        self._size = os.fstat(self._fd).st_size
        self._synced = (self._size, self.n_results)  # (bytes, lines) known to be on disk
        self._next_sync = time.monotonic() + sync_seconds

    def write_batch(self, lines: list[ResultLine]) -> None:
        """Append one batch of result lines; fsync if :attr:`sync_seconds` have passed.

        On an error (disk full, quota, I/O error) the part of the batch already written is cut
        off again, so ``results.jsonl`` holds whole lines only, and an :class:`InputError` says
        to run again with ``--resume``.
        """
        if not lines:
            return
        data = memoryview(encode_lines(lines))
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as e:
            self._cut(self._size)
            raise InputError(
                f"cannot write results ({e.strerror}); the {self.n_results} results written so far "
                "are kept: fix the problem and run again with --resume", self.path,
            ) from e
        self._size += len(data)
        self.n_results += len(lines)
        if time.monotonic() >= self._next_sync:
            self.sync()

    def sync(self) -> None:
        """Make every line written so far durable (fsync).

        On an error, the lines written since the last successful fsync are cut off (the kernel
        may have dropped them) and an :class:`InputError` says to run again with ``--resume``.
        """
        if self._synced[0] == self._size:
            return
        start = time.monotonic()
        try:
            os.fsync(self._fd)
        except OSError as e:
            self._cut(self._synced[0])
            raise InputError(
                f"cannot write results ({e.strerror}); the {self._synced[1]} results written so far "
                "are kept: fix the problem and run again with --resume", self.path,
            ) from e
        end = time.monotonic()
        self._synced = (self._size, self.n_results)
        self._next_sync = end + max(self.sync_seconds, 100 * (end - start))

    def _cut(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
            self._size = size
        except OSError:  # the torn line is cut off on --resume instead
            logger.debug("could not cut the partial batch off %s", self.path, exc_info=True)

    def mark_done(self, n_expected: int) -> None:
        """Sync the results, then record that they are complete (``done.json``)."""
        self.sync()
        try:
            write_json(self.dir / DONE, {"n_results": self.n_results, "n_expected": n_expected})
        except OSError as e:
            raise InputError(f"cannot write {DONE} ({e.strerror}); the results are complete: run again with --resume", self.dir) from e

    def close(self) -> None:
        """Sync what was written (best effort: an error was already reported) and close."""
        if self._fd >= 0:
            if self._synced[0] != self._size:
                try:
                    os.fsync(self._fd)
                except OSError:
                    logger.debug("could not sync %s on close", self.path, exc_info=True)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ID_PREFIX = re.compile(rb'\{"image_id":(-?\d+),')


def _line_id(raw: bytes) -> int:
    """The image id of one complete result line; reads only its start when written by det_al
    (:meth:`ResultLine.to_json`)."""
    m = _ID_PREFIX.match(raw)
    return int(m.group(1)) if m else int(json.loads(raw)["image_id"])


def refuse_existing_results(directory: str | os.PathLike) -> None:
    """Raise an :class:`InputError` if ``directory`` holds results of a scoring run.

    Results are ``results.jsonl`` (a one-process run, a job-array shard) or the rank folders of
    a torchrun run in ``shards/``. ``det-al score`` calls this before writing anything when
    given neither ``--resume`` nor ``--overwrite``; the message says which of the two to add.
    """
    directory = Path(directory)
    path = directory / RESULTS
    if path.exists():
        if not (directory / KEY).exists():
            raise InputError(f"holds a {RESULTS} that is not from a det_al run (no {KEY}): --overwrite replaces it", directory)
        state = "a finished run" if (directory / DONE).exists() else "an unfinished run"
        raise InputError(
            f"holds {state} ({_count_lines(path)} images in {RESULTS}): add --resume to continue it, "
            "or --overwrite to start over", directory,
        )
    ranks = sorted(p.parent.name for p in (directory / SHARDS).glob(f"*/{RESULTS}"))
    if ranks:
        raise InputError(
            f"holds a torchrun run ({', '.join(ranks)} in {SHARDS}/): add --resume (torchrun with as many "
            "processes) to continue it, or --overwrite to start over", directory,
        )


def _count_lines(path: Path) -> int:
    """Complete lines of ``path`` (newlines counted in 1 MiB chunks: ~0.1 s per 100 MB)."""
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def repair_and_read_ids(path: Path) -> np.ndarray:
    """``[M]`` int64 image ids of the complete lines of ``path``, in file order; a torn last line
    (a kill mid-write) is cut off.

    Lines are appended whole, batch by batch, so only the last line can be incomplete (it lacks
    its newline). A complete line that cannot be read means the file was damaged some other
    way: an :class:`InputError`, rather than cutting off the lines after it.
    """
    done = array("q")
    good_end = 0
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(f, start=1):
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break
            try:
                done.append(_line_id(raw))
            except (ValueError, KeyError, TypeError, OverflowError) as e:
                raise InputError(
                    f"line {number} is damaged ({type(e).__name__}); cannot resume: "
                    "run with --overwrite instead of --resume to start over", path,
                ) from e
            good_end = offset
    if good_end != path.stat().st_size:
        logger.warning("cutting a torn last line off %s", path)
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return np.frombuffer(done, dtype=np.int64) if done else np.zeros(0, dtype=np.int64)


def read_results(paths: Iterable[str | os.PathLike]) -> Iterator[ResultLine]:
    """Every result line of the given results files, in file order (one line in memory at a time)."""
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    yield ResultLine.from_json(line)


def read_key(directory: str | os.PathLike) -> dict:
    path = Path(directory) / KEY
    if not path.exists():
        raise InputError(f"no {KEY}: not a det_al scoring output", directory)
    return read_json(path)


def is_done(directory: str | os.PathLike) -> bool:
    return (Path(directory) / DONE).exists()
