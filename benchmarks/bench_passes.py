"""Benchmark the pass engine (issues 3, 25): T stochastic passes should cost about one.

For each model (all five families by default), one 512-px image, T in --passes, seconds per image for

  (a) one deterministic pass: torchvision's own ``model(images)``;
  (b) the plain path (``--plain``): ``run_passes(fast=False)``: the deterministic pass + T
      whole-model passes under the same dropout hooks and generators;
  (c) det_al's engine: ``run_passes(fast=True)``, once per mode of the family: Mask R-CNN
      ``passes.masks`` exact / shared, RetinaNet, FCOS and SSD ``passes.tail`` exact / candidates;
      all with element-wise dropout (``passes.dropout_groups: 0``); and for the one-stage
      families their default, ``passes.dropout_groups: auto`` (8 channel groups; ``--groups N``
      for N, which adds the row to the R-CNNs too): not an approximation but another dropout,
      exact in its own right, so its agreement columns say how far its passes are from
      element-wise ones;

and the ratio (c)/(a), in wall time and in this process's CPU time (``time.process_time``: on
a machine shared with other jobs, wall time measures the load as much as the work; CPU time
much less). Beside each approximate mode, its agreement with the exact computation (the exact
fast path equals the plain path, which ``tests/test_passes.py`` checks): ``box IoU``, the IoU
between the mean box (over the passes that found it) of each deterministic detection's object
in this mode and in exact mode, averaged; ``rho``, Spearman's rank correlation of the
objects' uncertainty (:func:`det_al.scoring.uncertainty.score_objects`) between this mode and
exact mode. ``IoU seeds`` and ``rho seeds`` are the same between two exact runs with different
seeds: the MC noise floor an approximation cannot be asked to beat. Two optional columns
(``--dense-repeats N``) give the cost of the dense candidates (issue 18): ``dense %``, the
time in their own work as a share of (c); ``on-off %``, ``run_passes`` with against without them.

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
  pass per stochastic pass with ``tail: exact``. ``tail: candidates`` evaluates them only at the
  positions of the deterministic pass's 1,000 best anchors and those above threshold (at most
  1,000 of the 5,456 positions; fewer when anchors of one position cluster): per pass
  ~2 GMAC at worst, plus the gather of the 3x3 neighbourhoods and per-pass top-k/NMS.
- FCOS: the same with one anchor per position (``cls_logits`` 256 -> 91, ``bbox_reg``,
  ``bbox_ctrness``): the head's last convs are ~1.2 GMAC per pass with ``tail: exact``.
- SSD300: the site is the input of the whole head (3x3 convs on six feature maps, ~4.5 GMAC
  of the ~35 GMAC model), run for every pass with ``tail: exact``: ~13% of a deterministic pass
  per pass; ``tail: candidates`` evaluates them at the chosen anchors only, as for RetinaNet.
- Mask R-CNN, ``passes.masks: exact``: each pass runs the mask head (four 3x3 256-channel convs
  at 14x14, ~0.46 GMAC per RoI, ~46 GMAC for 100 boxes) and the 2x2 transposed conv to 28x28 on
  its own boxes, about as much as the rest of the model: the mask branch dominates and scales
  with T x boxes. Pass masks stay 28x28 in the box frame (no full-image paste per pass).
  ``shared`` runs it once on the deterministic boxes and gives each pass detection the
  features of the deterministic box it overlaps most (an empty mask where it overlaps none:
  only the objects the deterministic pass reports have a mask term), so T passes cost one mask
  branch plus a 1x1 layer per pass detection. With random weights most pass detections are
  new boxes (printed below the table), which only the mask term of the reported objects makes
  harmless (``bench_shared_masks.py`` and the demo figures in docs/scoring.md measure it on a
  trained model).

Usage::

    python benchmarks/bench_passes.py [--families fasterrcnn maskrcnn retinanet fcos ssd]
        [--passes 1 10 20] [--size 512] [--repeats 1] [--threads N] [--plain] [--dense-repeats N] [--groups N]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr
from torchvision.ops import box_iou

from det_al.config import ModelConfig, PassesConfig, ScoringConfig
from det_al.inference import one_stage
from det_al.inference.candidates import DenseAccumulator
from det_al.inference.dropout import Chunk, MCDropout
from det_al.inference.passes import ImagePasses, compute_prefix, run_passes, run_suffix, torchvision_forward
from det_al.models.build import build_model
from det_al.scoring.dense import dense_scores
from det_al.scoring.matching import match_passes
from det_al.scoring.uncertainty import score_objects

MODELS = {
    "fasterrcnn": "fasterrcnn_resnet50_fpn",
    "maskrcnn": "maskrcnn_resnet50_fpn",
    "retinanet": "retinanet_resnet50_fpn",
    "fcos": "fcos_resnet50_fpn",
    "ssd": "ssd300_vgg16",
}
# The fast-path modes timed per family: (config field, values); the first value is exact.
MODES = {"maskrcnn": ("masks", ["exact", "shared"]), "retinanet": ("tail", ["exact", "candidates"]),
         "fcos": ("tail", ["exact", "candidates"]), "ssd": ("tail", ["exact", "candidates"])}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    parser.add_argument("--passes", nargs="+", type=int, default=[1, 10, 20])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per cell; the fastest is reported (the least disturbed by other load)")
    parser.add_argument("--dense-repeats", type=int, default=0,
                        help="alternated runs without/with the dense candidates for the 'on-off %%' column (0: skip "
                             "both dense columns)")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--detections", type=int, default=100, help="target detections per image")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plain", action="store_true", help="also time (b), the plain path")
    parser.add_argument("--groups", type=int, default=0, metavar="N",
                        help="time passes.dropout_groups=N (default: auto, one-stage families only) beside the "
                             "element-wise modes; its agreement columns compare it with element-wise exact")
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


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """The fastest of ``repeats`` runs of ``fn``: wall seconds, this process's CPU seconds, last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), out


def dense_work(model: torch.nn.Module, img: torch.Tensor, config: PassesConfig, device: str) -> float:
    """Seconds spent in the dense candidates' own work during one ``run_passes``: the
    accumulators (``DenseAccumulator.add`` / ``candidates``) and the one-stage anchor gathering
    (:mod:`det_al.inference.one_stage`), timed by wrapping them, plus ``dense_scores``.
    On a loaded machine this resolves a few percent where a difference of two runs cannot."""
    spent = [0.0]

    def timed_call(fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    patched = [(DenseAccumulator, "add"), (DenseAccumulator, "candidates"), (one_stage, "choose_candidates"),
               (one_stage, "add_candidates"), (one_stage, "add_restricted")]
    originals = [getattr(owner, name) for owner, name in patched]
    try:
        for (owner, name), original in zip(patched, originals):
            setattr(owner, name, timed_call(original))
        res = run_passes(model, [img], config, seeds=[0], device=device, fast=True)[0]
    finally:
        for (owner, name), original in zip(patched, originals):
            setattr(owner, name, original)
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
    elapsed, _, objects = timed(run, 3)
    return f"{elapsed:.3f} s = {100 * elapsed / seconds:.1f}% of (c) ({len(objects.anchor)} objects, fastest of 3)"


def partners(result) -> str:
    """How many pass detections have a deterministic detection at box IoU >= 0.5."""
    from torchvision.ops import box_iou

    det = result.deterministic.boxes
    total = sum(len(p) for p in result.passes)
    near = sum(int((box_iou(p.boxes, det).max(1).values >= 0.5).sum()) for p in result.passes
               if len(p) and len(det))
    return f"{near}/{total}"


def anchored(result: ImagePasses) -> tuple[torch.Tensor, torch.Tensor]:
    """Per deterministic detection: its object's uncertainty ``[N]`` and mean box over the passes
    that found it ``[N, 4]`` (NaN where no pass did)."""
    objects = match_passes(result.deterministic, result.passes, 0.5, False)
    values = score_objects(result.deterministic, result.passes, objects, ScoringConfig())
    n = len(result.deterministic)
    uncertainty, boxes = torch.zeros(n), torch.full((n, 4), float("nan"))
    for k in torch.where(objects.anchor >= 0)[0].tolist():
        a = int(objects.anchor[k])
        uncertainty[a] = values["uncertainty"][k]
        found = [result.passes[t].boxes[i] for t, i in enumerate(objects.index[k].tolist()) if i >= 0]
        if found:
            boxes[a] = torch.stack(found).mean(0)
    return uncertainty, boxes


def agreement(reference: ImagePasses, other: ImagePasses) -> tuple[float, float]:
    """(mean IoU of the objects' mean boxes, Spearman rho of their uncertainty) between two runs
    whose deterministic passes are the same."""
    u_ref, b_ref = anchored(reference)
    u_other, b_other = anchored(other)
    both = ~(b_ref.isnan().any(1) | b_other.isnan().any(1))
    iou = box_iou(b_ref[both], b_other[both]).diagonal().mean().item() if both.any() else float("nan")
    if len(u_ref) < 3 or np.ptp(u_ref.numpy()) == 0 or np.ptp(u_other.numpy()) == 0:
        return iou, float("nan")  # no ranking to compare (e.g. T = 1: no disagreement)
    rho = float(spearmanr(u_ref.numpy(), u_other.numpy()).statistic)
    return iou, rho


def bench_model(key: str, args: argparse.Namespace, image: torch.Tensor, notes: list[str]) -> list[tuple]:
    """The rows of one model: per T and mode, times, ratios and agreement with exact mode."""
    family = "rcnn" if "rcnn" in key else key
    options = {} if key == "ssd" else {"min_size": args.size, "max_size": args.size}
    torch.manual_seed(0)
    model = build_model(ModelConfig(MODELS[key], 91, options)).to(args.device)
    img = image.to(args.device)
    thresh, n = calibrate_threshold(model, img, args.detections, family)
    notes.append(f"{key}: score_thresh calibrated to {thresh:.6f} -> {n} detections in the deterministic pass")
    torchvision_forward(model, [img])  # warm-up
    a_wall, a_cpu, _ = timed(lambda: torchvision_forward(model, [img]), args.repeats)
    field, values = MODES.get(key, ("masks", ["exact"]))
    modes = [(f"{field}:{v}", {field: v, "dropout_groups": 0}) for v in values]  # element-wise dropout
    if args.groups or family != "rcnn":  # channel-group dropout: compared with element-wise exact
        groups = args.groups or "auto"
        modes.append((f"dropout_groups:{groups}", {"dropout_groups": groups}))
    rows = []
    for t in args.passes:
        b_wall = float("nan")
        if args.plain:
            config = PassesConfig(passes=t, dropout=args.dropout)
            b_wall, _, _ = timed(lambda: run_passes(model, [img], config, seeds=[0], device=args.device,
                                                    fast=False), args.repeats)
        exact = None
        for label, overrides in modes:
            config = PassesConfig(passes=t, dropout=args.dropout, **overrides)
            if t == args.passes[0]:
                run_passes(model, [img], config, seeds=[0], device=args.device, fast=True)  # warm-up
            c_wall, c_cpu, res = timed(lambda: run_passes(model, [img], config, seeds=[0], device=args.device,
                                                          fast=True)[0], args.repeats)
            if exact is None:
                exact = res
                other_seed = run_passes(model, [img], config, seeds=[1], device=args.device, fast=True)[0]
                noise_iou, noise = agreement(exact, other_seed)
                iou, rho = 1.0, 1.0
            else:
                iou, rho = agreement(exact, res)
            work = diff = float("nan")
            if args.dense_repeats:
                t_0, t_1 = dense_cost(model, img, config, args.device, args.dense_repeats)
                work = 100 * min(dense_work(model, img, config, args.device) for _ in range(2)) / c_wall
                diff = 100 * (t_1 - t_0) / t_0
            mean_dets = sum(len(p) for p in res.passes) / len(res.passes)
            name = MODELS[key] + ("" if len(modes) == 1 else f" {label}")
            rows.append((name, t, a_wall, b_wall, c_wall, c_wall / a_wall, c_cpu / a_cpu, mean_dets,
                         iou, noise_iou, rho, noise, work, diff))
            if overrides.get("masks") == "shared" and t == max(args.passes):
                notes.append(f"{key} (shared masks) at T={t}: {partners(res)} of the pass detections "
                             f"are within box IoU 0.5 of a deterministic detection (members of the objects it reports)")
            print(f"  {name} T={t}: a={a_wall:.2f}s b={b_wall:.2f}s c={c_wall:.2f}s", flush=True)
    if exact is not None:
        notes.append(f"{key}: matching + scoring at T={max(args.passes)}: {matching_share(exact, rows[-len(modes)][4])}")
    return rows


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    torch.manual_seed(0)
    image = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows, notes = [], []
    for key in args.families:
        rows += bench_model(key, args, image, notes)
    header = (f"{'model':<42} {'T':>3} {'(a) det s':>9} {'(b) plain':>9} {'(c) fast':>9} {'(c)/(a)':>8} "
              f"{'cpu':>6} {'dets/pass':>9} {'box IoU':>8} {'IoU seeds':>9} {'rho':>6} {'rho seeds':>9} {'dense %':>8} "
              f"{'on-off %':>8}")
    print(f"\nsize {args.size}px (SSD300: 300px), device {args.device}, torch threads {torch.get_num_threads()}, "
          f"dropout {args.dropout}, fastest of {args.repeats}, load average at the end "
          f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} cpus); (c)/(a) in wall time, 'cpu' the same ratio in "
          f"process CPU time")
    print(header)
    print("-" * len(header))
    for name, t, a, b, c, ca, cpu, d, iou, noise_iou, rho, noise, work, diff in rows:
        print(f"{name:<42} {t:>3} {a:>9.3f} {b:>9.3f} {c:>9.3f} {ca:>8.2f} {cpu:>6.2f} {d:>9.1f} {iou:>8.3f} "
              f"{noise_iou:>9.3f} {rho:>6.3f} {noise:>9.3f} {work:>8.1f} {diff:>8.1f}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
