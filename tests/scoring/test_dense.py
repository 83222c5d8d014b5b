"""Dense, pre-threshold candidates (det_al.scoring.dense, det_al.inference.passes): hand-computed values, and on
each family's tiny model the candidates against torchvision's own head outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import resize_boxes

from det_al.config import PassesConfig, ScoringConfig, config_from_dict
from det_al.inference.candidates import Candidates, DenseAccumulator
from det_al.scoring.dense import dense_scores, topk_mean
from det_al.inference.passes import run_passes
from det_al.run.score_lines import score_image

BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 11.0]])


def test_softmax_accumulator_by_hand_over_two_chunks():
    acc = DenseAccumulator("softmax")
    first = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.8, 0.2]])[:, None]  # [R, T=1, C]
    second = torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.8, 0.2]])[:, None]
    acc.add(first, BOXES)
    acc.add(second, BOXES)
    c = acc.candidates()
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)  # 0.721928
    # candidate 0: agreeing uniform passes (MI 0); 1: opposite certain passes (MI 1); 2: agreeing
    torch.testing.assert_close(c.mutual_information, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c.entropy, torch.tensor([1.0, 1.0, h]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c.foreground, torch.tensor([0.5, 0.5, 0.2]), atol=1e-6, rtol=0)
    assert c.objectness is None and torch.equal(c.boxes, BOXES)


def test_sigmoid_accumulator_by_hand():
    acc = DenseAccumulator("sigmoid")
    acc.add(torch.tensor([[[0.9, 0.1], [0.1, 0.1]]]), BOXES[:1])  # one candidate, two passes
    c = acc.candidates()
    hb = -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))  # 0.468996 bits = H_b(0.1) = H_b(0.9)
    # class 1: mean 0.5, H_b 1 bit, mean of the passes' H_b = hb -> MI 1 - hb; class 2: MI 0
    assert c.mutual_information.item() == pytest.approx(1 - hb, abs=1e-6)
    assert c.entropy.item() == pytest.approx(1.0, abs=1e-6)
    assert c.foreground.item() == pytest.approx(0.5, abs=1e-6)


def test_candidates_that_change_between_passes_give_none():
    acc = DenseAccumulator("softmax")
    acc.add(torch.full((3, 1, 2), 0.5), BOXES)
    acc.add(torch.full((3, 1, 2), 0.5), BOXES + 1)
    assert acc.candidates() is None
    assert dense_scores(None, BOXES, torch.ones(3), ScoringConfig(image_weights={})) == {"dense": 0.0, "miss": 0.0, "n_candidates": 0}


def test_dense_miss_and_rpn_gap_by_hand():
    c = Candidates(BOXES, mutual_information=torch.tensor([0.1, 0.4, 0.2]), entropy=torch.tensor([0.9, 0.0, 0.5]),
                   foreground=torch.tensor([0.9, 0.6, 0.3]), objectness=torch.tensor([0.8, 0.5, 1.0]))
    # detection 0 explains candidates 0 and 2 (IoU 1 and 100/110); detection 1 scores below
    # min_score 0.05 and explains nothing, so candidate 1 is a miss
    dets, scores = BOXES[:2].clone(), torch.tensor([0.9, 0.01])
    out = dense_scores(c, dets, scores, ScoringConfig(image_weights={}, dense_topk=2))
    assert out == {"dense": pytest.approx(0.3), "miss": pytest.approx(0.6),
                   "rpn_gap": pytest.approx(0.45), "n_candidates": 3}  # gap = o (1 - f) = .08, .2, .7
    out = dense_scores(c, dets, scores, ScoringConfig(image_weights={}, dense_topk=1, dense_term="entropy", min_score=0.0))
    assert out["dense"] == pytest.approx(0.9) and out["miss"] == 0.0 and out["rpn_gap"] == pytest.approx(0.7)
    # no detection at all: every candidate is unexplained
    assert dense_scores(c, BOXES[:0], torch.zeros(0), ScoringConfig(image_weights={}, dense_topk=3))["miss"] == pytest.approx(0.6)
    assert topk_mean(torch.zeros(0), 3) == 0.0


def test_dense_config_is_checked():
    from det_al.errors import InputError

    base = {"model": {"name": "fasterrcnn_tiny", "num_classes": 3}}
    for key, value in (("dense_term", "variance"), ("dense_topk", 0), ("miss_iou", 0.0)):
        with pytest.raises(InputError, match=f"scoring.{key}"):
            config_from_dict({**base, "scoring": {key: value}})
    with pytest.raises(InputError, match="unknown config key 'scoring.dense_k'"):
        config_from_dict({**base, "scoring": {"dense_k": 3}})


def _reference(model, img, key):
    """Every candidate's boxes, foreground probability and entropy, from torchvision's own modules."""
    with torch.inference_mode():
        il, _ = model.transform([img])
        features = model.backbone(il.tensors)
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        if key in ("rcnn", "mask"):
            proposals, _ = model.rpn(il, features)
            x = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, proposals, il.image_sizes))
            probs = F.softmax(model.roi_heads.box_predictor(x)[0], -1)
            boxes = proposals[0]
        else:
            levels = list(features.values())
            out = model.head(levels)
            boxes = model.anchor_generator(il, levels)[0]
            if key == "ssd":
                probs = F.softmax(out["cls_logits"][0], -1)
            else:
                probs = torch.sigmoid(out["cls_logits"][0][:, 1:])
                if key == "fcos":
                    probs = torch.sqrt(probs * torch.sigmoid(out["bbox_ctrness"][0]))
    boxes = resize_boxes(boxes, il.image_sizes[0], img.shape[-2:])
    if key in ("rcnn", "mask", "ssd"):
        c = probs.shape[-1]
        return boxes, 1 - probs[:, 0], -torch.special.xlogy(probs, probs).sum(-1) / math.log(c)
    hb = -(torch.special.xlogy(probs, probs) + torch.special.xlogy(1 - probs, 1 - probs)) / math.log(2)
    return boxes, probs.amax(-1), hb.amax(-1)


@pytest.mark.parametrize("family, limit", [(family, 1000) for family in ("rcnn", "mask", "retinanet", "fcos", "ssd")]
                         + [("retinanet", 50), ("fcos", 0)])
def test_candidates_are_torchvisions_pre_threshold_outputs(image, model_for, family, limit):
    model, img = model_for(family), image(64, 80, seed=3)
    (res,) = run_passes(model, [img], PassesConfig(passes=2, dropout=0.0, dense_candidates=limit))
    boxes, foreground, entropy = _reference(model, img, family)
    if family in ("retinanet", "fcos") and 0 < limit < len(boxes):  # the `limit` anchors of highest foreground
        keep = foreground.topk(limit).indices.sort().values
        boxes, foreground, entropy = boxes[keep], foreground[keep], entropy[keep]
    c = res.candidates
    assert len(c) == len(boxes) > len(res.deterministic) or (limit == 50 and len(c) == 50)
    torch.testing.assert_close(c.boxes, boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(c.foreground, foreground, atol=1e-5, rtol=0)
    torch.testing.assert_close(c.entropy, entropy, atol=1e-5, rtol=0)
    assert float(c.mutual_information.max()) < 1e-5  # identical passes: no disagreement
    assert (c.objectness is not None) == (family in ("rcnn", "mask"))


def test_dropout_passes_give_dense_values_and_ranking_fields(image, model_for, family):
    model, img = model_for(family), image(64, 80, seed=4)
    config = PassesConfig(passes=3, dropout=0.3, tail="exact")  # the tail that equals plain
    (fast,) = run_passes(model, [img], config)
    (plain,) = run_passes(model, [img], config, fast=False)
    assert float(fast.candidates.mutual_information.max()) > 0.0  # untrained: small, not 0
    torch.testing.assert_close(fast.candidates.mutual_information, plain.candidates.mutual_information,
                               atol=1e-6, rtol=1e-3)
    cfg = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 4}})
    record = score_image(fast, cfg, [{"id": i} for i in (1, 2, 3)], with_masks=False).record
    expected = dense_scores(fast.candidates, fast.deterministic.boxes, fast.deterministic.scores, cfg.scoring)
    for name, value in expected.items():
        assert record[name] == (value if name == "n_candidates" else pytest.approx(value, abs=1e-6))
    assert ("rpn_gap" in record) == (family in ("rcnn", "mask"))
    scores = fast.deterministic.scores.double()
    assert record["least_confidence"] == pytest.approx(float(1 - scores.mean()), abs=1e-6)
    assert record["n_detections"] == len(fast.deterministic)


def _image_passes(n_detections: int):
    from det_al.inference.detections import Detections
    from det_al.inference.passes import ImagePasses

    det = Detections(BOXES[:n_detections], torch.full((n_detections,), 0.8), torch.ones(n_detections, dtype=torch.int64),
                     torch.tensor([[0.2, 0.8]]).repeat(n_detections, 1))
    candidates = Candidates(BOXES, mutual_information=torch.tensor([0.1, 0.4, 0.2]), entropy=torch.zeros(3),
                            foreground=torch.tensor([0.9, 0.6, 0.3]))
    return ImagePasses(det, [det, det], ["identity"] * 2, torch.zeros(2), candidates)


def test_image_weights_combine_image_fields_and_empty_means_no_candidate():
    base = {"model": {"name": "fasterrcnn_tiny", "num_classes": 2}, "scoring": {"dense_topk": 2}}
    weighted = config_from_dict({**base, "scoring": {"dense_topk": 2, "image_weights": {"objects": 1, "dense": 3}}})
    default = config_from_dict({**base, "scoring": {"dense_topk": 2, "image_weights": {}}})  # objects alone
    cats = [{"id": 1}]
    # one detection, found by both passes: every per-object term 0 except the class term
    plain = score_image(_image_passes(1), default, cats, False).record
    record = score_image(_image_passes(1), weighted, cats, False).record
    assert record["objects"] == plain["informativeness"] and "objects" not in plain
    assert record["dense"] == pytest.approx(0.3)  # top-2 of MI .1 .4 .2
    assert record["informativeness"] == pytest.approx((plain["informativeness"] + 3 * 0.3) / 4, abs=1e-6)
    # nothing detected: objects alone = empty (the median fill); weighted: scored by its candidates
    plain = score_image(_image_passes(0), default, cats, False).record
    record = score_image(_image_passes(0), weighted, cats, False).record
    assert plain["empty"] and plain["miss"] == pytest.approx(0.75)  # top-2 foreground .9 .6
    assert not record["empty"] and record["informativeness"] == pytest.approx(3 * 0.3 / 4)


def test_image_weights_are_checked():
    from det_al.errors import InputError

    base = {"model": {"name": "fasterrcnn_tiny", "num_classes": 3}}
    with pytest.raises(InputError, match=r"scoring.image_weights.novel' \(valid: class, box, dense"):
        config_from_dict({**base, "scoring": {"image_weights": {"novel": 1}}})
    with pytest.raises(InputError, match="non-negative"):
        config_from_dict({**base, "scoring": {"image_weights": {"dense": -1}}})
    with pytest.raises(InputError, match="positive weight"):
        config_from_dict({**base, "scoring": {"image_weights": {"dense": 0}}})
