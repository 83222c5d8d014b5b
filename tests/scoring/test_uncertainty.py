"""Every uncertainty formula against values computed by hand (arithmetic in the comments).

ln 2 = 0.693147, ln 3 = 1.098612, ln 4 = 1.386294; H_b(p) = -p ln p - (1 - p) ln(1 - p).
"""

from __future__ import annotations

import math

import pytest
import torch

from det_al.config import ScoringConfig
from det_al.inference.detections import Detections, background_probs
from det_al.scoring.matching import Objects, match_passes
from det_al.scoring.gather import gather
from det_al.scoring.uncertainty import (
    box_components,
    class_components,
    combine_terms,
    found_class_components,
    mask_disagreement,
    score_objects,
)

LN2, LN3 = math.log(2), math.log(3)


def hb(p: float) -> float:
    return -sum(x * math.log(x) for x in (p, 1 - p) if x > 0)


def one_object_passes(
    probs: list[list[float]], kind: str, found: list[bool]
) -> tuple[Detections, list[Detections], Objects]:
    """One anchored object; pass t found it (at box [0, 0, 10, 10]) with probs[t] when found[t]."""
    c = len(probs[0])
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])

    def one(p: list[float]) -> Detections:
        score = torch.tensor([max(p[1:])])
        return Detections(box, score, torch.tensor([1]), torch.tensor([p]), prob_kind=kind)

    anchor = one(probs[0])
    passes = [one(p) if f else Detections.empty(c, kind) for p, f in zip(probs, found)]
    objects = Objects(
        index=torch.tensor([[0 if f else -1 for f in found]]), anchor=torch.tensor([0])
    )
    return anchor, passes, objects


def components(probs, kind, found=None):
    found = found or [True] * len(probs)
    anchor, passes, objects = one_object_passes(probs, kind, found)
    g = gather(anchor, passes, objects)
    return {k: v.item() for k, v in class_components(g.probs, kind).items()}


def test_softmax_class_components():
    # p1 = [0, 1, 0], p2 = [0, .5, .5], C = 3.
    # Var_t: c0 0; c1 (1, .5) -> mean .75, var .0625; c2 (0, .5) -> .0625. Sum .125 / (1 - 1/3) = .1875.
    # mean p = [0, .75, .25]: H = .75 ln(4/3) + .25 ln 4 = .215762 + .346574 = .562335; / ln 3 = .511859.
    # H(p1) = 0, H(p2) = ln 2 -> mean .346574; MI = (.562335 - .346574) / ln 3 = .196395.
    c = components([[0, 1, 0], [0, 0.5, 0.5]], "softmax")
    assert c["class_variance"] == pytest.approx(0.1875, abs=1e-6)
    assert c["entropy"] == pytest.approx((0.75 * math.log(4 / 3) + 0.25 * math.log(4)) / LN3, abs=1e-6)
    assert c["entropy"] == pytest.approx(0.511859, abs=1e-6)
    assert c["mutual_information"] == pytest.approx(0.196395, abs=1e-6)


def test_softmax_miss_contributes_background():
    # C = 2, found [0, 1] then a miss = background [1, 0].
    # Var: c0 (0, 1) -> .25, c1 .25; sum .5 / (1 - 1/2) = 1.  mean [.5, .5]: H = ln 2 / ln 2 = 1.
    # Both passes are one-hot (H = 0), so MI = 1.
    c = components([[0, 1], [0, 1]], "softmax", found=[True, False])
    assert c == pytest.approx({"class_variance": 1.0, "entropy": 1.0, "mutual_information": 1.0})


def test_softmax_agreement_is_zero():
    c = components([[0.1, 0.9], [0.1, 0.9]], "softmax")
    assert c["class_variance"] == pytest.approx(0.0, abs=1e-7)
    assert c["mutual_information"] == pytest.approx(0.0, abs=1e-7)
    assert c["entropy"] == pytest.approx(hb(0.1) / LN2, abs=1e-6)  # H([.1, .9]) / ln 2 = .468996


def test_sigmoid_class_components():
    # p1 = [0, .9, .5], p2 = [0, .5, .5] (column 0 = background, always 0 for sigmoid heads).
    # Var: c1 (.9, .5) -> mean .7, var .04; c2 0; max .04 / .25 = .16.
    # H_b(mean): c1 H_b(.7) = .610864, c2 H_b(.5) = ln 2 -> max ln 2 / ln 2 = 1.
    # MI: c1 H_b(.7) - (H_b(.9) + H_b(.5)) / 2 = .610864 - (.325083 + .693147) / 2 = .101749;
    #     c2 ln 2 - ln 2 = 0; max .101749 / ln 2 = .146793.
    c = components([[0, 0.9, 0.5], [0, 0.5, 0.5]], "sigmoid")
    assert c["class_variance"] == pytest.approx(0.16, abs=1e-6)
    assert c["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert c["mutual_information"] == pytest.approx((hb(0.7) - (hb(0.9) + hb(0.5)) / 2) / LN2, abs=1e-6)
    assert c["mutual_information"] == pytest.approx(0.146793, abs=1e-6)


def test_sigmoid_miss_contributes_zeros():
    # found [0, .8, .1], then a miss = [0, 0, 0].
    # Var: c1 (.8, 0) -> .16, c2 (.1, 0) -> .0025; max .16 / .25 = .64.
    # H_b(mean): c1 H_b(.4) = .673012, c2 H_b(.05) = .198515 -> .673012 / ln 2 = .970951.
    # MI: c1 .673012 - (H_b(.8) + 0) / 2 = .673012 - .250201 = .422811;
    #     c2 .198515 - H_b(.1) / 2 = .035974; max .422811 / ln 2 = .609987.
    c = components([[0, 0.8, 0.1], [0, 0.8, 0.1]], "sigmoid", found=[True, False])
    assert c["class_variance"] == pytest.approx(0.64, abs=1e-6)
    assert c["entropy"] == pytest.approx(hb(0.4) / LN2, abs=1e-6)
    assert c["entropy"] == pytest.approx(0.970951, abs=1e-6)
    assert c["mutual_information"] == pytest.approx((hb(0.4) - hb(0.8) / 2) / LN2, abs=1e-6)
    assert c["mutual_information"] == pytest.approx(0.609987, abs=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_class_components_in_unit_range(kind):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, 6, generator=g) * 5
    probs = logits.softmax(-1) if kind == "softmax" else logits.sigmoid()
    for value in class_components(probs, kind).values():
        assert value.shape == (50,)
        assert bool(((value >= 0) & (value <= 1)).all())


def test_box_components_two_boxes():
    # [0, 0, 10, 10] and [2, 0, 12, 10], the third pass missed: mean box [1, 0, 11, 10].
    # IoU with the mean: 9 * 10 / (100 + 100 - 90) = 9/11 each -> disagreement 2/11 = .181818.
    # std x1 (0, 2) = 1, x2 (10, 12) = 1, y1 = y2 = 0; width 10 -> (.1 + 0 + .1 + 0) / 4 = .05.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 0, 0]]])
    found = torch.tensor([[True, True, False]])
    c = box_components(boxes, found)
    assert c["box_disagreement"].item() == pytest.approx(2 / 11, abs=1e-6)
    assert c["box_spread"].item() == pytest.approx(0.05, abs=1e-6)


def test_box_components_three_boxes_and_height():
    # Object 0: x-boxes [0, 10], [0, 10], [3, 13] -> mean [1, 11];
    #   IoUs 9/11, 9/11, 8/12 -> mean (1.636364 + .666667) / 3 = .767677; disagreement .232323.
    #   x1 (0, 0, 3): deviations 1, 1, 2 from 1 -> var (1 + 1 + 4) / 3 = 2, std 1.414214; x2 same;
    #   spread (1.414214 / 10) * 2 / 4 = .0707107.
    # Object 1: [0, 0, 10, 20], [0, 4, 10, 24]: mean [0, 2, 10, 22], height 20;
    #   IoU 10 * 18 / (200 + 200 - 180) = 9/11 each; spread (0 + 2/20 + 0 + 2/20) / 4 = .05.
    boxes = torch.tensor(
        [
            [[0.0, 0, 10, 10], [0, 0, 10, 10], [3, 0, 13, 10]],
            [[0.0, 0, 10, 20], [0, 4, 10, 24], [0, 0, 0, 0]],
        ]
    )
    found = torch.tensor([[True, True, True], [True, True, False]])
    c = box_components(boxes, found)
    expected = [1 - (2 * 9 / 11 + 2 / 3) / 3, 2 / 11]
    assert c["box_disagreement"].tolist() == pytest.approx(expected, abs=1e-6)
    assert c["box_spread"].tolist() == pytest.approx([math.sqrt(2) / 20, 0.05], abs=1e-6)


def test_box_components_fewer_than_two_found():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 90, 90]]])
    c = box_components(boxes, torch.tensor([[True, False]]))
    assert c["box_disagreement"].item() == 0.0 and c["box_spread"].item() == 0.0
    c = box_components(torch.zeros(0, 3, 4), torch.zeros(0, 3, dtype=torch.bool))
    assert c["box_disagreement"].shape == (0,)


def test_box_spread_clipped_to_one():
    # Two far-apart tiny boxes: std 50 over a width of 2 -> clipped to 1.
    boxes = torch.tensor([[[0.0, 0, 2, 2], [100, 100, 102, 102]]])
    c = box_components(boxes, torch.ones(1, 2, dtype=torch.bool))
    assert c["box_spread"].item() == 1.0
    assert c["box_disagreement"].item() == pytest.approx(1.0)  # IoU with mean box [50, 50, 52, 52] = 0


def mask_passes(masks: list[torch.Tensor], boxes: list[list[float]]) -> tuple[list[Detections], Objects]:
    """One object found by every pass, pass t's mask probabilities ``masks[t]`` [10, 10]."""
    passes = [
        Detections(
            torch.tensor([b]), torch.tensor([0.9]), torch.tensor([1]), torch.tensor([[0.1, 0.9]]),
            masks=m[None],
        )
        for m, b in zip(masks, boxes)
    ]
    objects = Objects(index=torch.zeros(1, len(masks), dtype=torch.int64), anchor=torch.tensor([0]))
    return passes, objects


def test_mask_disagreement():
    # M1 = M2 = rows 0-3 x cols 0-3 (16 px, prob .9); M3 = rows 0-3 x cols 0-7 (32 px, prob .9).
    # Mean probs: cols 0-3: .9 > .5 (in); cols 4-7: .3 (out) -> mean mask = the 16 px.
    # IoUs 1, 1, 16/32 = .5 -> 1 - 2.5/3 = 1/6.
    m = torch.zeros(3, 10, 10)
    m[:, :4, :4] = 0.9
    m[2, :4, 4:8] = 0.9
    passes, objects = mask_passes(list(m), [[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 8, 4]])
    assert mask_disagreement(passes, objects).item() == pytest.approx(1 / 6, abs=1e-6)


def test_mask_mean_of_probabilities_and_empty_masks():
    # M1 = M2 = .55 on rows 0-3 x cols 0-3 (thresholded: 16 px each); M3 = 0 (empty).
    # Mean prob there (.55 + .55 + 0) / 3 = .367 <= .5 -> the mean mask is empty (a majority vote
    # of the thresholded masks would not be). IoU(M1, {}) = IoU(M2, {}) = 0; IoU({}, {}) = 1
    # -> 1 - 1/3 = 2/3.
    m = torch.zeros(3, 10, 10)
    m[:2, :4, :4] = 0.55
    passes, objects = mask_passes(list(m), [[0, 0, 4, 4]] * 3)
    assert mask_disagreement(passes, objects).item() == pytest.approx(2 / 3, abs=1e-6)


def test_mask_just_outside_its_box_counts():
    # Boxes [2, 2, 5, 5]; M1 = rows/cols 1-5 (25 px, 1 px outside the box), M2 = rows/cols 2-4 (9 px),
    # both prob .9. Mean: the 9 px core .9 (in), the ring .45 (out) -> mean mask = the 9 px.
    # IoU(M1) = 9/25 = .36, IoU(M2) = 1 -> 1 - 1.36 / 2 = .32, with or without the crop.
    m = torch.zeros(2, 10, 10)
    m[0, 1:6, 1:6] = 0.9
    m[1, 2:5, 2:5] = 0.9
    passes, objects = mask_passes(list(m), [[2, 2, 5, 5]] * 2)
    assert mask_disagreement(passes, objects).item() == pytest.approx(0.32, abs=1e-6)
    assert mask_disagreement(passes, objects, margin=100.0).item() == pytest.approx(0.32, abs=1e-6)


def test_mask_disagreement_zero_cases():
    m = torch.zeros(2, 10, 10)
    m[:, 2:5, 2:5] = 0.8
    passes, objects = mask_passes(list(m), [[2, 2, 5, 5]] * 2)
    assert mask_disagreement(passes, objects).item() == 0.0  # identical masks
    one = Objects(index=torch.tensor([[0, -1]]), anchor=torch.tensor([0]))
    assert mask_disagreement(passes, one).item() == 0.0  # found once
    nomask = [Detections(p.boxes, p.scores, p.labels, p.probs) for p in passes]
    assert mask_disagreement(nomask, objects).item() == 0.0  # no masks


def test_mask_disagreement_several_objects():
    # Each pass holds two detections. Object 0: the three masks of test_mask_disagreement
    # (1/6); object 1: found by pass 0 only (0); object 2: the two masks of
    # test_mask_just_outside_its_box_counts in passes 1 and 2 (.32), when anchored.
    a = torch.zeros(3, 10, 10)
    a[:, :4, :4] = 0.9
    a[2, :4, 4:8] = 0.9
    other = torch.zeros(3, 10, 10)
    other[1, 1:6, 1:6] = 0.9
    other[2, 2:5, 2:5] = 0.9
    boxes_a = [[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 8, 4]]
    boxes_other = [[5, 5, 8, 8], [2, 2, 5, 5], [2, 2, 5, 5]]
    passes = [
        Detections(
            torch.tensor([boxes_a[t], boxes_other[t]], dtype=torch.float32), torch.tensor([0.9, 0.9]),
            torch.tensor([1, 1]), torch.tensor([[0.1, 0.9]] * 2), masks=torch.stack([a[t], other[t]]),
        )
        for t in range(3)
    ]
    objects = Objects(index=torch.tensor([[0, 0, 0], [1, -1, -1], [-1, 1, 1]]), anchor=torch.tensor([0, 1, 2]))
    assert mask_disagreement(passes, objects).tolist() == pytest.approx([1 / 6, 0.0, 0.32], abs=1e-6)
    # objects the deterministic pass does not report get no mask term, whatever their masks
    objects = Objects(index=objects.index, anchor=torch.tensor([0, -1, -1]))
    assert mask_disagreement(passes, objects).tolist() == pytest.approx([1 / 6, 0.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_found_class_components_equal_dense(kind):
    # From the found rows only (misses in closed form) = from the [K, T, C] tensor in which
    # every miss holds background_probs.
    g = torch.Generator().manual_seed(0)
    k, t, c = 6, 5, 4
    logits = torch.randn(k, t, c, generator=g) * 3
    probs = logits.softmax(-1) if kind == "softmax" else logits.sigmoid()
    found = torch.rand(k, t, generator=g) < 0.6
    found[0] = False  # an object every pass missed
    dense = torch.where(found[..., None], probs, background_probs(c, kind))
    object_index = found.nonzero()[:, 0]
    sparse = found_class_components(probs[found], object_index, k, t, kind)
    for name, value in class_components(dense, kind).items():
        assert sparse[name].tolist() == pytest.approx(value.tolist(), abs=1e-6), name
    assert found_class_components(probs[found], object_index, k, 0, kind)["entropy"].tolist() == [0.0] * k


def scene(kind: str) -> tuple[Detections, list[Detections], Objects]:
    """Anchor: one object (score .9, label 1). Passes: T = 4.

    Object 0 (anchored) found by passes 0 and 1 (scores .6, .3) at [0, 0, 10, 10] and
    [2, 0, 12, 10]; object 1 (not anchored) found by passes 0, 1, 2 at [50, 0, 60, 10] with
    labels 2, 1, 2 and scores .4, .2, .3.
    """
    c = 3

    def d(boxes, scores, labels, probs):
        return Detections(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores),
            torch.tensor(labels, dtype=torch.int64), torch.tensor(probs).reshape(-1, c), prob_kind=kind,
        )

    one_hot = [0.0, 1.0, 0.0]
    anchor = d([[0, 0, 10, 10]], [0.9], [1], [one_hot])
    far = [50, 0, 60, 10]
    passes = [
        d([far, [0, 0, 10, 10]], [0.4, 0.6], [2, 1], [[0, 0, 1], one_hot]),
        d([[2, 0, 12, 10], far], [0.3, 0.2], [1, 1], [one_hot, [0, 1, 0]]),
        d([far], [0.3], [2], [[0, 0, 1]]),
        Detections.empty(c, kind),
    ]
    return anchor, passes, match_passes(anchor, passes)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_score_objects_scene(kind):
    anchor, passes, objects = scene(kind)
    assert objects.index.tolist() == [[1, 0, -1, -1], [0, 1, 0, -1]]
    v = score_objects(anchor, passes, objects, ScoringConfig(image_weights={}))
    # presence: 2/4 = .5 -> 4 * .5 * .5 = 1; 3/4 -> 4 * .75 * .25 = .75.
    assert v["presence"].tolist() == pytest.approx([0.5, 0.75])
    assert v["presence_uncertainty"].tolist() == pytest.approx([1.0, 0.75])
    # score: (.9 + .6 + .3) / 3 = .6 (anchor included); (.4 + .2 + .3) / 3 = .3.
    assert v["score"].tolist() == pytest.approx([0.6, 0.3])
    # label: the anchor's 1; majority of (2, 1, 2) = 2.
    assert v["label"].tolist() == [1, 2]
    assert v["label"].dtype == torch.int64
    # box: object 0 as in test_box_components_two_boxes; object 1 always the same box.
    assert v["box_disagreement"].tolist() == pytest.approx([2 / 11, 0.0], abs=1e-6)
    assert v["box_spread"].tolist() == pytest.approx([0.05, 0.0], abs=1e-6)
    assert v["mask_disagreement"].tolist() == [0.0, 0.0]
    if kind == "softmax":
        # object 0: [0,1,0] x2 + background [1,0,0] x2: Var c0 = Var c1 = .25, sum .5 / (2/3) = .75.
        # object 1: [0,0,1], [0,1,0], [0,0,1], [1,0,0]: Var c0 = 3/16, c1 = 3/16, c2 = 1/4
        #   -> sum 10/16 = .625 / (2/3) = .9375.
        expected_var = [0.75, 0.9375]
    else:
        # object 0: c1 (1, 1, 0, 0) -> .25 / .25 = 1; object 1: c2 (1, 0, 1, 0) -> 1.
        expected_var = [1.0, 1.0]
    assert v["class_variance"].tolist() == pytest.approx(expected_var, abs=1e-6)
    # uncertainty (no masks): (class_variance + box_disagreement + presence_uncertainty) / 3.
    expected = [(expected_var[0] + 2 / 11 + 1.0) / 3, (expected_var[1] + 0 + 0.75) / 3]
    assert v["uncertainty"].tolist() == pytest.approx(expected, abs=1e-6)
    keys = {"class_variance", "entropy", "mutual_information", "box_disagreement", "box_spread",
            "mask_disagreement", "presence", "presence_uncertainty", "score", "label", "uncertainty"}
    assert keys <= set(v)
    for name in keys - {"label"}:
        assert v[name].shape == (2,) and not v[name].isnan().any()


def test_uncertainty_weights_and_class_term():
    anchor, passes, objects = scene("softmax")
    # object 0: entropy of mean [.5, .5, 0] = ln 2 / ln 3 = .630930; presence_uncertainty 1.
    # weights class 2, presence 1, box missing (0): (2 * .630930 + 1) / 3 = .753953.
    scoring = ScoringConfig(image_weights={}, class_term="entropy", weights={"class": 2.0, "presence": 1.0})
    v = score_objects(anchor, passes, objects, scoring)
    assert v["entropy"][0].item() == pytest.approx(LN2 / LN3, abs=1e-6)
    assert v["uncertainty"][0].item() == pytest.approx((2 * LN2 / LN3 + 1) / 3, abs=1e-6)
    # masks=True brings the mask term (0 here) into the mean: (.75 + 2/11 + 0 + 1) / 4.
    v = score_objects(anchor, passes, objects, ScoringConfig(image_weights={}), masks=True)
    assert v["uncertainty"][0].item() == pytest.approx((0.75 + 2 / 11 + 1.0) / 4, abs=1e-6)
    # No weight applies -> 0.
    v = score_objects(anchor, passes, objects, ScoringConfig(image_weights={}, weights={"mask": 1.0}))
    assert v["uncertainty"].tolist() == [0.0, 0.0]


def test_combine_terms():
    # (3 * 1 + 1 * 0) / 4 = .75; the "mask" weight does not apply (no mask term).
    terms = {"class": torch.tensor([1.0, 0.5]), "box": torch.tensor([0.0, 0.5])}
    assert combine_terms(terms, {"class": 3, "box": 1, "mask": 5}).tolist() == [0.75, 0.5]


def test_score_objects_empty_and_no_passes():
    anchor = Detections.empty(3)
    objects = match_passes(anchor, [Detections.empty(3)] * 2)
    v = score_objects(anchor, [Detections.empty(3)] * 2, objects, ScoringConfig(image_weights={}))
    assert all(t.shape == (0,) for t in v.values())
    # T = 0: no stochastic pass, every disagreement 0, score/label from the anchor.
    anchor, _, _ = scene("softmax")
    v = score_objects(anchor, [], match_passes(anchor, []), ScoringConfig(image_weights={}))
    assert v["uncertainty"].tolist() == [0.0] and v["presence"].tolist() == [0.0]
    assert v["score"].tolist() == pytest.approx([0.9]) and v["label"].tolist() == [1]


def test_score_objects_mismatched_passes():
    anchor, passes, objects = scene("softmax")
    with pytest.raises(ValueError, match="passes"):
        score_objects(anchor, passes[:2], objects, ScoringConfig(image_weights={}))
    bad = passes[:3] + [Detections.empty(5)]
    with pytest.raises(ValueError, match="probabilities"):
        score_objects(anchor, bad, objects, ScoringConfig(image_weights={}))


def test_expected_score_counts_misses_as_zero():
    # One anchored object (anchor score .9) found in 1 of 2 passes at .7, missed in the other:
    # score = (.9 + .7) / 2 = .8; expected_score = (.9 + .7 + 0) / 3 = .5333
    from det_al.inference.detections import Detections
    from det_al.scoring.matching import match_passes

    def det(scores):
        n = len(scores)
        return Detections(
            boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]] * n).reshape(n, 4), scores=torch.tensor(scores).reshape(n),
            labels=torch.ones(n, dtype=torch.int64), probs=torch.tensor([[0.1, 0.9]] * n).reshape(n, 2),
        )

    anchor, passes = det([0.9]), [det([0.7]), det([])]
    v = score_objects(anchor, passes, match_passes(anchor, passes), ScoringConfig(image_weights={}))
    assert float(v["score"][0]) == pytest.approx(0.8)
    assert float(v["expected_score"][0]) == pytest.approx(1.6 / 3)
    assert bool(v["anchored"][0])
