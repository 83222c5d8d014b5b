"""Peak memory of scoring one large photo with Mask R-CNN, against one plain forward (issue 26).

Each case runs in a fresh Python process that prints its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) at the end; the parent prints one table.

Cases, on one ``--width`` x ``--height`` random image (12 megapixels by default),
``maskrcnn_resnet50_fpn`` with random weights, score threshold 0 and ``--detections`` detections
per image (torchvision's default transform: the network sees it at 800 px):

- ``plain``: torchvision's ``model([image])``, which pastes every mask into a full-size map;
- ``passes T=..``: :func:`det_al.inference.passes.run_passes` with T passes (``passes.masks``
  as given), then matching and per-object scoring of that image (what ``det-al score`` does
  per image, minus the file writing).

The deterministic pass is pasted at full size (the pseudo-labels need it: ``detections x H x W``
float32, 4.8 GB for 100 detections at 12 MP, as in the plain forward); every stochastic pass
keeps its masks at 28 x 28 in the box frame, so T adds little.

Usage::

    python benchmarks/bench_memory.py [--passes 1 3 10] [--masks shared] [--width 4000 --height 3000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, warnings
import torch
warnings.simplefilter("ignore")
from det_al.config import ModelConfig, PassesConfig, ScoringConfig
from det_al.inference.passes import run_passes
from det_al.models.build import build_model
from det_al.scoring.matching import match_passes
from det_al.scoring.uncertainty import score_objects
case, passes, masks, width, height, detections = json.loads(sys.argv[1])
torch.manual_seed(0)
model = build_model(ModelConfig("maskrcnn_resnet50_fpn", 91, {"box_score_thresh": 0.0,
                                                              "box_detections_per_img": detections}))
image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
with torch.inference_mode():
    if case == "plain":
        n = len(model([image])[0]["boxes"])
    else:
        res = run_passes(model, [image], PassesConfig(passes=passes, dropout=0.2, masks=masks), seeds=[0])[0]
        objects = match_passes(res.deterministic, res.passes, 0.5)
        score_objects(res.deterministic, res.passes, objects, ScoringConfig())
        n = len(res.deterministic)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "detections": n, "seconds": time.perf_counter() - start}))
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", nargs="+", type=int, default=[1, 3, 10])
    parser.add_argument("--masks", default="shared", choices=["exact", "shared"])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--detections", type=int, default=100)
    return parser


def run_case(case: str, passes: int, args: argparse.Namespace) -> dict:
    payload = json.dumps([case, passes, args.masks, args.width, args.height, args.detections])
    done = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"case {case} T={passes} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    plain = run_case("plain", 0, args)
    rows = [("plain forward (torchvision)", plain)]
    for t in args.passes:
        rows.append((f"run_passes + scoring, T={t}, masks {args.masks}", run_case("passes", t, args)))
    print(f"\nMask R-CNN R50-FPN, random weights, {args.width}x{args.height} image "
          f"({args.width * args.height / 1e6:.0f} MP), up to {args.detections} detections; "
          f"peak RSS of a fresh process per case ({time.perf_counter() - started:.0f} s in all)")
    print(f"{'case':<44} {'detections':>10} {'peak MB':>9} {'x plain':>8} {'seconds':>8}")
    for name, r in rows:
        print(f"{name:<44} {r['detections']:>10} {r['peak_mb']:>9.0f} {r['peak_mb'] / plain['peak_mb']:>8.2f} "
              f"{r['seconds']:>8.1f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
