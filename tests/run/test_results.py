"""Streaming results: resume after a kill, stale keys refused, shards merged = single run."""

from __future__ import annotations

import errno
import math
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from det_al.cli import main
from det_al.errors import InputError
from det_al.run.result_line import ResultLine
from det_al.run.stream import RESULTS, ResultsWriter, repair_and_read_ids, run_key


def skipped_line(image_id: int) -> ResultLine:
    return ResultLine(image_id, f"{image_id}.png", skipped="unreadable")

OUTPUTS = ("ranking.jsonl", "pseudo_labels.json", "passes.jsonl", "skipped.json", "embeddings_ids.json")


def _score(tiny_pool, ckpt, out, *extra) -> int:
    return main(["score", "-k", str(ckpt), "-p", str(tiny_pool["pool"]), "-o", str(out),
                 "--passes", "2", "--seed", "3", "--no-progress", *extra])


@pytest.fixture(scope="module")
def reference(tiny_pool, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert _score(tiny_pool, tiny_checkpoint, out) == 0
    return out


def _same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_text() == (b / name).read_text(), name


def test_resume_after_a_torn_write_gives_the_same_outputs(reference, tiny_pool, tiny_checkpoint, tmp_path):
    # A run killed after three images, in the middle of writing the fourth line.
    lines = (reference / RESULTS).read_text().splitlines(keepends=True)
    assert len(lines) == 6
    out = tmp_path / "out"
    out.mkdir()
    (out / "key.json").write_text((reference / "key.json").read_text())
    (out / RESULTS).write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    assert _score(tiny_pool, tiny_checkpoint, out, "--resume") == 0
    assert (out / RESULTS).read_text() == "".join(lines)
    _same_outputs(reference, out)


def test_resume_refuses_results_of_another_run(reference, tiny_pool, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "key.json").write_text((reference / "key.json").read_text())
    (out / RESULTS).write_text((reference / RESULTS).read_text().splitlines(keepends=True)[0])
    with pytest.raises(InputError, match="different config"):
        main_args = ["score", "-k", str(tiny_checkpoint), "-p", str(tiny_pool["pool"]), "-o", str(out),
                     "--passes", "3", "--seed", "3", "--no-progress", "--resume"]
        from det_al.cli import score
        import argparse
        p = argparse.ArgumentParser()
        score.add_arguments(p)
        score.run(p.parse_args(main_args[1:]))


def test_existing_results_are_kept_unless_overwrite(reference, tiny_pool, tiny_checkpoint, tmp_path, capsys):
    # an unfinished run (three of six images) and a command that forgot --resume
    lines = (reference / RESULTS).read_text().splitlines(keepends=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "key.json").write_text((reference / "key.json").read_text())
    (out / RESULTS).write_text("".join(lines[:3]))
    capsys.readouterr()
    assert _score(tiny_pool, tiny_checkpoint, out) == 2
    assert capsys.readouterr().err == (
        f"det-al score: error: {out}: holds an unfinished run (3 images in results.jsonl): add --resume to "
        "continue it, or --overwrite to start over\n"
    )
    assert (out / RESULTS).read_text() == "".join(lines[:3])  # untouched
    assert _score(tiny_pool, tiny_checkpoint, out, "--resume", "--overwrite") == 2
    assert "--resume and --overwrite exclude each other" in capsys.readouterr().err
    # the finished run is refused the same way; --overwrite starts over and gives the same outputs
    assert _score(tiny_pool, tiny_checkpoint, out, "--resume") == 0
    assert _score(tiny_pool, tiny_checkpoint, out) == 2
    assert "holds a finished run (6 images in results.jsonl)" in capsys.readouterr().err
    (out / "ranking.jsonl").unlink()
    assert _score(tiny_pool, tiny_checkpoint, out, "--overwrite") == 0
    _same_outputs(reference, out)
    # --resume on an empty folder starts a new run (a job script can always pass it)
    assert _score(tiny_pool, tiny_checkpoint, tmp_path / "fresh", "--resume") == 0
    _same_outputs(reference, tmp_path / "fresh")


def test_existing_results_are_refused_before_anything_is_written(tiny_pool, tiny_checkpoint, tmp_path, capsys):
    # a torchrun run's shards in --out: a one-process run must not put its outputs beside them
    out = tmp_path / "out"
    (out / "shards" / "rank-0-of-2").mkdir(parents=True)
    (out / "shards" / "rank-0-of-2" / RESULTS).write_text('{"image_id": 1}\n')
    folder_pool = tiny_pool["root"] / "images" if (tiny_pool["root"] / "images").is_dir() else tiny_pool["root"]
    capsys.readouterr()
    assert main(["score", "-k", str(tiny_checkpoint), "-p", str(folder_pool), "-o", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"det-al score: error: {out}: holds a torchrun run (rank-0-of-2 in shards/): add --resume (torchrun "
        "with as many processes) to continue it, or --overwrite to start over\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["shards"]  # no pool.json written for the folder pool
    assert _score(tiny_pool, tiny_checkpoint, out, "--overwrite") == 0
    assert not (out / "shards").exists() and (out / "ranking.jsonl").exists()
    # a results file of unknown origin: --resume refuses it, the plain run names --overwrite
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / RESULTS).write_text('{"image_id": 1}\n')
    assert _score(tiny_pool, tiny_checkpoint, tmp_path / "foreign") == 2
    assert "not from a det_al run (no key.json): --overwrite replaces it" in capsys.readouterr().err


def test_results_without_key_are_refused(tmp_path):
    (tmp_path / RESULTS).write_text('{"image_id": 1}\n')
    with pytest.raises(InputError, match="not from a det_al run"):
        ResultsWriter(tmp_path, run_key("a", {}, "b", 1, 0), resume=True)


def test_torn_last_line_is_cut(tmp_path):
    path = tmp_path / RESULTS
    path.write_text('{"image_id": 1}\n{"image_id": 2}\n{"image_id": 3, "rec')
    assert repair_and_read_ids(path).tolist() == [1, 2]
    assert path.read_text() == '{"image_id": 1}\n{"image_id": 2}\n'


def test_sharded_runs_merge_into_the_single_run(reference, tiny_pool, tiny_checkpoint, tmp_path):
    dirs = []
    for i in range(3):
        d = tmp_path / f"shard{i}"
        assert _score(tiny_pool, tiny_checkpoint, d, "--num-shards", "3", "--shard-index", str(i)) == 0
        assert not (d / "ranking.jsonl").exists()
        dirs.append(str(d))
    merged = tmp_path / "merged"
    # incomplete set of shards is refused
    assert main(["merge-shards", *dirs[:2], "--out", str(merged)]) == 2
    assert main(["merge-shards", *reversed(dirs), "--out", str(merged)]) == 0
    _same_outputs(reference, merged)
    # the merged scores remember the pool's image root, as a single run's do
    assert json.loads((merged / "run.json").read_text())["image_root"] == str(tiny_pool["root"])


def test_sigkill_then_resume(reference, tiny_pool, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "det_al", "score", "-k", str(tiny_checkpoint), "-p", str(tiny_pool["pool"]),
           "-o", str(out), "--passes", "2", "--seed", "3", "--no-progress"]
    # the reference's thread count (it was scored in this process): like with like
    import torch

    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / RESULTS).exists() and (out / RESULTS).stat().st_size > 0:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert subprocess.run(cmd + ["--resume"], capture_output=True, timeout=300, env=env).returncode == 0
    _same_outputs(reference, out)


def _free_port() -> int:
    """A port nobody listens on now (a fixed one collides with other test runs on the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_torchrun_two_processes_equal_single_run(reference, tiny_pool, tiny_checkpoint, tmp_path):
    # Like with like: each rank runs as many threads as the in-process reference did (MC results
    # differ with the thread count in their last bits, even at one image per batch).
    import torch

    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "det_al", "score", "-k", str(tiny_checkpoint), "-p", str(tiny_pool["pool"]), "-o", str(out),
         "--passes", "2", "--seed", "3", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _same_outputs(reference, out)
    assert json.loads((out / "run.json").read_text())["threads_per_process"] == torch.get_num_threads()


def test_resume_with_another_thread_count_is_refused(reference, tiny_pool, tiny_checkpoint, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    assert json.loads((reference / "key.json").read_text())["threads"] == threads
    assert json.loads((reference / "run.json").read_text())["threads_per_process"] == threads
    out = tmp_path / "out"
    out.mkdir()
    (out / "key.json").write_text((reference / "key.json").read_text())
    (out / RESULTS).write_text((reference / RESULTS).read_text().splitlines(keepends=True)[0])
    capsys.readouterr()
    torch.set_num_threads(threads + 1)
    try:
        assert _score(tiny_pool, tiny_checkpoint, out, "--resume") == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert err == (
        f"det-al score: error: {out}: refusing to resume: the partial results were computed with {threads} "
        f"threads per process, this process has {threads + 1} (set OMP_NUM_THREADS={threads} to continue it) "
        "(run with --overwrite instead of --resume to start over, or choose another --out)\n"
    )
    assert not (out / "ranking.jsonl").exists()


def test_resume_of_a_key_without_thread_count_is_accepted(tmp_path):
    # key.json files written before det_al recorded the thread count still resume
    with ResultsWriter(tmp_path, run_key("c", {}, "p", 1, 0)) as w:
        w.write_batch([skipped_line(4)])
    assert "threads" not in json.loads((tmp_path / "key.json").read_text())
    with ResultsWriter(tmp_path, run_key("c", {}, "p", 1, 0, threads=3), resume=True) as w:
        assert w.done_ids.tolist() == [4]
    with ResultsWriter(tmp_path / "b", run_key("c", {}, "p", 1, 0, threads=3)) as w:
        w.write_batch([skipped_line(4)])
    with pytest.raises(InputError, match="with 3 threads per process, this process has 2"):
        ResultsWriter(tmp_path / "b", run_key("c", {}, "p", 1, 0, threads=2), resume=True)


def test_damaged_middle_line_is_refused_not_cut(tmp_path):
    path = tmp_path / RESULTS
    text = '{"image_id":1,"a":1}\nnot json\n{"image_id":3,"a":1}\n'
    path.write_text(text)
    with pytest.raises(InputError, match="line 2 is damaged"):
        repair_and_read_ids(path)
    assert path.read_text() == text  # nothing cut off


def test_key_ignores_settings_that_cannot_change_results():
    config = {"passes": {"num_workers": 0, "seed": 1}, "model": {"name": "m"}}
    more_workers = {"passes": {"num_workers": 8, "seed": 1}, "model": {"name": "m"}}
    other_seed = {"passes": {"num_workers": 0, "seed": 2}, "model": {"name": "m"}}
    key = run_key("c", config, "p", 1, 0)
    assert run_key("c", more_workers, "p", 1, 0) == key
    assert run_key("c", other_seed, "p", 1, 0) != key
    assert config["passes"]["num_workers"] == 0  # the caller's dict is left alone
    # a config of before train.batchnorm existed keys the same as one with any value of it
    from det_al.config import Config, config_to_dict

    now = config_to_dict(Config())
    before = {**now, "train": {k: v for k, v in now["train"].items() if k != "batchnorm"}}
    frozen = {**now, "train": {**now["train"], "batchnorm": "frozen"}}
    assert run_key("c", before, "p", 1, 0) == run_key("c", now, "p", 1, 0) == run_key("c", frozen, "p", 1, 0)


def test_fsync_at_most_every_sync_seconds_and_before_done(tmp_path, monkeypatch):
    clock, synced = [0.0], []
    fsync_seconds = [0.0]

    def fsync(fd):  # a disk whose fsync takes fsync_seconds
        synced.append(fd)
        clock[0] += fsync_seconds[0]

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(os, "fsync", fsync)
    writer = ResultsWriter(tmp_path, run_key("a", {}, "b", 1, 0), sync_seconds=2.0)
    fd = writer._fd
    synced.clear()  # key.json's fsync, maybe on the same fd number before it was closed

    def write_at(t: float) -> int:
        clock[0] = t
        writer.write_batch([skipped_line(int(t * 10))])
        return synced.count(fd)

    assert [write_at(t) for t in (0.5, 1.9, 2.0, 3.9, 4.0)] == [0, 0, 1, 1, 2]
    # An fsync that takes 0.1 s pushes the next one 100 x 0.1 = 10 s on (at most 1% of the run).
    fsync_seconds[0] = 0.1
    assert [write_at(t) for t in (6.0, 7.0, 16.0, 16.2)] == [3, 3, 3, 4]
    writer.mark_done(9)  # synced first, whatever the clock says
    assert synced.count(fd) == 4  # nothing written since the last sync
    writer.write_batch([skipped_line(99)])
    writer.close()  # syncs what was written
    assert synced.count(fd) == 5
    assert len((tmp_path / RESULTS).read_text().splitlines()) == 10


def test_a_failed_fsync_cuts_back_to_what_was_synced(tmp_path, monkeypatch):
    writer = ResultsWriter(tmp_path, run_key("a", {}, "b", 1, 0), sync_seconds=3600)
    writer.write_batch([skipped_line(1), skipped_line(2)])
    writer.sync()
    writer.write_batch([skipped_line(3)])  # written, not synced

    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    # The kernel may have dropped what it could not write: keep only what was synced.
    with pytest.raises(InputError, match="Input/output error.*the 2 results written so far are kept"):
        writer.mark_done(3)
    writer.close()
    assert repair_and_read_ids(tmp_path / RESULTS).tolist() == [1, 2]
    assert (tmp_path / RESULTS).read_bytes() == skipped_line(1).to_json() + skipped_line(2).to_json()
    assert not (tmp_path / "done.json").exists()


WRITER_CHILD = """
import sys, time
from det_al.run.result_line import ResultLine
from det_al.run.stream import ResultsWriter, run_key
writer = ResultsWriter(sys.argv[1], run_key("a", {}, "b", 1, 0), sync_seconds=3600)
for batch in range(3):
    writer.write_batch([ResultLine(10 * batch + i, "y" * 1000, skipped="x") for i in range(4)])
    print(batch, flush=True)
time.sleep(600)
"""


def test_sigkill_keeps_every_batch_written_without_fsync(tmp_path):
    # fsync only matters if the machine goes down: what write() handed to the kernel outlives
    # the process, so a SIGKILL loses at most the batch in flight even between two fsyncs.
    proc = subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert [proc.stdout.readline() for _ in range(3)] == ["0\n", "1\n", "2\n"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert repair_and_read_ids(tmp_path / RESULTS).tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]


@pytest.mark.parametrize("chunk", [1, 4])
def test_ranking_sorted_in_small_chunks_is_the_same(reference, tmp_path, chunk):
    # 6 results in runs of 1 or 4 records, merged: the same outputs as one in-memory sort.
    from det_al.run.assemble import assemble_outputs
    from det_al.config import config_from_dict
    from det_al.run.stream import read_key, read_results

    meta = read_key(reference)["meta"]
    out = tmp_path / "out"
    counts = assemble_outputs(lambda: read_results([reference / RESULTS]), out, meta["categories"],
                              config_from_dict(meta["config"]), chunk=chunk)
    assert counts["n_scored"] == 6
    _same_outputs(reference, out)


# Images of mixed shapes scored 3 to a batch: torchvision pads a batch to its largest image,
# so an image's passes depend on the images that share its batch. Shards, torchrun ranks and a
# resumed run must therefore batch exactly the images a single run batches together.
MIXED_SHAPES = [(96, 96), (96, 64), (64, 96), (96, 48), (80, 96), (96, 72), (56, 96), (96, 96)]  # (w, h)


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory) -> dict:
    import cv2

    from det_al.data.synthetic import generate

    root = tmp_path_factory.mktemp("mixed")
    coco = generate(root, len(MIXED_SHAPES), "old", seed=5, start_id=1, size=96)
    for image, (w, h) in zip(coco["images"], MIXED_SHAPES):
        path = root / image["file_name"]
        cv2.imwrite(str(path), cv2.imread(str(path))[:h, :w])
        image.update(width=w, height=h)
    coco["annotations"] = []
    (root / "pool.json").write_text(json.dumps(coco))
    return {"root": root, "pool": root / "pool.json", "coco": coco}


@pytest.fixture(scope="module")
def mixed_reference(mixed_pool, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed_reference")
    assert _score(mixed_pool, tiny_checkpoint, out, "--batch-size", "3") == 0
    return out


def test_shard_positions_deal_whole_batches():
    from det_al.run.shards import shard_positions

    # 10 images in batches of 2: [0 1] [2 3] [4 5] [6 7] [8 9] dealt to shards 0 1 2 0 1.
    assert [shard_positions(10, 3, i, 2).tolist() for i in range(3)] == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5]]
    assert shard_positions(5, 2, 1, 1).tolist() == [1, 3]
    assert shard_positions(4, 1, 0, 3).tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError, match="--shard-index must be in"):
        shard_positions(4, 2, 2, 1)


def test_mixed_sizes_batched_shards_merge_into_the_single_run(mixed_reference, mixed_pool, tiny_checkpoint, tmp_path, capsys):
    dirs = []
    for i in range(2):
        d = tmp_path / f"shard{i}"
        assert _score(mixed_pool, tiny_checkpoint, d, "--batch-size", "3", "--num-shards", "2", "--shard-index", str(i)) == 0
        dirs.append(str(d))
    # 8 images in batches of 3 dealt to 2 shards: shard 0 holds batches 0 and 2, shard 1 batch 1.
    assert [len((Path(d) / RESULTS).read_text().splitlines()) for d in dirs] == [5, 3]
    merged = tmp_path / "merged"
    assert main(["merge-shards", *dirs, "--out", str(merged)]) == 0
    _same_outputs(mixed_reference, merged)
    # A shard whose key does not say how the pool was split (an older det_al dealt single images).
    key_path = Path(dirs[1]) / "key.json"
    key = json.loads(key_path.read_text())
    del key["shard_block"]
    key_path.write_text(json.dumps(key))
    capsys.readouterr()
    assert main(["merge-shards", *dirs, "--out", str(tmp_path / "merged2")]) == 2
    assert "no shard_block: scored by an older det_al version" in capsys.readouterr().err
    assert not (tmp_path / "merged2").exists()


def test_mixed_sizes_resume_inside_a_batch_reruns_the_whole_batch(mixed_reference, mixed_pool, tiny_checkpoint, tmp_path):
    # Killed after the first batch and one image of the second: the second batch's other two
    # images must be scored beside the first one again, not as a batch of two.
    lines = (mixed_reference / RESULTS).read_text().splitlines(keepends=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "key.json").write_text((mixed_reference / "key.json").read_text())
    (out / RESULTS).write_text("".join(lines[:4]))
    assert _score(mixed_pool, tiny_checkpoint, out, "--batch-size", "3", "--resume") == 0
    assert (out / RESULTS).read_text() == "".join(lines)
    _same_outputs(mixed_reference, out)


def test_loader_workers_give_the_same_outputs(mixed_reference, mixed_pool, tiny_checkpoint, tmp_path):
    # Images read by 2 worker processes, batched as the main process batches them.
    out = tmp_path / "out"
    assert _score(mixed_pool, tiny_checkpoint, out, "--batch-size", "3", "--workers", "2") == 0
    _same_outputs(mixed_reference, out)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_torchrun_mixed_sizes_batched_equal_single_run(mixed_reference, mixed_pool, tiny_checkpoint, tmp_path):
    # Each rank runs as many threads as the reference run did: with batches of several images,
    # CPU kernels add up in a thread-count dependent order (last-digit differences otherwise).
    import torch

    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "det_al", "score", "-k", str(tiny_checkpoint), "-p", str(mixed_pool["pool"]), "-o", str(out),
         "--passes", "2", "--seed", "3", "--batch-size", "3", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _same_outputs(mixed_reference, out)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_torchrun_an_error_on_one_rank_stops_the_job_with_its_line(tiny_pool, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "rank-1-of-2").write_text("a file where rank 1's folder should be")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "det_al", "score", "-k", str(tiny_checkpoint), "-p", str(tiny_pool["pool"]), "-o", str(out),
         "--passes", "2", "--seed", "3", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode != 0
    # Rank 1 names its problem in one line and exits; torchrun stops rank 0 at once (whatever
    # it was doing, it says so in one line at most, never with a Python traceback of its own).
    problem = f"{out / 'shards' / 'rank-1-of-2'}: cannot create output folder: File exists"
    errors = [line for line in result.stderr.splitlines() if line.startswith("det-al score: error:")]
    assert f"det-al score: error: {problem}" in errors, result.stderr[-2000:]
    assert len(errors) <= 2 and all(e == f"det-al score: error: {problem}" or "rank 0:" in e for e in errors), errors
    assert "RuntimeError" not in result.stderr and "DistBackendError" not in result.stderr, result.stderr[-2000:]
    assert not (out / "ranking.jsonl").exists()


def test_result_lines_round_trip_nan_and_names_that_are_not_utf8():
    from det_al.run.result_line import ResultLine
    from det_al.run.stream import encode_lines

    lines = [
        ResultLine(1, "a.png", width=4, height=3, record={"informativeness": 0.25}, embedding=[0.5, -1e-05, 3.0]),
        ResultLine(2, "caf\udce9.png", skipped="unreadable"),  # undecodable bytes of a POSIX path
        ResultLine(3, "b.png", record={}, annotations=[{"score": float("nan"), "bbox": [float("inf"), 0, 1, 1]}]),
    ]
    raw = encode_lines(lines)
    assert raw.count(b"\n") == 3 and all(r.startswith(b'{"image_id":') for r in raw.splitlines())
    assert raw.splitlines()[1] == b'{"image_id":2,"file_name":"caf\\udce9.png","skipped":"unreadable"}'
    back = [ResultLine.from_json(r) for r in raw.splitlines(keepends=True)]
    assert back[:2] == lines[:2]
    ann = back[2].annotations[0]
    assert math.isnan(ann["score"]) and ann["bbox"] == [float("inf"), 0, 1, 1]  # not null
    assert repair_and_read_ids_of(raw) == [1, 2, 3]


def repair_and_read_ids_of(raw: bytes) -> list[int]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / RESULTS
        path.write_bytes(raw)
        return repair_and_read_ids(path).tolist()


@pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes are a POSIX matter")
def test_folder_pool_with_a_file_name_that_is_not_utf8(tiny_pool, tiny_checkpoint, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    source = tiny_pool["root"] / tiny_pool["coco"]["images"][0]["file_name"]
    (folder / "a.png").write_bytes(source.read_bytes())
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as f:
        f.write(source.read_bytes())
    out = tmp_path / "out"
    assert main(["score", "-k", str(tiny_checkpoint), "-p", str(folder), "-o", str(out), "--passes", "2",
                 "--no-progress"]) == 0
    ranked = [json.loads(line)["file_name"] for line in (out / "ranking.jsonl").read_text().splitlines()]
    assert sorted(ranked) == ["a.png", "caf\udce9.png"]
