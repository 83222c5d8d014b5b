"""Benchmark ``det-al serve`` over a real socket: is the webhook far inside Label Studio's 1 s?

Label Studio calls the backend's ``/webhook`` synchronously inside the annotator's Submit, with
a 1 s timeout and no retry, and sends every selected task to ``/predict`` in one request with a
100 s timeout. On a synthetic pool (``--images`` 96-px images, an untrained ``maskrcnn_tiny``
with score threshold 0, so every image has ~50 detections with masks), this measures:

- ``/webhook``: ``--events`` sequential annotation events (journal append + ``fsync``), and the
  same number from ``--clients`` threads at once; median and max latency;
- ``/predict`` of ``--tasks`` tasks whose images the ``--scores`` folder holds (no model run:
  the cost is turning masks into polygons), and of ``--on-demand`` tasks scored by the model
  (``--passes`` passes, one thread).

Usage::

    python benchmarks/bench_serve.py [--images 6] [--events 200] [--clients 8] [--tasks 1000]
        [--on-demand 10] [--passes 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from wsgiref.simple_server import make_server


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="scored pool images")
    parser.add_argument("--events", type=int, default=200, help="webhook events per measurement")
    parser.add_argument("--clients", type=int, default=8, help="threads posting events at once")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the predict request answered from scores")
    parser.add_argument("--on-demand", type=int, default=10, help="tasks scored by the model in one request")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser


def post(port: int, path: str, body: dict) -> tuple[float, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    data = json.dumps(body).encode()
    start = time.perf_counter()
    connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return time.perf_counter() - start, response.status


def main(args: argparse.Namespace) -> None:
    import torch

    import det_al
    from det_al.config import config_from_dict
    from det_al.data.synthetic import generate
    from det_al.models.build import build_model
    from det_al.models.checkpoint import save_checkpoint
    from det_al.serve.server import QuietHandler, ThreadingWSGIServer

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    coco = generate(root, args.images, "drifted", seed=0, size=96)
    (root / "pool.json").write_text(json.dumps(coco))
    config = config_from_dict({"model": {"name": "maskrcnn_tiny", "num_classes": 4, "options": {
        "min_size": 96, "max_size": 96, "box_score_thresh": 0.0}}})
    torch.manual_seed(0)
    save_checkpoint(root / "model.pt", build_model(config.model), config, coco["categories"])
    det_al.score_images(det_al.load_model(root / "model.pt"), root / "pool.json", image_root=root,
                        out_dir=root / "scores", passes=args.passes, seed=0, progress=False)
    app = det_al.make_backend_app(root / "model.pt", image_root=root, scores=root / "scores",
                                  journal=root / "journal.jsonl", passes=args.passes, seed=0)
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port
    try:
        region = {"type": "rectanglelabels", "value": {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0}}
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                 "annotation": {"id": 1, "task": 1, "result": [region] * 20}, "task": {"id": 1, "data": {"image": "x"}}}
        sequential = [post(port, "/webhook", event)[0] for _ in range(args.events)]
        parallel: list[float] = []
        per_client = max(args.events // args.clients, 1)

        def client() -> None:
            for _ in range(per_client):
                parallel.append(post(port, "/webhook", event)[0])

        workers = [threading.Thread(target=client) for _ in range(args.clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        lines = len((root / "journal.jsonl").read_text().splitlines())
        for name, values in (("sequential", sequential), (f"{args.clients} clients at once", parallel)):
            print(f"webhook, {len(values)} events {name}: median {statistics.median(values) * 1000:.1f} ms, "
                  f"max {max(values) * 1000:.1f} ms, over 1 s: {sum(v >= 1.0 for v in values)}")
        print(f"journal lines: {lines} of {len(sequential) + len(parallel)} events")

        names = [im["file_name"] for im in coco["images"]]
        tasks = [{"id": i, "data": {"image": names[i % len(names)]}} for i in range(args.tasks)]
        seconds, status = post(port, "/predict", {"tasks": tasks})
        print(f"predict, {args.tasks} tasks from the scores folder: {seconds:.2f} s "
              f"({seconds / args.tasks * 1000:.2f} ms per task), HTTP {status}")
        generate(root / "new", args.on_demand, "old", seed=5, size=96)
        tasks = [{"id": i, "data": {"image": f"new/images/old_{i + 1:06d}.png"}} for i in range(args.on_demand)]
        seconds, status = post(port, "/predict", {"tasks": tasks})
        print(f"predict, {args.on_demand} tasks scored on demand ({args.passes} passes, {args.threads} thread): "
              f"{seconds:.2f} s ({seconds / args.on_demand:.2f} s per task), HTTP {status}")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
