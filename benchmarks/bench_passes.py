"""Benchmark the pass engine (issue 3): T stochastic passes should cost about one.

For each model, one 512-px image, T in --passes, seconds per image for

  (a) one deterministic pass: torchvision's own ``model(images)``;
  (b) the plain path: ``run_passes(fast=False)``: the deterministic pass + T whole-model passes
      under the same dropout hooks and generators;
  (c) det_al's engine: ``run_passes(fast=True)``: the prefix once, the T suffixes batched;

and the ratios (c)/(a) and (b)/(c), printed as one table. Two columns give the cost of the dense,
pre-threshold candidates (issue 18: at most 10 % at T = 10 on Faster R-CNN): ``dense %``, the
time spent in their own work (accumulators, one-stage anchor gathering, ``dense_scores``; see
:func:`dense_work`) as a share of (c); ``on-off %``, ``run_passes`` with against without them
(``dense=False``, the engine before them), the least CPU time of ``--dense-repeats`` alternated
runs each: the end-to-end check, which a loaded machine blurs by several percent. When det_al.scoring.matching and
det_al.scoring.uncertainty exist, the time of ``match_passes`` + ``score_objects`` on the T = max
passes of (c) is printed as a share of (c).

Random weights (no download) give near-uniform R-CNN softmax scores (~1/C) and RetinaNet
sigmoid scores near the 0.01 prior, so a fixed score threshold would give either nothing or
every candidate. The score threshold is therefore calibrated per model, on the deterministic
pass of the benchmark image, so that it yields about ``--detections`` (default 100) detections:
post-processing, NMS and the Mask R-CNN mask head then do realistic work. The calibrated
threshold and the detection count are printed.

What bounds (c)/(a) per family (multiply-accumulates at 512 px, 100 detections):

- Faster R-CNN: the suffix is ``box_predictor`` (a 1024 x 455 linear layer on 1000 RoIs,
  ~0.5 GMAC per pass) plus per-pass postprocessing; backbone, FPN, RPN and the 14 GMAC box head
  are shared, so T passes cost little more than one.
- RetinaNet: the dropout sites are the inputs of ``cls_logits`` (a 3x3 conv 256 -> A*K = 819
  channels over every position of P3-P7, ~10 GMAC) and ``bbox_reg``: ~15% of a deterministic
  pass per stochastic pass, plus the per-pass top-k/NMS over ~5 M logits.
- Mask R-CNN, ``passes.masks: exact``: each pass runs the mask head (four 3x3 256-channel convs
  at 14x14, ~0.46 GMAC per RoI, ~46 GMAC for 100 boxes) and the 2x2 transposed conv to 28x28 on
  its own boxes, about as much as the rest of the model, plus pasting 100 full-image masks per
  pass: the mask branch dominates and scales with T x boxes. ``shared`` runs it once on the
  deterministic boxes and reuses those features for pass detections within box IoU 0.5 of one;
  with random weights most pass detections are new boxes (printed below the table), so the
  saving here is a lower bound of what a trained model gets (``bench_shared_masks.py``).

Usage::

    python benchmarks/bench_passes.py [--families fasterrcnn maskrcnn retinanet]
        [--passes 1 5 10 20] [--size 512] [--repeats 1] [--threads N] [--mask-modes exact shared]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from det_al.config import ModelConfig, PassesConfig, ScoringConfig
from det_al.inference.dropout import Chunk, MCDropout
from det_al.models.build import build_model
from det_al.scoring.dense import dense_scores
from det_al.inference.passes import compute_prefix, run_passes, run_suffix, torchvision_forward

MODELS = {
    "fasterrcnn": "fasterrcnn_resnet50_fpn",
    "maskrcnn": "maskrcnn_resnet50_fpn",
    "retinanet": "retinanet_resnet50_fpn",
    "fcos": "fcos_resnet50_fpn",
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["fasterrcnn", "maskrcnn", "retinanet"],
                        choices=sorted(MODELS))
    parser.add_argument("--passes", nargs="+", type=int, default=[1, 5, 10, 20])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per cell; the fastest is reported (the least disturbed by other load)")
    parser.add_argument("--dense-repeats", type=int, default=5,
                        help="alternated runs without/with the dense candidates for the 'dense +%%' column")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--detections", type=int, default=100, help="target detections per image")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-plain", action="store_true", help="do not time (b)")
    parser.add_argument("--mask-modes", nargs="+", default=["exact", "shared"], choices=["exact", "shared"],
                        help="Mask R-CNN: time (c) with each passes.masks mode (one row each)")
    return parser


def _threshold_owner(model: torch.nn.Module) -> object:
    return model.roi_heads if hasattr(model, "roi_heads") else model


def calibrate_threshold(model: torch.nn.Module, image: torch.Tensor, target: int, family: str) -> tuple[float, int]:
    """Bisect the score threshold so that the deterministic pass gives about ``target`` detections.

    The prefix is computed once; only the (cheap) postprocessing is repeated.
    """
    owner = _threshold_owner(model)
    cap = owner.detections_per_img
    owner.detections_per_img = 10**6  # count detections after NMS, not the cap
    control = MCDropout((), [Chunk(None, 0.0)])
    with torch.inference_mode():
        prefix = compute_prefix(model, [image], family)

        def count(thresh: float) -> int:
            owner.score_thresh = thresh
            return len(run_suffix(model, prefix, control, [[None]], [0.0])[0][0])

        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if count(mid) > target:
                lo = mid
            else:
                hi = mid
        owner.score_thresh = lo
        owner.detections_per_img = cap
        return lo, count(lo)


def timed(fn, repeats: int) -> tuple[float, object]:
    """The fastest of ``repeats`` runs of ``fn`` and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def dense_work(model: torch.nn.Module, img: torch.Tensor, config: PassesConfig, device: str) -> float:
    """Seconds spent in the dense candidates' own work during one ``run_passes``: the
    accumulators (``DenseAccumulator.add`` / ``candidates``) and the one-stage anchor gathering
    (``_choose_one_stage`` / ``_add_one_stage``), timed by wrapping them, plus ``dense_scores``.
    On a loaded machine this resolves a few percent where a difference of two runs cannot."""
    import det_al.inference.passes as passes_module
    from det_al.inference.candidates import DenseAccumulator

    spent = [0.0]

    def timed_call(fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    originals = {"add": DenseAccumulator.add, "candidates": DenseAccumulator.candidates,
                 "_choose_one_stage": passes_module._choose_one_stage, "_add_one_stage": passes_module._add_one_stage}
    try:
        DenseAccumulator.add = timed_call(originals["add"])
        DenseAccumulator.candidates = timed_call(originals["candidates"])
        passes_module._choose_one_stage = timed_call(originals["_choose_one_stage"])
        passes_module._add_one_stage = timed_call(originals["_add_one_stage"])
        res = run_passes(model, [img], config, seeds=[0], device=device, fast=True)[0]
    finally:
        DenseAccumulator.add, DenseAccumulator.candidates = originals["add"], originals["candidates"]
        passes_module._choose_one_stage = originals["_choose_one_stage"]
        passes_module._add_one_stage = originals["_add_one_stage"]
    det = res.deterministic
    start = time.perf_counter()
    dense_scores(res.candidates, det.boxes, det.scores, ScoringConfig())
    return spent[0] + time.perf_counter() - start


def dense_cost(model: torch.nn.Module, img: torch.Tensor, config: PassesConfig, device: str,
               repeats: int) -> tuple[float, float]:
    """The least CPU time (``time.process_time``: this process's, so other processes' load
    moves it less than wall time) of ``repeats`` runs of ``run_passes`` without and with the
    dense candidates, alternated so that a change of load hits both alike."""
    without, with_dense = [], []
    for _ in range(repeats):
        for dense, times in ((False, without), (True, with_dense)):
            start = time.process_time()
            run_passes(model, [img], config, seeds=[0], device=device, fast=True, dense=dense)
            times.append(time.process_time() - start)
    return min(without), min(with_dense)


def matching_share(result, seconds: float) -> str:
    try:
        from det_al.scoring.matching import match_passes
        from det_al.scoring.uncertainty import score_objects
    except ImportError:
        return "n/a (det_al.scoring.matching / det_al.scoring.uncertainty missing)"
    anchor, passes = result.deterministic, result.passes

    def run():
        objects = match_passes(anchor, passes, 0.5, False)
        score_objects(anchor, passes, objects, ScoringConfig())
        return objects

    run()  # warm-up, as for (a)-(c)
    elapsed, objects = timed(run, 3)
    return f"{elapsed:.3f} s = {100 * elapsed / seconds:.1f}% of (c) ({len(objects.anchor)} objects, fastest of 3)"


def partners(result) -> str:
    """How many pass detections have a deterministic detection at box IoU >= 0.5."""
    from torchvision.ops import box_iou

    det = result.deterministic.boxes
    total = sum(len(p) for p in result.passes)
    near = sum(int((box_iou(p.boxes, det).max(1).values >= 0.5).sum()) for p in result.passes
               if len(p) and len(det))
    return f"{near}/{total}"


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    torch.manual_seed(0)
    image = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows, notes = [], []
    for key in args.families:
        family = "rcnn" if "rcnn" in key else key
        options = {"min_size": args.size, "max_size": args.size}
        torch.manual_seed(0)
        model = build_model(ModelConfig(MODELS[key], 91, options)).to(args.device)
        img = image.to(args.device)
        thresh, n = calibrate_threshold(model, img, args.detections, family)
        notes.append(f"{key}: score_thresh calibrated to {thresh:.6f} -> {n} detections in the deterministic pass")
        torchvision_forward(model, [img])  # warm-up
        t_a, _ = timed(lambda: torchvision_forward(model, [img]), args.repeats)
        last = None
        modes = args.mask_modes if key == "maskrcnn" else ["exact"]
        for t in args.passes:
            t_b = float("nan")
            if not args.skip_plain:
                config = PassesConfig(passes=t, dropout=args.dropout)
                t_b, _ = timed(lambda: run_passes(model, [img], config, seeds=[0], device=args.device, fast=False),
                               args.repeats)
            for mode in modes:
                config = PassesConfig(passes=t, dropout=args.dropout, masks=mode)
                run_passes(model, [img], config, seeds=[0], device=args.device, fast=True)  # warm-up
                t_c, res = timed(lambda: run_passes(model, [img], config, seeds=[0], device=args.device,
                                                    fast=True)[0], args.repeats)
                t_0, t_1 = dense_cost(model, img, config, args.device, args.dense_repeats)
                t_w = min(dense_work(model, img, config, args.device) for _ in range(2))
                mean_dets = sum(len(p) for p in res.passes) / len(res.passes)
                name = MODELS[key] + (f" ({mode} masks)" if key == "maskrcnn" else "")
                rows.append((name, t, t_a, t_b, t_c, t_c / t_a, t_b / t_c, mean_dets,
                             100 * t_w / t_c, 100 * (t_1 - t_0) / t_0))
                if mode == modes[0]:
                    last = (t, res, t_c)
                if mode == "shared" and t == max(args.passes):
                    notes.append(f"{key} (shared masks) at T={t}: {partners(res)} of the pass detections "
                                 f"reuse a deterministic detection's mask features (box IoU >= 0.5)")
                print(f"  {name} T={t}: a={t_a:.2f}s b={t_b:.2f}s c={t_c:.2f}s", flush=True)
        if last is not None:
            notes.append(f"{key}: matching + scoring at T={last[0]}: {matching_share(last[1], last[2])}")
    header = f"{'model':<40} {'T':>3} {'(a) det s':>10} {'(b) plain s':>12} {'(c) fast s':>11} " \
             f"{'(c)/(a)':>8} {'(b)/(c)':>8} {'dets/pass':>10} {'dense %':>8} {'on-off %':>9}"
    print(f"\nsize {args.size}px, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"dropout {args.dropout}, fastest of {args.repeats}, load average at the end "
          f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} cpus)")
    print(header)
    print("-" * len(header))
    for name, t, a, b, c, ca, bc, d, work, diff in rows:
        print(f"{name:<40} {t:>3} {a:>10.3f} {b:>12.3f} {c:>11.3f} {ca:>8.2f} {bc:>8.2f} {d:>10.1f} {work:>8.1f} {diff:>9.1f}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
