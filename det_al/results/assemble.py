"""Assemble the final outputs of a scoring run from its per-image results, in bounded memory.

Reads the results lines (:mod:`det_al.results.stream`) twice, never holding them all: the first pass
gathers the informativeness values (one float per image) for the empty-image policy, and with
``scoring.image_combination: rank`` the fused fields (one float per image and field) to rank
them over the pool (:func:`det_al.scoring.informativeness.fuse_ranks`); the second adds ``novelty``
when the labelled set's embeddings are given, and writes ``passes.jsonl``, ``skipped.json``, the embeddings (an ``.npy`` whose header
is written first and rows appended) and the pseudo-label images and annotations as it goes, and
sorts the ranking records in chunks written to temporary files that a final ``heapq.merge``
joins (an external sort). A chunk holds each record as its sort key and JSON text (about a
third of the record as a dict), so memory stops growing at ``CHUNK`` images, and grows little
until then. Every output is written to a temporary name and renamed.

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
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from det_al import __version__
from det_al.config import Config, config_to_dict
from det_al.errors import InputError
from det_al.data.files import atomic_open, write_json
from det_al.scoring.informativeness import apply_empty_policy, empty_informativeness, fuse_ranks, ranking_key

CHUNK = 50_000
OUTPUTS = ("ranking.jsonl", "pseudo_labels.json", "passes.jsonl", "embeddings.npy", "embeddings_ids.json", "skipped.json", "run.json")


def _sorted_run(records: list[tuple[tuple, str]], directory: Path, index: int) -> Path:
    """Write ``(ranking key, JSON line)`` records, sorted by the key, to a run file."""
    records.sort(key=itemgetter(0))
    path = directory / f"run-{index:05d}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(text for _, text in records)
    return path


def _read_run(path: Path, seed: int) -> Iterator[tuple[tuple, str]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield (ranking_key(json.loads(line), seed), line)


def assemble_outputs(
    results: Callable[[], Iterator[dict]],
    out_dir: str | os.PathLike,
    categories: list[dict],
    config: Config,
    run_info: dict | None = None,
    chunk: int = CHUNK,
    labelled_embeddings: np.ndarray | None = None,
) -> dict:
    """Write ``ranking.jsonl``, ``pseudo_labels.json``, ``passes.jsonl``, ``embeddings.npy``,
    ``embeddings_ids.json``, ``skipped.json`` and ``run.json`` into ``out_dir``.

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
        return _assemble(results, Path(out_dir), categories, config, run_info, chunk, labelled_embeddings)
    except OSError as e:
        raise InputError(
            f"cannot write the outputs ({e.strerror or e}); the per-image results are kept: "
            "fix the problem and run again with --resume to assemble them", out_dir,
        ) from e


def _write_npy_header(f, rows: int, dim: int) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, dim)}
    np.lib.format.write_array_header_1_0(f, header)


def _assemble(
    results: Callable[[], Iterator[dict]],
    out_dir: Path,
    categories: list[dict],
    config: Config,
    run_info: dict | None,
    chunk: int,
    labelled: np.ndarray | None = None,
) -> dict:
    from det_al.scoring.novelty import labelled_spacing, novelty

    spacing = labelled_spacing(labelled) if labelled is not None and len(labelled) else 1.0
    scoring, seed = config.scoring, config.passes.seed
    out_dir.mkdir(parents=True, exist_ok=True)

    values, empty = array("d"), array("b")
    rank_fields = list(scoring.image_weights) if scoring.image_combination == "rank" else []
    columns = {name: array("d") for name in rank_fields}  # one float per image and fused field
    n_scored = dim = 0
    for line in results():
        if "record" in line:
            n_scored += 1
            empty.append(bool(line["record"]["empty"]))
            values.append(float(line["record"]["informativeness"]))
            for name in rank_fields:
                columns[name].append(float(line["record"].get(name, 0.0) or 0.0))
            if line.get("embedding") is not None and not dim:
                dim = len(line["embedding"])
    fused = None  # with image_combination: rank, the informativeness of each scored line in order
    if rank_fields:
        fused = fuse_ranks(columns, scoring.image_weights, scoring.rank_k)
        values = array("d", fused.tolist())
    fill = empty_informativeness([v for v, e in zip(values, empty) if not e], scoring)
    del values, empty, columns

    tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=out_dir))
    counts = {"n_scored": n_scored, "n_skipped": 0, "n_certain": 0, "n_empty": 0}
    n_written = 0
    fields: list[str] = []
    try:
        runs: list[Path] = []
        pending: list[tuple[tuple, str]] = []
        emb_f = open(tmp / "embeddings.npy", "wb")
        _write_npy_header(emb_f, n_scored if dim else 0, dim)
        ann_id = 0
        images_f = open(tmp / "images.jsonl", "w", encoding="utf-8")
        anns_f = open(tmp / "annotations.jsonl", "w", encoding="utf-8")
        ids_f = open(tmp / "ids.jsonl", "w", encoding="utf-8")
        with atomic_open(out_dir / "passes.jsonl") as passes_f, atomic_open(out_dir / "skipped.json") as skipped_f:
            skipped_f.write("[")
            for line in results():
                if "skipped" in line:
                    sep = "," if counts["n_skipped"] else ""
                    skipped_f.write(sep + "\n " + json.dumps({k: line[k] for k in ("image_id", "file_name")} | {"reason": line["skipped"]}))
                    counts["n_skipped"] += 1
                    continue
                record = {"image_id": line["image_id"], "file_name": line["file_name"], **line["record"]}
                if fused is not None:
                    record["informativeness"] = float(fused[n_written])
                n_written += 1
                if labelled is not None:
                    row = np.asarray([line["embedding"]], dtype=np.float64)
                    record["novelty"] = round(float(novelty(row, labelled, spacing=spacing)[0]), 6)
                apply_empty_policy(record, fill, scoring)
                if not fields:  # what top:FIELD can rank by (the strategies' rankable fields)
                    fields = [k for k, v in record.items() if k not in ("image_id", "rank")
                              and isinstance(v, (int, float)) and not isinstance(v, bool)]
                counts["n_empty"] += record["empty"]
                counts["n_certain"] += record["certain"]
                pending.append((ranking_key(record, seed), json.dumps(record) + "\n"))
                if len(pending) >= chunk:
                    runs.append(_sorted_run(pending, tmp, len(runs)))
                    pending = []
                image = {"id": line["image_id"], "file_name": line["file_name"]}
                image.update({k: line[k] for k in ("width", "height") if k in line})
                images_f.write(json.dumps(image) + "\n")
                for ann in line.get("annotations", []):
                    ann_id += 1
                    anns_f.write(json.dumps({"id": ann_id, "image_id": line["image_id"], **ann}) + "\n")
                passes_f.write(json.dumps({"image_id": line["image_id"], **line.get("passes", {})}) + "\n")
                if dim:
                    emb_f.write(np.asarray(line["embedding"], dtype="<f4").reshape(dim).tobytes())
                    ids_f.write(f"{line['image_id']}\n")
            skipped_f.write("\n]\n")
        if pending:
            runs.append(_sorted_run(pending, tmp, len(runs)))
        for f in (images_f, anns_f, ids_f):
            f.close()
        emb_f.flush()
        os.fsync(emb_f.fileno())
        emb_f.close()

        with atomic_open(out_dir / "ranking.jsonl") as f:
            merged = heapq.merge(*(_read_run(p, seed) for p in runs), key=itemgetter(0))
            for rank, (_, text) in enumerate(merged, start=1):
                r = json.loads(text)
                r["rank"] = rank
                f.write(json.dumps(r) + "\n")

        with atomic_open(out_dir / "pseudo_labels.json") as f:
            f.write('{"info": ' + json.dumps({"description": "det_al pseudo-labels", "version": __version__}))
            f.write(',\n"categories": ' + json.dumps(categories))
            for name, path in (("images", tmp / "images.jsonl"), ("annotations", tmp / "annotations.jsonl")):
                f.write(f',\n"{name}": [')
                with open(path, encoding="utf-8") as src:
                    for i, line in enumerate(src):
                        f.write(("," if i else "") + "\n" + line.rstrip("\n"))
                f.write("\n]")
            f.write("}\n")

        os.replace(tmp / "embeddings.npy", out_dir / "embeddings.npy")
        with atomic_open(out_dir / "embeddings_ids.json") as f:
            with open(tmp / "ids.jsonl", encoding="utf-8") as src:
                f.write("[" + ", ".join(x.strip() for x in src) + "]\n")
        write_json(
            out_dir / "run.json",
            {
                "det_al_version": __version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **counts,
                "empty_informativeness": fill,
                "ranking_fields": fields,
                "config": config_to_dict(config),
                **(run_info or {}),
            },
            indent=1,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts
