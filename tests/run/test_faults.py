"""Faults at scale: bad images are skipped with a reason, a full disk or an unwritable output
folder gives a clear error and keeps the partial results for ``--resume``."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import det_al.run.score_lines
from det_al.cli import main
from det_al.errors import InputError
from det_al.run.result_line import ResultLine
from det_al.run.stream import RESULTS, ResultsWriter, repair_and_read_ids, run_key

OUTPUTS = ("ranking.jsonl", "pseudo_labels.json", "passes.jsonl", "skipped.json", "embeddings_ids.json", "embeddings.npy")


def _score(pool: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(["score", "-k", str(ckpt), "-p", str(pool), "-o", str(out),
                 "--passes", "2", "--seed", "3", "--no-progress", *extra])


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` pixels (the pixel data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def reference(tiny_pool, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert _score(tiny_pool["pool"], tiny_checkpoint, out) == 0
    return out


def _ranked_ids(out: Path) -> list[int]:
    return [json.loads(line)["image_id"] for line in (out / "ranking.jsonl").read_text().splitlines()]


def _same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_bad_images_are_skipped_with_a_reason_and_nothing_is_dropped(tiny_pool, tiny_checkpoint, tmp_path):
    root = tmp_path / "pool"
    shutil.copytree(tiny_pool["root"], root)
    good = tiny_pool["coco"]["images"][:2]
    png = (root / good[0]["file_name"]).read_bytes()
    bad = {
        "missing.png": None,
        "zero.png": b"",
        "truncated.png": png[: len(png) // 2],
        "garbage.png": b"this is not an image\n" * 10,
        "huge_declared.png": _png_declaring(100_000, 100_000),
    }
    images = [dict(im) for im in good]
    for i, (name, data) in enumerate(bad.items(), start=100):
        if data is not None:
            (root / name).write_bytes(data)
        images.append({"id": i, "file_name": name, "width": 96, "height": 96})
    (root / "bad_pool.json").write_text(json.dumps({"images": images, "categories": tiny_pool["coco"]["categories"]}))

    out = tmp_path / "out"
    assert _score(root / "bad_pool.json", tiny_checkpoint, out) == 0
    skipped = {s["file_name"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == set(bad)
    assert skipped["missing.png"] == "file not found"
    assert skipped["zero.png"] == "empty file"
    assert "truncated" in skipped["truncated.png"] or "corrupt" in skipped["truncated.png"]
    assert skipped["garbage.png"] == "not an image or unsupported format"
    assert "too large" in skipped["huge_declared.png"]
    ranked = _ranked_ids(out)
    assert sorted(ranked) == [im["id"] for im in good]
    # every pool image is either ranked or skipped, never both
    skipped_ids = {s["image_id"] for s in json.loads((out / "skipped.json").read_text())}
    assert skipped_ids.isdisjoint(ranked) and skipped_ids | set(ranked) == {im["id"] for im in images}
    assert json.loads((out / "run.json").read_text())["n_skipped"] == len(bad)


def test_an_image_with_non_finite_scores_is_skipped_not_ranked(tiny_pool, tiny_checkpoint, tmp_path, monkeypatch):
    # A model can give NaN scores (a diverged checkpoint); such an image cannot be ranked.
    real = det_al.run.score_lines.score_image

    def nan_for_image_2(image_passes, *args, **kwargs):
        out = real(image_passes, *args, **kwargs)
        if calls.append(1) or len(calls) == 2:
            out.record["informativeness"] = float("nan")
        return out

    calls: list[int] = []
    monkeypatch.setattr(det_al.run.score_lines, "score_image", nan_for_image_2)
    out = tmp_path / "out"
    assert _score(tiny_pool["pool"], tiny_checkpoint, out) == 0
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(s["image_id"], s["reason"]) for s in skipped] == [
        (2, "model gave non-finite scores (NaN or infinity): check the checkpoint")
    ]
    assert sorted(_ranked_ids(out)) == [1, 3, 4, 5, 6]


@pytest.mark.skipif(
    not hasattr(det_al.run.score_lines, "_run_or_skip"),
    reason="needs the per-image fallback of det_al/run/score_lines.py iter_results (issue 6 report diff)",
)
def test_images_of_extreme_aspect_are_skipped_not_fatal(tiny_pool, tiny_checkpoint, tmp_path):
    # 1 x 20000 pixels: resizing to the model's 96-px size gives a 0-px side, which makes the
    # model's transform raise; the image is skipped with the reason, the others are scored.
    root = tmp_path / "pool"
    root.mkdir()
    Image.fromarray(np.full((1, 20000, 3), 128, np.uint8)).save(root / "line.png")
    Image.fromarray(np.full((20000, 1, 3), 128, np.uint8)).save(root / "column.png")
    good = tiny_pool["coco"]["images"][0]
    (root / good["file_name"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_pool["root"] / good["file_name"], root / good["file_name"])
    images = [
        {"id": 1, "file_name": "line.png", "width": 20000, "height": 1},
        dict(good, id=2),
        {"id": 3, "file_name": "column.png", "width": 1, "height": 20000},
    ]
    (root / "pool.json").write_text(json.dumps({"images": images, "categories": tiny_pool["coco"]["categories"]}))
    out = tmp_path / "out"
    assert _score(root / "pool.json", tiny_checkpoint, out, "--batch-size", "3") == 0
    skipped = {s["image_id"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert sorted(skipped) == [1, 3]
    assert all("model failed" in r for r in skipped.values())
    assert _ranked_ids(out) == [2]


def test_duplicate_file_names_are_both_scored_with_a_warning(tiny_pool, tiny_checkpoint, tmp_path, caplog):
    images = [dict(im) for im in tiny_pool["coco"]["images"][:2]]
    images.append(dict(images[0], id=50))  # same file as image 1 under another id
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"images": images, "categories": tiny_pool["coco"]["categories"]}))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert _score(pool, tiny_checkpoint, out, "--image-root", str(tiny_pool["root"])) == 0
    assert any("file name" in r.getMessage() for r in caplog.records)
    ranking = {r["image_id"]: r for r in map(json.loads, (out / "ranking.jsonl").read_text().splitlines())}
    assert sorted(ranking) == [images[0]["id"], images[1]["id"], 50]
    # same pixels, but the dropout seed is per image id: both are scored in their own right
    assert ranking[50]["file_name"] == ranking[images[0]["id"]]["file_name"]


def test_output_path_that_cannot_be_a_folder_is_a_clear_error(tiny_pool, tiny_checkpoint, tmp_path, capsys):
    # Tests may run as root, where chmod does not stop writes: put the output under a file.
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert _score(tiny_pool["pool"], tiny_checkpoint, blocker / "out") == 2
    err = capsys.readouterr().err
    assert "a_file" in err and "Traceback" not in err
    assert _score(tiny_pool["pool"], tiny_checkpoint, blocker) == 2


def test_results_writer_refuses_an_unwritable_folder(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="cannot create output folder"):
        ResultsWriter(tmp_path / "f" / "out", run_key("a", {}, "b", 1, 0))


def _fail_after(n_ok: int, monkeypatch) -> list[int]:
    """Make results writes fail with ENOSPC after ``n_ok`` batches, after writing half a batch."""
    real_write = os.write
    calls = [0]

    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == RESULTS:
            calls[0] += 1
            if calls[0] > n_ok:
                real_write(fd, bytes(data[: len(data) // 2]))  # a torn line reaches the disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return calls


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell the results file apart")
def test_disk_full_while_scoring_keeps_results_for_resume(reference, tiny_pool, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _fail_after(2, monkeypatch)
    assert _score(tiny_pool["pool"], tiny_checkpoint, out) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    # the half-written batch was cut off again: whole lines only, the first two images
    lines = (out / RESULTS).read_text().splitlines(keepends=True)
    assert lines == (reference / RESULTS).read_text().splitlines(keepends=True)[:2]
    assert not (out / "ranking.jsonl").exists()
    monkeypatch.undo()
    assert _score(tiny_pool["pool"], tiny_checkpoint, out, "--resume") == 0
    _same_outputs(reference, out)


def test_disk_full_while_assembling_keeps_results_for_resume(reference, tiny_pool, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import det_al.run.assemble

    real_flush_run = det_al.run.assemble._Parts.flush_run
    out = tmp_path / "out"
    out.mkdir()
    for name in (RESULTS, "key.json", "done.json"):  # a run that scored every image
        shutil.copy(reference / name, out / name)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(det_al.run.assemble._Parts, "flush_run", full)
    monkeypatch.setattr(det_al.run.score_lines, "run_passes", full)
    assert _score(tiny_pool["pool"], tiny_checkpoint, out, "--resume") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err
    assert (out / RESULTS).read_bytes() == (reference / RESULTS).read_bytes()
    assert not (out / "ranking.jsonl").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    monkeypatch.setattr(det_al.run.assemble._Parts, "flush_run", real_flush_run)
    # resuming a finished run scores nothing (run_passes still fails) and only assembles
    assert _score(tiny_pool["pool"], tiny_checkpoint, out, "--resume") == 0
    _same_outputs(reference, out)


def test_a_failed_write_never_leaves_a_torn_line(tmp_path, monkeypatch):
    writer = ResultsWriter(tmp_path, run_key("a", {}, "b", 1, 0))
    writer.write_batch([ResultLine(1, "a", skipped="x"), ResultLine(2, "b", skipped="x")])
    _fail_after(0, monkeypatch)
    with pytest.raises(InputError, match="2 results written so far are kept"):
        writer.write_batch([ResultLine(3, "c", record={"x": 1})])
    monkeypatch.undo()
    writer.close()
    assert (tmp_path / RESULTS).read_text() == '{"image_id":1,"file_name":"a","skipped":"x"}\n{"image_id":2,"file_name":"b","skipped":"x"}\n'
    assert repair_and_read_ids(tmp_path / RESULTS).tolist() == [1, 2]
