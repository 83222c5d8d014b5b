"""Benchmark streaming, resumable, sharded scoring (issue 6), printed as one table.

(a) Streaming: a synthetic pool of N small images rendered on the fly (``render_example``, never
    stored) scored with an untrained ``fasterrcnn_tiny`` (``--passes 2``, ``--image-size`` px),
    each N in a fresh subprocess: peak RSS (``ru_maxrss``), images/s, and the cost of the
    ``--resume`` bookkeeping (``ResultsWriter``: key + pool hash, serialising each result line,
    appending each batch, fsync every ``SYNC_SECONDS``, ``done.json``) as a share of the run,
    split into JSON-encoding the lines (which any streamed output needs), fsync and the rest
    (writes, key, hashes); the final assembly (external sort) is timed separately. Target: peak
    RSS at the largest N within 10% of the smallest, bookkeeping under 2%. The pool is held as
    ``det-al score`` holds it (:class:`det_al.data.pool.PoolImages`).
(a') ``--stub-sizes``: the same with the model run once and its passes reused for every image
    (rendering, matching, scoring, results and assembly still run per image): the memory of the
    streaming machinery at pool sizes the real model would take hours to reach on a CPU.
(b) torchrun: ``torchrun --nproc-per-node 2 -m det_al score`` (gloo, one thread per rank) vs one
    process on the same stored pool of mixed shapes (each image cropped to a random width and
    height, so batches are padded): against one process with one thread (the same work per
    process) the outputs must be byte-identical; against one process with ``--threads`` threads
    (the same cores) the throughput ratio, and which outputs are byte-identical (CPU kernels sum
    in a thread-count dependent order, so with batches of several images rounded values can
    differ in their last digit).
(c) Kill-and-resume: ``--kills`` runs killed with SIGKILL at a random moment, then resumed with
    ``--resume``: every output byte-identical to the uninterrupted run. ``--stored 0`` skips
    (b) and (c).
(d) ``--pool-sizes``: a COCO pool file of N images (six keys each, as COCO's own) read in a
    fresh process by ``load_coco`` (``json.load`` into dicts, then validated: what ``det-al
    score`` did before) and by ``read_pool`` (streamed into ``PoolImages``): seconds and peak
    RSS above the process's RSS after the imports.

The rendered images reach the scorer through ``score_to_dir(make_dataset=...)``.

Usage::

    python benchmarks/bench_scale.py [--sizes 10000,100000] [--stub-sizes N,...] [--stored 200]
        [--kills 10] [--pool-sizes 1000000] [--image-size 64] [--batch-size 8] [--workdir DIR]
        [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
COMPARED = ("ranking.jsonl", "pseudo_labels.json", "passes.jsonl", "skipped.json", "embeddings.npy", "embeddings_ids.json")


def make_checkpoint(path: Path, size: int) -> Path:
    import torch

    from det_al.models.checkpoint import save_checkpoint
    from det_al.config import config_from_dict
    from det_al.models.build import build_model

    config = config_from_dict({
        "model": {"name": "fasterrcnn_tiny", "num_classes": len(CATEGORIES) + 1,
                  "options": {"min_size": size, "max_size": size, "box_score_thresh": 0.0}},
        "passes": {"passes": 2, "dropout": 0.3},
    })
    torch.manual_seed(0)
    save_checkpoint(path, build_model(config.model), config, CATEGORIES)
    return path


class RenderedPool:
    """PoolDataset's items for images rendered from their id (nothing read from disk)."""

    def __init__(self, images, size: int = 64):
        from det_al.data.pool import as_pool_images

        self.ids = as_pool_images(images).ids
        self.size = size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        from det_al.data.images import to_tensor
        from det_al.data.synthetic import render_example

        image_id = int(self.ids[index])
        image, _ = render_example("old" if image_id % 2 else "drifted", 0, image_id, self.size)
        return {"image_id": image_id, "file_name": f"rendered/{image_id:08d}.png", "image": to_tensor(image)}


def _time_the_bookkeeping() -> tuple[dict, dict, dict, object]:
    """Wrap, in this process, what the ``--resume`` bookkeeping costs with timers: the
    ``ResultsWriter`` methods and the pool hash (``book["seconds"]``, fsync inside them
    ``book["fsync"]``), the JSON encoding of result lines (``encode``) and the final assembly
    (``assembly``, with the peak RSS before it). Returns the three dicts and the ``timed`` wrapper."""
    import det_al.run.pool_run
    import det_al.run.stream
    from det_al.data.pool import PoolImages

    book = {"seconds": 0.0, "fsync": 0.0, "inside": False}

    def timed(fn):
        def wrapper(*a, **k):
            if book["inside"]:  # called from another timed function: counted there
                return fn(*a, **k)
            book["inside"] = True
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                book["seconds"] += time.perf_counter() - t
                book["inside"] = False
        return wrapper

    W = det_al.run.stream.ResultsWriter
    for name in ("__init__", "write_batch", "mark_done", "close"):
        setattr(W, name, timed(getattr(W, name)))
    PoolImages.sha256 = timed(PoolImages.sha256)
    real_fsync = os.fsync

    def fsync(fd):
        t = time.perf_counter()
        try:
            return real_fsync(fd)
        finally:
            if book["inside"]:
                book["fsync"] += time.perf_counter() - t

    os.fsync = fsync
    encode = {"seconds": 0.0}
    real_encode = det_al.run.stream.encode_lines

    def encode_lines(lines):
        t = time.perf_counter()
        try:
            return real_encode(lines)
        finally:
            encode["seconds"] += time.perf_counter() - t

    det_al.run.stream.encode_lines = encode_lines
    assembly = {"seconds": 0.0, "rss_before_kib": 0}
    real_assemble = det_al.run.pool_run.assemble_outputs

    def assemble(*a, **k):
        assembly["rss_before_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            return real_assemble(*a, **k)
        finally:
            assembly["seconds"] += time.perf_counter() - t

    det_al.run.pool_run.assemble_outputs = assemble
    return book, encode, assembly, timed


def _stub_the_model(model, config, image_size: int) -> None:
    """Machinery only: every image gets the passes of the first one (the model runs once);
    rendering, matching, scoring, results lines and assembly run for every image."""
    import det_al.run.score_lines

    real_run_passes = det_al.run.score_lines.run_passes
    first = RenderedPool([{"id": 1, "file_name": "1.png"}], size=image_size)[0]["image"]
    canned = real_run_passes(model, [first], config.passes, seeds=[1])[0]
    det_al.run.score_lines.run_passes = lambda model, images, *a, **k: [canned] * len(images)


def _rendered_pool(n: int, image_size: int, categories: list[dict]) -> dict:
    """The pool as det-al score holds it after read_pool: compact arrays, no list of dicts."""
    import numpy as np

    from det_al.data.pool import PoolImages

    names = bytearray()
    for start in range(1, n + 1, 8192):
        names += b"".join(b"rendered/%08d.png" % i for i in range(start, min(start + 8192, n + 1)))
    offsets = np.arange(n + 1, dtype=np.int64) * len(b"rendered/00000001.png")
    sizes = np.full(n, image_size, dtype=np.int32)
    return {"images": PoolImages(np.arange(1, n + 1), names, offsets, sizes, sizes), "categories": categories}


def child_stream(args: argparse.Namespace) -> None:
    """One streaming run in this (fresh) process; prints a JSON line of measurements."""
    import torch

    import det_al.run.pool_run
    from det_al.models.checkpoint import load_checkpoint
    from det_al.config import apply_overrides, config_from_dict, config_to_dict
    from det_al.run.stream import file_sha256

    torch.set_num_threads(args.threads)
    model, config, categories, _ = load_checkpoint(args.checkpoint)
    config = config_from_dict(apply_overrides(config_to_dict(config), [f"passes.batch_size={args.batch_size}"]))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    book, encode, assembly, timed = _time_the_bookkeeping()
    if args.stub:
        _stub_the_model(model, config, args.image_size)
    pool = _rendered_pool(args.n, args.image_size, categories)
    t = time.perf_counter()
    sha = timed(file_sha256)(args.checkpoint)
    counts = det_al.run.pool_run.score_to_dir(model, config, categories, pool, "/nonexistent", args.out, sha, progress=False,
                                              make_dataset=lambda images: RenderedPool(images, size=args.image_size), overwrite=True)
    total = time.perf_counter() - t
    print(json.dumps({
        "n": args.n, "n_scored": counts["n_scored"], "seconds": total, "assembly_s": assembly["seconds"],
        "bookkeeping_s": book["seconds"], "encode_s": encode["seconds"], "fsync_s": book["fsync"], "rss_model_kib": rss_model,
        "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_scoring_kib": assembly["rss_before_kib"],
    }))


def write_pool_file(path: Path, n: int) -> Path:
    """A COCO pool file of ``n`` images with COCO's six image keys, written as it goes."""
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "bench_scale pool"}, "licenses": [], "categories": ')
        f.write(json.dumps(CATEGORIES) + ',\n"images": [')
        for i in range(1, n + 1):
            f.write(("," if i > 1 else "") + "\n" + json.dumps({
                "id": i, "file_name": f"train/{i // 1000:04d}/img_{i:08d}.jpg", "width": 640, "height": 480,
                "license": 1, "date_captured": "2020-01-01 00:00:00"}))
        f.write('\n], "annotations": []}\n')
    return path


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child_pool_load(path: str, how: str) -> None:
    """Read a pool file in this (fresh) process; prints a JSON line of measurements.

    The peak RSS of the import of torch would hide that of reading a small pool, so the
    kernel's peak (VmHWM) is reset to the current RSS first (``/proc/self/clear_refs``).
    """
    from det_al.data.coco import load_coco
    from det_al.data.pool import read_pool

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_before = _status_kib("VmRSS")
    cpu = time.process_time()
    t = time.perf_counter()
    pool = load_coco(path) if how == "dicts" else read_pool(path)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(json.dumps({"n": len(pool["images"]), "seconds": seconds, "cpu_s": cpu, "rss_before_kib": rss_before,
                      "rss_peak_kib": _status_kib("VmHWM"), "rss_after_kib": _status_kib("VmRSS")}))


def run_pool_load(path: Path, how: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "_child_pool_load", str(path), how], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"reading {path} ({how}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_stream(n: int, args, ckpt: Path, work: Path, stub: bool = False) -> dict:
    out = work / f"stream-{n}"
    cmd = [sys.executable, __file__, "_child_stream", "--n", str(n), "--checkpoint", str(ckpt), "--out", str(out),
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--stub", str(int(stub))]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"streaming run of {n} failed:\n{res.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def score_cmd(pool: Path, ckpt: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    return ["-m", "det_al", "score", "-k", str(ckpt), "-p", str(pool), "-o", str(out), "--passes", "2",
            "--seed", "3", "--batch-size", str(batch_size), "--no-progress", *extra]


def same_outputs(a: Path, b: Path, names: tuple[str, ...] = COMPARED) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def timed_run(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t


def bench_stored(args, ckpt: Path, work: Path) -> list[tuple[str, str]]:
    """(b) torchrun vs one process and (c) kill-and-resume, on a pool stored as files."""
    rows: list[tuple[str, str]] = []
    # (b) torchrun 2 x 1 thread vs 1 process on a stored pool
    from det_al.data.synthetic import generate

    import cv2

    root = work / "pool"
    half = args.stored // 2
    old = generate(root, half, "old", seed=1, start_id=1, size=args.image_size)
    new = generate(root, args.stored - half, "drifted", seed=2, start_id=half + 1, size=args.image_size)
    shapes = random.Random(1)
    for image in old["images"] + new["images"]:
        w, h = (shapes.randint(args.image_size // 2, args.image_size) for _ in range(2))
        path = root / image["file_name"]
        cv2.imwrite(str(path), cv2.imread(str(path))[:h, :w])
        image.update(width=w, height=h)
    pool = root / "pool.json"
    pool.write_text(json.dumps({"images": old["images"] + new["images"], "categories": CATEGORIES, "annotations": []}))
    one_thread = dict(os.environ, OMP_NUM_THREADS="1")
    single1, single, dist = work / "single-1-thread", work / "single", work / "torchrun"
    t11 = timed_run([sys.executable, *score_cmd(pool, ckpt, single1, args.batch_size, "--overwrite")], env=one_thread)
    threads = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t1 = timed_run([sys.executable, *score_cmd(pool, ckpt, single, args.batch_size, "--overwrite")], env=threads)
    t2 = timed_run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561",
                    *score_cmd(pool, ckpt, dist, args.batch_size, "--overwrite")], env=one_thread)

    def compare(a: Path, b: Path) -> str:
        return ", ".join(f"{n}: {'yes' if same_outputs(a, b, (n,)) else 'NO'}" for n in COMPARED)

    rows += [
        (f"(b) 1 process, 1 thread, {args.stored} images of mixed shapes", f"{t11:.1f} s, {args.stored / t11:.1f} images/s"),
        (f"(b) 1 process, {args.threads} threads", f"{t1:.1f} s, {args.stored / t1:.1f} images/s"),
        ("(b) torchrun 2 processes, 1 thread each", f"{t2:.1f} s, {args.stored / t2:.1f} images/s"),
        ("(b) throughput ratio torchrun / 1 process 1 thread", f"{t11 / t2:.2f}x"),
        (f"(b) throughput ratio torchrun / 1 process {args.threads} threads", f"{t1 / t2:.2f}x"),
        ("(b) torchrun vs 1 thread: byte-identical", compare(single1, dist)),
        (f"(b) torchrun vs {args.threads} threads: byte-identical", compare(single, dist)),
    ]

    # (c) SIGKILL at a random moment, then --resume
    rng = random.Random(args.seed)
    identical, lines_at_kill = 0, []
    for k in range(args.kills):
        out = work / f"kill-{k}"
        shutil.rmtree(out, ignore_errors=True)  # a --workdir of an earlier run
        cmd = [sys.executable, *score_cmd(pool, ckpt, out, args.batch_size)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=threads)
        time.sleep(rng.uniform(0.1, t1))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        results = out / "results.jsonl"
        lines_at_kill.append(results.read_bytes().count(b"\n") if results.exists() else 0)
        timed_run(cmd + ["--resume"], env=threads)
        identical += same_outputs(single, out)
        shutil.rmtree(out, ignore_errors=True)
    rows += [
        ("(c) killed runs resumed identical", f"{identical}/{args.kills}"),
        ("(c) result lines on disk at each kill", ", ".join(map(str, lines_at_kill)) + f" (of {args.stored})"),
    ]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="comma-separated pool sizes for (a)")
    p.add_argument("--stub-sizes", default="", help="pool sizes run with the model stubbed (machinery only: memory of results + assembly)")
    p.add_argument("--stored", type=int, default=200, help="images of the stored pool for (b) and (c); 0 skips them")
    p.add_argument("--pool-sizes", default="", help="comma-separated sizes of COCO pool files read for (d), e.g. 1000000")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of a single process")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--workdir", help="default: a temporary folder, removed at the end")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 200,1000, stub sizes 200,2000, 40 stored images, 2 kills, a 20,000-image pool file")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.stub_sizes, args.stored, args.kills, args.pool_sizes = "200,1000", "200,2000", 40, 2, "20000"
    sizes = [int(s) for s in args.sizes.split(",") if s]
    stub_sizes = [int(s) for s in args.stub_sizes.split(",") if s]
    pool_sizes = [int(s) for s in args.pool_sizes.split(",") if s]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work / "fasterrcnn_tiny.pt", args.image_size)
    rows: list[tuple[str, str]] = []
    try:
        # (a) streaming memory, throughput, bookkeeping; (a') the same with the model stubbed
        def rest(r):
            return r["bookkeeping_s"] - r["encode_s"] - r["fsync_s"]

        for tag, ns, stub in (("(a)", sizes, False), ("(a')", stub_sizes, True)):
            stream = [run_stream(n, args, ckpt, work, stub) for n in ns]
            for r in stream:
                run_s = r["seconds"] - r["assembly_s"]
                rows += [
                    (f"{tag} N={r['n']}: scored / s", f"{r['n_scored']} / {r['seconds']:.1f} s"),
                    (f"{tag} N={r['n']}: images/s (scoring; with assembly)", f"{r['n'] / run_s:.1f}; {r['n'] / r['seconds']:.1f}"),
                    (f"{tag} N={r['n']}: peak RSS (after model load; before assembly)",
                     f"{r['rss_peak_kib'] / 1024:.0f} MiB ({r['rss_model_kib'] / 1024:.0f}; {r['rss_scoring_kib'] / 1024:.0f} MiB)"),
                    (f"{tag} N={r['n']}: resume bookkeeping", f"{r['bookkeeping_s']:.2f} s = {100 * r['bookkeeping_s'] / r['seconds']:.2f}% of run"),
                    (f"{tag} N={r['n']}:   of which JSON-encoding the lines", f"{r['encode_s']:.2f} s = {100 * r['encode_s'] / r['seconds']:.2f}% of run"),
                    (f"{tag} N={r['n']}:   of which fsync", f"{r['fsync_s']:.2f} s = {100 * r['fsync_s'] / r['seconds']:.2f}% of run"),
                    (f"{tag} N={r['n']}:   of which writes, key, hashes", f"{rest(r):.2f} s = {100 * rest(r) / r['seconds']:.2f}% of run"),
                    (f"{tag} N={r['n']}: final assembly", f"{r['assembly_s']:.2f} s = {100 * r['assembly_s'] / r['seconds']:.2f}% of run"),
                ]
            if len(stream) > 1:
                a, b = stream[0], stream[-1]
                growth = 100 * (b["rss_peak_kib"] / a["rss_peak_kib"] - 1)
                rows.append((f"{tag} peak RSS growth N={a['n']} -> {b['n']} (target < 10%)", f"{growth:+.1f}%"))

        # (d) reading a COCO pool file: dicts (json.load + validate) vs streamed into PoolImages
        for n in pool_sizes:
            path = write_pool_file(work / f"pool-{n}.json", n)
            for how, what in (("dicts", "load_coco (json.load, dicts)"), ("compact", "read_pool (streamed, PoolImages)")):
                r = run_pool_load(path, how)
                grown = (r["rss_peak_kib"] - r["rss_before_kib"]) * 1024
                kept = (r["rss_after_kib"] - r["rss_before_kib"]) * 1024
                rows.append((f"(d) N={n} ({path.stat().st_size / 2**20:.0f} MiB file): {what}",
                             f"{r['seconds']:.1f} s ({r['cpu_s']:.1f} s CPU), RSS +{grown / 2**20:.0f} MiB at peak "
                             f"({grown / n:.0f} B/image), +{kept / 2**20:.0f} MiB after"))
            path.unlink()
        if args.stored:
            rows += bench_stored(args, ckpt, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(k) for k, _ in rows)
    print(f"bench_scale: fasterrcnn_tiny, passes 2, {args.image_size} px, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'measure':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child_pool_load":
        child_pool_load(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_child_stream":
        cp = argparse.ArgumentParser()
        for name in ("--n", "--image-size", "--batch-size", "--threads", "--stub"):
            cp.add_argument(name, type=int)
        cp.add_argument("--checkpoint")
        cp.add_argument("--out")
        child_stream(cp.parse_args(sys.argv[2:]))
    else:
        main()
