"""Assemble a scored pool from its result lines: the one ranking, in memory or on disk.

Both ways read the lines twice and make the same records in the same steps:

1. :func:`pool_policy`, over every line: the informativeness values (one float per image) for
   the empty-image policy (:func:`det_al.scoring.informativeness.empty_informativeness`), and
   with ``scoring.image_combination: rank`` the fused fields (one float per image and field)
   to rank them over the pool (:func:`det_al.scoring.informativeness.fuse_ranks`);
2. :func:`finished_records`, line by line: the record with its pool-level informativeness,
   ``novelty`` when the labelled set's embeddings are given (:mod:`det_al.scoring.novelty`),
   ``empty`` and ``certain``;
3. sorted by :func:`det_al.scoring.informativeness.ranking_key` and ranked 1, 2, ...

:func:`assemble` keeps everything in memory (:meth:`det_al.Scores.from_results`).
:func:`assemble_outputs` writes the files of ``det-al score`` in bounded memory: ``passes.jsonl``,
``skipped.json``, the embeddings (an ``.npy`` whose header is written first and rows appended)
and the pseudo-label images and annotations as it goes, and sorts the ranking records in chunks
written to temporary files that a final ``heapq.merge`` joins (an external sort). A chunk holds
each record as its sort key and JSON text (about a third of the record as a dict), so memory
stops growing at ``CHUNK`` images, and grows little until then. Every output is written to a
temporary name and renamed; ``run.json`` (:func:`run_summary`) is the same either way.

The results lines are only read: an error while assembling (a full disk) leaves them intact,
raises an :class:`~det_al.errors.InputError`, and ``det-al score --resume`` assembles again.
Embeddings are written with plain writes, not a memory map, since a full disk under a memory
map kills the process with ``SIGBUS`` instead of raising.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import tempfile
import time
from array import array
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from det_al import __version__
from det_al.config import Config, ScoringConfig, config_to_dict
from det_al.data.files import atomic_open, write_json
from det_al.errors import InputError
from det_al.run.result_line import ResultLine
from det_al.scoring.informativeness import (
    apply_empty_policy,
    empty_informativeness,
    fuse_ranks,
    rank_reference,
    ranking_key,
)
from det_al.scoring.novelty import labelled_spacing, novelty

CHUNK = 50_000
OUTPUTS = ("ranking.jsonl", "pseudo_labels.json", "passes.jsonl", "embeddings.npy", "embeddings_ids.json", "skipped.json", "run.json")
PSEUDO_LABELS_INFO = {"description": "det_al pseudo-labels", "version": __version__}


@dataclass(frozen=True)
class PoolPolicy:
    """What ranking one image needs from the whole pool (:func:`pool_policy`)."""

    n_scored: int
    dim: int  # embedding size (0: no embeddings)
    fill: float  # the informativeness of an empty image
    fused: np.ndarray | None  # [n_scored] the rank-fused informativeness, in line order
    reference: dict | None = None  # what the fused fields were ranked against (run.json's rank_reference)


def _is_empty(record: dict) -> bool:
    return bool(record.get("empty", record.get("n_objects", 0) == 0))


def pool_policy(lines: Iterable[ResultLine], scoring: ScoringConfig, reference: dict | None = None) -> PoolPolicy:
    """The first pass over the lines: one float per scored image (and per fused field).

    The fused fields are ranked among the lines, or against ``reference`` (the ``rank_reference``
    of an earlier run's ``run.json``: :func:`det_al.scoring.informativeness.rank_reference`), which
    then also gives the empty images' value, so that the values compare with that run's. The
    policy keeps the reference it used (the lines' own when none was given) for ``run.json``."""
    values, empty = array("d"), array("b")
    rank_fields = list(scoring.image_weights) if scoring.image_combination == "rank" else []
    columns = {name: array("d") for name in rank_fields}
    n_scored = dim = 0
    for line in lines:
        if not line.scored:
            continue
        n_scored += 1
        empty.append(_is_empty(line.record))
        values.append(float(line.record["informativeness"]))
        for name in rank_fields:
            columns[name].append(float(line.record.get(name, 0.0) or 0.0))
        if line.embedding is not None and not dim:
            dim = len(line.embedding)
    fused = fuse_ranks(columns, scoring.image_weights, scoring.rank_k, reference) if rank_fields else None
    if fused is not None:
        values = array("d", fused.tolist())
    if reference is not None and "empty_informativeness" in reference:
        fill = float(reference["empty_informativeness"])
    else:
        fill = empty_informativeness([v for v, e in zip(values, empty) if not e], scoring)
    if reference is None and rank_fields:
        reference = {**rank_reference(columns), "empty_informativeness": fill}
    return PoolPolicy(n_scored, dim, fill, fused, reference)


def finished_records(
    lines: Iterable[ResultLine], policy: PoolPolicy, scoring: ScoringConfig, labelled: np.ndarray | None = None,
) -> Iterator[tuple[ResultLine, dict | None]]:
    """The second pass: each line with its finished ranking record (``None`` for a skipped line),
    all but ``rank``. ``labelled`` ``[M, D]``: the labelled set's embeddings, for ``novelty``."""
    spacing = labelled_spacing(labelled) if labelled is not None and len(labelled) else 1.0
    n = 0
    for line in lines:
        if not line.scored:
            yield line, None
            continue
        record = {"image_id": line.image_id, "file_name": line.file_name, **line.record}
        record["empty"] = _is_empty(record)
        if policy.fused is not None:
            record["informativeness"] = float(policy.fused[n])
        n += 1
        if labelled is not None:
            row = np.asarray([line.embedding], dtype=np.float64)
            record["novelty"] = round(float(novelty(row, labelled, spacing=spacing)[0]), 6)
        apply_empty_policy(record, policy.fill, scoring)
        yield line, record


def ranking_fields(record: dict) -> list[str]:
    """The numeric fields of a ranking record, what ``top:FIELD`` can rank by."""
    return [k for k, v in record.items() if k not in ("image_id", "rank")
            and isinstance(v, (int, float)) and not isinstance(v, bool)]


def run_summary(counts: dict, policy: PoolPolicy, fields: list[str], config: Config, run_info: dict | None) -> dict:
    """The content of ``run.json``."""
    return {
        "det_al_version": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **counts,
        "empty_informativeness": policy.fill,
        "ranking_fields": fields,
        "config": config_to_dict(config),
        **(run_info or {}),
        **({"rank_reference": policy.reference} if policy.reference is not None else {}),
    }


def rank_records(records: list[dict], scoring: ScoringConfig, seed: int = 0) -> list[dict]:
    """Rank plain records (``image_id``, ``informativeness``, ``empty`` or ``n_objects``, other
    fields kept) as :func:`assemble` ranks result lines: new dicts, most informative first,
    with ``informativeness``, ``empty``, ``certain`` and ``rank``."""
    lines = [ResultLine(r["image_id"], r.get("file_name", ""), record=dict(r)) for r in records]
    policy = pool_policy(lines, scoring)
    return _ranked([record for _, record in finished_records(lines, policy, scoring) if record is not None], seed)


def _ranked(records: list[dict], seed: int) -> list[dict]:
    records.sort(key=lambda r: ranking_key(r, seed))
    for rank, r in enumerate(records, start=1):
        r["rank"] = rank
    return records


@dataclass
class Assembled:
    """A scored pool in memory: what :func:`assemble_outputs` would write."""

    ranking: list[dict]
    pseudo_labels: dict
    passes: list[dict]
    skipped: list[dict]
    embeddings: np.ndarray  # [N, D]
    embedding_ids: list[int]
    run: dict


def assemble(lines: list[ResultLine], categories: list[dict], config: Config, run_info: dict | None = None,
             labelled: np.ndarray | None = None) -> Assembled:
    """The scored pool of in-memory result lines (see the module docstring)."""
    policy = pool_policy(lines, config.scoring, (run_info or {}).get("rank_reference"))
    records, images, annotations, passes, skipped, rows, ids = [], [], [], [], [], [], []
    for line, record in finished_records(lines, policy, config.scoring, labelled):
        if record is None:
            skipped.append(line.skipped_entry())
            continue
        records.append(record)
        images.append(line.image())
        annotations += [{"id": len(annotations) + k + 1, "image_id": line.image_id, **a} for k, a in enumerate(line.annotations)]
        passes.append({"image_id": line.image_id, **line.passes})
        if policy.dim:
            rows.append(line.embedding)
            ids.append(line.image_id)
    pseudo_labels = {"info": dict(PSEUDO_LABELS_INFO), "categories": list(categories), "images": images,
                     "annotations": annotations}
    counts = _counts(records, len(skipped))
    fields = ranking_fields(records[0]) if records else []
    embeddings = np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, 0), np.float32)
    return Assembled(_ranked(records, config.passes.seed), pseudo_labels, passes, skipped, embeddings, ids,
                     run_summary(counts, policy, fields, config, run_info))


def _counts(records: list[dict], n_skipped: int) -> dict:
    return {"n_scored": len(records), "n_skipped": n_skipped, "n_certain": sum(bool(r["certain"]) for r in records),
            "n_empty": sum(bool(r["empty"]) for r in records)}


# --------------------------------------------------------------------------- on disk


def assemble_outputs(
    results: Callable[[], Iterator[ResultLine]],
    out_dir: str | os.PathLike,
    categories: list[dict],
    config: Config,
    run_info: dict | None = None,
    chunk: int = CHUNK,
    labelled_embeddings: np.ndarray | None = None,
) -> dict:
    """Write ``ranking.jsonl``, ``pseudo_labels.json``, ``passes.jsonl``, ``embeddings.npy``,
    ``embeddings_ids.json``, ``skipped.json`` and ``run.json`` into ``out_dir`` (and
    ``labelled_embeddings.npy`` when given).

    Args:
        results: a function returning a fresh iterator over the result lines (called twice).
        chunk: ranking records sorted in memory at a time.
        labelled_embeddings: ``[M, D]`` the labelled set's embeddings (``det-al score
            --labelled``): each ranking record gets its ``novelty`` (:mod:`det_al.scoring.novelty`).

    Returns:
        Counts: ``n_scored``, ``n_skipped``, ``n_certain``, ``n_empty``.

    Raises:
        InputError: the outputs cannot be written (full disk, unwritable folder); outputs of an
            earlier assembly are left as they were, the results lines are not touched.
    """
    try:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        policy = pool_policy(results(), config.scoring, (run_info or {}).get("rank_reference"))
        tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=out))
        try:
            counts, fields = _write_outputs(results(), policy, out, tmp, categories, config, chunk, labelled_embeddings)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if labelled_embeddings is not None:  # beside the ranking, for det-al select --strategy diverse
            with atomic_open(out / "labelled_embeddings.npy", "wb") as f:
                np.save(f, np.asarray(labelled_embeddings))
        write_json(out / "run.json", run_summary(counts, policy, fields, config, run_info), indent=1)
        return counts
    except OSError as e:
        raise InputError(
            f"cannot write the outputs ({e.strerror or e}); the per-image results are kept: "
            "fix the problem and run again with --resume to assemble them", out_dir,
        ) from e


def _write_npy_header(f, rows: int, dim: int) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, dim)}
    np.lib.format.write_array_header_1_0(f, header)


class _Parts:
    """The temporary files of one assembly: sorted ranking runs, pseudo-label images and
    annotations, embeddings and their ids."""

    def __init__(self, tmp: Path, policy: PoolPolicy, chunk: int, seed: int):
        self.tmp, self.dim, self.chunk, self.seed = tmp, policy.dim, chunk, seed
        self.runs: list[Path] = []
        self.pending: list[tuple[tuple, str]] = []
        self.n_annotations = 0
        self.embeddings = open(tmp / "embeddings.npy", "wb")
        _write_npy_header(self.embeddings, policy.n_scored if policy.dim else 0, policy.dim)
        self.images = open(tmp / "images.jsonl", "w", encoding="utf-8")
        self.annotations = open(tmp / "annotations.jsonl", "w", encoding="utf-8")
        self.ids = open(tmp / "ids.jsonl", "w", encoding="utf-8")

    def add(self, line: ResultLine, record: dict) -> None:
        self.pending.append((ranking_key(record, self.seed), json.dumps(record) + "\n"))
        if len(self.pending) >= self.chunk:
            self.flush_run()
        self.images.write(json.dumps(line.image()) + "\n")
        for ann in line.annotations:
            self.n_annotations += 1
            self.annotations.write(json.dumps({"id": self.n_annotations, "image_id": line.image_id, **ann}) + "\n")
        if self.dim:
            self.embeddings.write(np.asarray(line.embedding, dtype="<f4").reshape(self.dim).tobytes())
            self.ids.write(f"{line.image_id}\n")

    def flush_run(self) -> None:
        if self.pending:
            self.pending.sort(key=itemgetter(0))
            path = self.tmp / f"run-{len(self.runs):05d}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(text for _, text in self.pending)
            self.runs.append(path)
            self.pending = []

    def close(self) -> None:
        self.flush_run()
        for f in (self.images, self.annotations, self.ids):
            f.close()
        self.embeddings.flush()
        os.fsync(self.embeddings.fileno())
        self.embeddings.close()

    def sorted_records(self) -> Iterator[str]:
        def read(path: Path) -> Iterator[tuple[tuple, str]]:
            with open(path, encoding="utf-8") as f:
                for text in f:
                    yield ranking_key(json.loads(text), self.seed), text

        return (text for _, text in heapq.merge(*(read(p) for p in self.runs), key=itemgetter(0)))


def _write_outputs(lines: Iterator[ResultLine], policy: PoolPolicy, out: Path, tmp: Path, categories: list[dict],
                   config: Config, chunk: int, labelled: np.ndarray | None) -> tuple[dict, list[str]]:
    """The second pass of :func:`assemble_outputs`; the counts and the ranking fields."""
    parts = _Parts(tmp, policy, chunk, config.passes.seed)
    counts = {"n_scored": policy.n_scored, "n_skipped": 0, "n_certain": 0, "n_empty": 0}
    fields: list[str] = []
    try:
        with atomic_open(out / "passes.jsonl") as passes_f, atomic_open(out / "skipped.json") as skipped_f:
            skipped_f.write("[")
            for line, record in finished_records(lines, policy, config.scoring, labelled):
                if record is None:
                    skipped_f.write(("," if counts["n_skipped"] else "") + "\n " + json.dumps(line.skipped_entry()))
                    counts["n_skipped"] += 1
                    continue
                fields = fields or ranking_fields(record)
                counts["n_empty"] += record["empty"]
                counts["n_certain"] += record["certain"]
                parts.add(line, record)
                passes_f.write(json.dumps({"image_id": line.image_id, **line.passes}) + "\n")
            skipped_f.write("\n]\n")
    finally:
        parts.close()
    with atomic_open(out / "ranking.jsonl") as f:
        for rank, text in enumerate(parts.sorted_records(), start=1):
            f.write(json.dumps({**json.loads(text), "rank": rank}) + "\n")
    _write_pseudo_labels(out / "pseudo_labels.json", categories, tmp)
    os.replace(tmp / "embeddings.npy", out / "embeddings.npy")
    with atomic_open(out / "embeddings_ids.json") as f, open(tmp / "ids.jsonl", encoding="utf-8") as src:
        f.write("[" + ", ".join(x.strip() for x in src) + "]\n")
    return counts, fields


def _write_pseudo_labels(path: Path, categories: list[dict], tmp: Path) -> None:
    with atomic_open(path) as f:
        f.write('{"info": ' + json.dumps(PSEUDO_LABELS_INFO))
        f.write(',\n"categories": ' + json.dumps(categories))
        for name in ("images", "annotations"):
            f.write(f',\n"{name}": [')
            with open(tmp / f"{name}.jsonl", encoding="utf-8") as src:
                for i, line in enumerate(src):
                    f.write(("," if i else "") + "\n" + line.rstrip("\n"))
            f.write("\n]")
        f.write("}\n")
