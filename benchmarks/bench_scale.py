"""Benchmark streaming, resumable, sharded scoring (issue 6), printed as one table.

(a) Streaming: a synthetic pool of N small images rendered on the fly (``render_example``, never
    stored) scored with an untrained ``fasterrcnn_tiny`` (``--passes 2``, ``--image-size`` px),
    each N in a fresh subprocess: peak RSS (``ru_maxrss``), images/s, and the cost of the
    ``--resume`` bookkeeping (``ResultsWriter``: key + pool hash, serialising each result line,
    append + fsync per batch, ``done.json``) as a share of the run, split into JSON-encoding the
    lines (which any streamed output needs) and the rest (fsync, key, hashes); the final assembly
    (external sort) is timed separately. Target: peak RSS at the largest N within 10% of the
    smallest, bookkeeping under 2%.
(a') ``--stub-sizes``: the same with the model run once and its passes reused for every image
    (rendering, matching, scoring, results and assembly still run per image): the memory of the
    streaming machinery at pool sizes the real model would take hours to reach on a CPU.
(b) torchrun: ``torchrun --nproc-per-node 2 -m det_al score`` (gloo, one thread per rank) vs one
    process (all threads) on the same stored pool: throughput ratio, identical rankings.
    Only the ranking is compared across thread counts: one thread per rank vs two in the single
    process changes float sums in their last bits, so a pseudo-label value rounded to 6 digits
    or an embedding rounded to 5 can differ by one unit in its last digit.
(c) Kill-and-resume: ``--kills`` runs killed with SIGKILL at a random moment, then resumed with
    ``--resume``: every output byte-identical to the uninterrupted run.

The rendered images reach the scorer through ``score_to_dir(make_dataset=...)`` when det_al
has that hook, else by swapping ``det_al.scoring.PoolDataset`` in the child process.

Usage::

    python benchmarks/bench_scale.py [--sizes 10000,100000] [--stored 200] [--kills 10]
        [--image-size 64] [--batch-size 8] [--workdir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import inspect
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

    from det_al.checkpoint import save_checkpoint
    from det_al.config import config_from_dict
    from det_al.models import build_model

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

    def __init__(self, images, image_root=None, size: int = 64):
        import numpy as np

        images = images["images"] if isinstance(images, dict) else images
        self.ids = np.fromiter((int(im["id"]) for im in images), dtype=np.int64, count=len(images))
        self.size = size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        from det_al.images import to_tensor
        from det_al.synthetic import render_example

        image_id = int(self.ids[index])
        image, _ = render_example("old" if image_id % 2 else "drifted", 0, image_id, self.size)
        return {"image_id": image_id, "file_name": f"rendered/{image_id:08d}.png", "image": to_tensor(image)}


def child_stream(args: argparse.Namespace) -> None:
    """One streaming run in this (fresh) process; prints a JSON line of measurements."""
    import torch

    import det_al.results
    import det_al.scoring
    from det_al.checkpoint import load_checkpoint
    from det_al.config import apply_overrides, config_from_dict, config_to_dict
    from det_al.results import file_sha256

    torch.set_num_threads(args.threads)
    model, config, categories, _ = load_checkpoint(args.checkpoint)
    config = config_from_dict(apply_overrides(config_to_dict(config), [f"passes.batch_size={args.batch_size}"]))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    book = {"seconds": 0.0}

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                book["seconds"] += time.perf_counter() - t
        return wrapper

    W = det_al.results.ResultsWriter
    for name in ("__init__", "write_batch", "mark_done"):
        setattr(W, name, timed(getattr(W, name)))
    det_al.scoring.pool_sha256 = timed(det_al.scoring.pool_sha256)
    encode = {"seconds": 0.0}
    real_encode = det_al.results.encode_lines

    def encode_lines(lines):
        t = time.perf_counter()
        try:
            return real_encode(lines)
        finally:
            encode["seconds"] += time.perf_counter() - t

    det_al.results.encode_lines = encode_lines
    assembly = {"seconds": 0.0}
    real_assemble = det_al.scoring.assemble_outputs

    def assemble(*a, **k):
        t = time.perf_counter()
        try:
            return real_assemble(*a, **k)
        finally:
            assembly["seconds"] += time.perf_counter() - t

    det_al.scoring.assemble_outputs = assemble

    if args.stub:
        # Machinery only: every image gets the passes of the first one (the model runs once);
        # rendering, matching, scoring, results lines and assembly run for every image.
        real_run_passes = det_al.scoring.run_passes
        canned = real_run_passes(model, [RenderedPool([{"id": 1}], size=args.image_size)[0]["image"]], config.passes, seeds=[1])[0]
        det_al.scoring.run_passes = lambda model, images, *a, **k: [canned] * len(images)
    pool = {"images": [{"id": i, "file_name": f"rendered/{i:08d}.png", "width": args.image_size, "height": args.image_size}
                       for i in range(1, args.n + 1)], "categories": categories}
    extra = {}
    if "make_dataset" in inspect.signature(det_al.scoring.score_to_dir).parameters:
        extra["make_dataset"] = lambda images: RenderedPool(images, size=args.image_size)
    else:
        det_al.scoring.PoolDataset = lambda coco, root: RenderedPool(coco, size=args.image_size)
    t = time.perf_counter()
    sha = timed(file_sha256)(args.checkpoint)
    counts = det_al.scoring.score_to_dir(model, config, categories, pool, "/nonexistent", args.out, sha,
                                         progress=False, **extra)
    total = time.perf_counter() - t
    print(json.dumps({
        "n": args.n, "n_scored": counts["n_scored"], "seconds": total, "assembly_s": assembly["seconds"],
        "bookkeeping_s": book["seconds"], "encode_s": encode["seconds"], "rss_model_kib": rss_model,
        "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="comma-separated pool sizes for (a)")
    p.add_argument("--stub-sizes", default="", help="pool sizes run with the model stubbed (machinery only: memory of results + assembly)")
    p.add_argument("--stored", type=int, default=200, help="images of the stored pool for (b) and (c)")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of a single process")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--workdir", help="default: a temporary folder, removed at the end")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 200,1000, stub sizes 200,2000, 40 stored images, 2 kills")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.stub_sizes, args.stored, args.kills = "200,1000", "200,2000", 40, 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    stub_sizes = [int(s) for s in args.stub_sizes.split(",") if s]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work / "fasterrcnn_tiny.pt", args.image_size)
    rows: list[tuple[str, str]] = []
    try:
        # (a) streaming memory, throughput, bookkeeping; (a') the same with the model stubbed
        for tag, ns, stub in (("(a)", sizes, False), ("(a')", stub_sizes, True)):
            stream = [run_stream(n, args, ckpt, work, stub) for n in ns]
            for r in stream:
                run_s = r["seconds"] - r["assembly_s"]
                rows += [
                    (f"{tag} N={r['n']}: scored / s", f"{r['n_scored']} / {r['seconds']:.1f} s"),
                    (f"{tag} N={r['n']}: images/s (scoring; with assembly)", f"{r['n'] / run_s:.1f}; {r['n'] / r['seconds']:.1f}"),
                    (f"{tag} N={r['n']}: peak RSS (after model load)", f"{r['rss_peak_kib'] / 1024:.0f} MiB ({r['rss_model_kib'] / 1024:.0f} MiB)"),
                    (f"{tag} N={r['n']}: resume bookkeeping", f"{r['bookkeeping_s']:.2f} s = {100 * r['bookkeeping_s'] / r['seconds']:.2f}% of run"),
                    (f"{tag} N={r['n']}:   of which JSON-encoding the lines", f"{r['encode_s']:.2f} s = {100 * r['encode_s'] / r['seconds']:.2f}% of run"),
                    (f"{tag} N={r['n']}:   of which fsync, key, hashes", f"{r['bookkeeping_s'] - r['encode_s']:.2f} s = {100 * (r['bookkeeping_s'] - r['encode_s']) / r['seconds']:.2f}% of run"),
                    (f"{tag} N={r['n']}: final assembly", f"{r['assembly_s']:.2f} s = {100 * r['assembly_s'] / r['seconds']:.2f}% of run"),
                ]
            if len(stream) > 1:
                a, b = stream[0], stream[-1]
                growth = 100 * (b["rss_peak_kib"] / a["rss_peak_kib"] - 1)
                rows.append((f"{tag} peak RSS growth N={a['n']} -> {b['n']} (target < 10%)", f"{growth:+.1f}%"))

        # (b) torchrun 2 x 1 thread vs 1 process on a stored pool
        from det_al.synthetic import generate

        root = work / "pool"
        half = args.stored // 2
        old = generate(root, half, "old", seed=1, start_id=1, size=args.image_size)
        new = generate(root, args.stored - half, "drifted", seed=2, start_id=half + 1, size=args.image_size)
        pool = root / "pool.json"
        pool.write_text(json.dumps({"images": old["images"] + new["images"], "categories": CATEGORIES, "annotations": []}))
        single = work / "single"
        t1 = timed_run([sys.executable, *score_cmd(pool, ckpt, single, args.batch_size)])
        dist = work / "torchrun"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t2 = timed_run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561",
                        *score_cmd(pool, ckpt, dist, args.batch_size)], env=env)
        rows += [
            (f"(b) 1 process ({args.threads} threads), {args.stored} images", f"{t1:.1f} s, {args.stored / t1:.1f} images/s"),
            (f"(b) torchrun 2 processes (1 thread each)", f"{t2:.1f} s, {args.stored / t2:.1f} images/s"),
            ("(b) throughput ratio torchrun / single", f"{t1 / t2:.2f}x"),
            ("(b) rankings identical", "yes" if same_outputs(single, dist, ("ranking.jsonl",)) else "NO"),
            ("(b) other outputs byte-identical", ", ".join(
                f"{n}: {'yes' if same_outputs(single, dist, (n,)) else 'no'}" for n in COMPARED[1:])),
        ]

        # (c) SIGKILL at a random moment, then --resume
        rng = random.Random(args.seed)
        identical, lines_at_kill = 0, []
        for k in range(args.kills):
            out = work / f"kill-{k}"
            cmd = [sys.executable, *score_cmd(pool, ckpt, out, args.batch_size)]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.1, t1))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            results = out / "results.jsonl"
            lines_at_kill.append(results.read_bytes().count(b"\n") if results.exists() else 0)
            timed_run(cmd + ["--resume"])
            identical += same_outputs(single, out)
            shutil.rmtree(out, ignore_errors=True)
        rows += [
            (f"(c) killed runs resumed identical", f"{identical}/{args.kills}"),
            ("(c) result lines on disk at each kill", ", ".join(map(str, lines_at_kill)) + f" (of {args.stored})"),
        ]
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(k) for k, _ in rows)
    print(f"bench_scale: fasterrcnn_tiny, passes 2, {args.image_size} px, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'measure':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child_stream":
        cp = argparse.ArgumentParser()
        for name in ("--n", "--image-size", "--batch-size", "--threads", "--stub"):
            cp.add_argument(name, type=int)
        cp.add_argument("--checkpoint")
        cp.add_argument("--out")
        child_stream(cp.parse_args(sys.argv[2:]))
    else:
        main()
