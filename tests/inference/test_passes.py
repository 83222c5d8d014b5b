"""det_al.inference.passes on tiny images for every model family.

Untrained models (weights=None), 64-96 px inputs, score thresholds 0 so there are detections
(``family``, ``model_for`` and ``image`` in conftest.py).
The references are torchvision's own ``model(images)`` (deterministic pass, and one dropout
pass under the same hooks) and the plain path (whole model per pass) for the fast engine.
"""

from __future__ import annotations

import pytest
import torch

from det_al.config import PassesConfig
from det_al.inference.detections import Detections
from det_al.inference.passes import dropout_groups, pass_seed, resolve_sites, run_passes, torchvision_forward


def assert_same(a: Detections, b: Detections, atol: float = 1e-4) -> None:
    assert len(a) == len(b)
    torch.testing.assert_close(a.boxes, b.boxes, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)
    assert (a.masks is None) == (b.masks is None)
    if a.masks is not None:
        torch.testing.assert_close(a.masks, b.masks, atol=1e-4, rtol=0)


def assert_equals_torchvision(det: Detections, ref: dict) -> None:
    assert len(det) == len(ref["boxes"]) > 0
    torch.testing.assert_close(det.boxes, ref["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(det.scores, ref["scores"], atol=1e-4, rtol=0)
    assert torch.equal(det.labels, ref["labels"])
    if "masks" in ref:
        torch.testing.assert_close(det.image_masks(), ref["masks"][:, 0], atol=1e-4, rtol=0)


def test_deterministic_pass_equals_torchvision_on_a_batch_of_two_sizes(image, model_for, family):
    model = model_for(family)
    images = [image(64, 80, 1), image(72, 64, 2)]
    refs = torchvision_forward(model, images)
    results = run_passes(model, images, PassesConfig(passes=2, dropout=0.2), seeds=[1, 2])
    for res, ref, im in zip(results, refs, images):
        assert_equals_torchvision(res.deterministic, ref)
        assert res.embedding.ndim == 1 and res.embedding.numel() > 0
        assert res.views == ["identity", "identity"] and len(res.passes) == 2
        if res.deterministic.masks is not None:
            assert res.deterministic.masks.shape[1:] == im.shape[1:]


def test_dropout_pass_equals_torchvision_under_the_same_hooks(image, model_for, family):
    """Pass 0 of image seed 7 == model(image) with the same hook and generator."""
    model = model_for(family)
    config = PassesConfig(passes=1, dropout=0.3, masks="exact", tail="exact")  # exact: what the whole model gives
    kind, sites = resolve_sites(model, config)
    generator = torch.Generator().manual_seed(pass_seed(7, 0, 0))
    # the family's default dropout: channel groups for the one-stage heads, element-wise for R-CNN
    ref = torchvision_forward(model, [image()], sites, 0.3, generator, dropout_groups(kind, config))[0]
    for fast in (False, True):
        det = run_passes(model, [image()], config, seeds=[7], fast=fast)[0].passes[0]
        assert_equals_torchvision(det, ref)


def test_fast_path_equals_plain_path_and_probs_are_consistent(image, model_for, family):
    model = model_for(family)
    config = PassesConfig(passes=3, dropout=(0.1, 0.3, 0.5), masks="exact", tail="exact")  # the modes that equal plain
    # two images for the cheap models (row layout across images); one for the ResNet-50 ones,
    # whose batched layout the chunked test covers
    images = [image(64, 80, 3), image(64, 80, 4)][: 1 if family in ("retinanet", "fcos") else 2]
    seeds = [11, 12][: len(images)]
    fast = run_passes(model, images, config, seeds=seeds, fast=True)
    plain = run_passes(model, images, config, seeds=seeds, fast=False)
    for f, p in zip(fast, plain):
        assert_same(f.deterministic, p.deterministic)
        torch.testing.assert_close(f.embedding, p.embedding)
        for a, b in zip(f.passes, p.passes, strict=True):
            assert_same(a, b)
        # dropout makes the passes differ from the deterministic pass
        assert any(len(a) != len(f.deterministic) or not torch.allclose(a.scores, f.deterministic.scores)
                   for a in f.passes)
        for det in [f.deterministic, *f.passes]:
            scores_at_label = det.probs.gather(1, det.labels[:, None])[:, 0]
            torch.testing.assert_close(scores_at_label, det.scores, atol=1e-6, rtol=0)
            if det.prob_kind == "softmax":
                torch.testing.assert_close(det.probs.sum(1), torch.ones(len(det)), atol=1e-5, rtol=0)
            else:
                assert ((det.probs >= 0) & (det.probs <= 1)).all()
            assert (det.labels >= 1).all() or det.prob_kind == "sigmoid"


@pytest.mark.parametrize("family", ["rcnn", "mask", "retinanet"])
def test_chunked_equals_unchunked_and_seeds_do_not_depend_on_the_batch(image, model_for, family):
    model = model_for(family)
    config = PassesConfig(passes=3, dropout=0.3)  # masks: shared, whose reuse spans the chunks
    whole = run_passes(model, [image(64, 80, 5), image(64, 80, 6)], config, seeds=[21, 22])
    chunked = run_passes(model, [image(64, 80, 5), image(64, 80, 6)], PassesConfig(passes=3, dropout=0.3, chunk=2),
                         seeds=[21, 22])
    alone = run_passes(model, [image(64, 80, 6)], config, seeds=[22])
    for a, b in zip(whole[0].passes, chunked[0].passes, strict=True):
        assert_same(a, b)
    for a, b in zip(whole[1].passes, alone[0].passes, strict=True):
        assert_same(a, b)


def test_rate_zero_pass_equals_the_deterministic_pass(image, model_for):
    model = model_for("rcnn")
    res = run_passes(model, [image()], PassesConfig(passes=2, dropout=(0.0, 0.5)), seeds=[3])[0]
    assert_same(res.passes[0], res.deterministic)
    assert len(res.passes[1]) != len(res.deterministic) or not torch.equal(res.passes[1].scores,
                                                                            res.deterministic.scores)


def test_user_site_upstream_of_the_suffix_uses_the_plain_path(image, model_for):
    """A site in the box head (inside the R-CNN prefix): fast=True must still give the plain result."""
    model = model_for("rcnn")
    config = PassesConfig(passes=2, dropout=0.3, sites=("roi_heads.box_head.fc7",), masks="exact")
    a = run_passes(model, [image()], config, seeds=[4], fast=True)[0]
    b = run_passes(model, [image()], config, seeds=[4], fast=False)[0]
    for x, y in zip(a.passes, b.passes, strict=True):
        assert_same(x, y)
    assert not torch.equal(a.passes[0].scores[:5], a.deterministic.scores[:5])


def test_hflip_view_maps_back_to_original_coordinates_and_fast_equals_plain(image, model_for):
    model = model_for("mask")
    im = image(64, 80, 8)
    ref = torchvision_forward(model, [im.flip(-1)])[0]
    res = run_passes(model, [im], PassesConfig(passes=1, dropout=0.0, tta=("hflip",)), seeds=[1])[0]
    assert res.views == ["identity", "hflip"]
    flipped = res.passes[1]
    x1, y1, x2, y2 = ref["boxes"].unbind(1)
    expected = torch.stack([80 - x2, y1, 80 - x1, y2], 1)
    torch.testing.assert_close(flipped.boxes, expected, atol=1e-4, rtol=0)
    # box-frame masks are mirrored with their box; pasted, they differ from the mirrored full
    # paste only where torchvision's integer rounding of the box is not mirror-symmetric
    pasted, mirrored = flipped.image_masks() > 0.5, ref["masks"][:, 0].flip(-1) > 0.5
    assert mirrored.any() and (pasted != mirrored).float().mean() < 0.002
    config = PassesConfig(passes=2, dropout=0.3, tta=("hflip", "scale:1.5"), masks="exact")
    fast = run_passes(model, [im], config, seeds=[2], fast=True)[0]
    plain = run_passes(model, [im], config, seeds=[2], fast=False)[0]
    assert fast.views == ["identity"] * 2 + ["hflip"] * 2 + ["scale:1.5"] * 2
    for a, b in zip(fast.passes, plain.passes, strict=True):
        assert_same(a, b)
        assert a.mask_canvas == tuple(im.shape[1:]) and a.masks.shape[1:] == (28, 28)  # box frame
        assert (a.boxes[:, 2] <= 80 + 1e-3).all() and (a.boxes[:, 3] <= 64 + 1e-3).all()
    # the scale view ran the network at 1.5x its resolution and put the transform back
    assert model.transform.min_size == (64,) and model.transform.max_size == 96


# --------------------------------------------------------------------------- passes.masks: shared


def test_shared_masks_equal_exact_masks_without_dropout_and_keep_every_box(image, model_for):
    model = model_for("mask")
    im = image(64, 80, 9)
    exact = run_passes(model, [im], PassesConfig(passes=2, dropout=0.0, masks="exact"), seeds=[5])[0]
    shared = run_passes(model, [im], PassesConfig(passes=2, dropout=0.0, masks="shared"), seeds=[5])[0]
    assert len(shared.deterministic) > 0
    assert_same(shared.deterministic, exact.deterministic)
    for a, b in zip(shared.passes, exact.passes, strict=True):
        assert_same(a, b)  # each pass's partner is its own deterministic twin
    # with dropout: the same detections (boxes, labels, probs), only the masks are derived
    config = PassesConfig(passes=3, dropout=0.4, masks="exact")
    exact = run_passes(model, [im], config, seeds=[6])[0]
    shared = run_passes(model, [im], PassesConfig(passes=3, dropout=0.4, masks="shared"), seeds=[6])[0]
    assert_same(shared.deterministic, exact.deterministic)
    for a, b in zip(shared.passes, exact.passes, strict=True):
        torch.testing.assert_close(a.boxes, b.boxes)
        torch.testing.assert_close(a.probs, b.probs)
        assert a.masks.shape == b.masks.shape
    again = run_passes(model, [im], PassesConfig(passes=3, dropout=0.4, masks="shared"), seeds=[6])[0]
    for a, b in zip(shared.passes, again.passes, strict=True):
        assert torch.equal(a.masks, b.masks)


def test_shared_mask_logits_are_the_partner_features_through_channel_dropout(image, model_for):
    """By hand: sigmoid(sum_d W[c, d] keep_d / (1 - r) F_d + b_c) pasted into the pass's box."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from det_al.inference.dropout import Chunk, mc_dropout
    from det_al.inference.masks import shared_masks
    from det_al.inference.prefix import compute_prefix
    from det_al.inference.suffix import run_suffix
    from det_al.inference.postprocess import Raw

    model = model_for("mask")
    im = image(64, 80, 10)
    sites = ("roi_heads.box_predictor", "roi_heads.mask_predictor")
    with torch.inference_mode(), mc_dropout(model, sites, 0.0, [None]) as control:
        with control.layout([Chunk(None, 0.0)]):
            prefix = compute_prefix(model, [im], "rcnn")
        run_suffix(model, prefix, control, [[None]], [0.0], masks="shared")
        cache = prefix.shared_masks
        det = cache.boxes[0]
        assert det.shape[0] >= 2
        shifted = det[1] + torch.tensor([0.0, 0.0, 1.0, 1.0]) * (det[1, 2:] - det[1, :2]).repeat(2) * 0.5
        boxes = torch.stack([det[0], shifted, torch.tensor([-50.0, -50.0, -40.0, -40.0])])  # 0, ~1, none
        labels = torch.tensor([1, 3, 2])
        raw = Raw(boxes, torch.ones(3), labels, torch.ones(3, 4) / 4, "softmax")
        shared_masks(model, prefix, control, [[torch.Generator().manual_seed(7)]], [0.25], [[raw]])
        from torchvision.ops import box_iou
        iou = box_iou(boxes, det)
    assert iou[1].argmax() == 1 and 0 < iou[1, 1] < 0.9 and iou[2].max() == 0
    conv = model.roi_heads.mask_predictor.mask_fcn_logits
    keep = (torch.rand((3, conv.in_channels), generator=torch.Generator().manual_seed(7)) >= 0.25).float()
    expected = []
    features = cache.features[0].clone()  # out of inference mode
    with torch.no_grad():
        for k in range(2):  # each takes the features of the deterministic box it overlaps most
            w = conv.weight[labels[k], :, 0, 0] * keep[k] / 0.75
            expected.append(torch.sigmoid((w[:, None, None] * features[k]).sum(0) + conv.bias[labels[k]]))
    torch.testing.assert_close(raw.masks[:2, 0], torch.stack(expected), atol=1e-5, rtol=0)
    assert raw.masks[2].max() == 0  # overlaps no deterministic box: an empty mask, never read
    pasted = paste_masks_in_image(raw.masks[:2], boxes[:2], (64, 80))
    assert pasted.shape == (2, 1, 64, 80)


def test_passes_masks_must_be_exact_or_shared():
    from det_al.config import config_from_dict
    from det_al.errors import InputError

    assert config_from_dict({"passes": {"masks": "shared"}}).passes.masks == "shared"
    with pytest.raises(InputError, match="passes.masks must be one of exact, shared"):
        config_from_dict({"passes": {"masks": "approximate"}})


def test_shared_masks_with_tta_views_and_a_batch_match_exact_without_dropout(image, model_for):
    """Each view takes the features of its own deterministic detections; images of a batch stay apart."""
    model = model_for("mask")
    images = [image(64, 80, 11), image(64, 80, 12)]
    config = dict(passes=2, dropout=0.0, tta=("hflip", "scale:1.5"))
    exact = run_passes(model, images, PassesConfig(**config, masks="exact"), seeds=[1, 2])
    shared = run_passes(model, images, PassesConfig(**config, masks="shared"), seeds=[1, 2])
    for e, s in zip(exact, shared, strict=True):
        assert s.views == e.views
        for a, b in zip(s.passes, e.passes, strict=True):
            assert_same(a, b)


def test_shared_mask_partners_are_the_most_overlapping_deterministic_boxes(image, model_for):
    """Across passes (pass-major), each detection's source is the deterministic box it overlaps
    most, -1 for a box that overlaps none."""
    from det_al.inference.dropout import Chunk, mc_dropout
    from det_al.inference.masks import _partners
    from det_al.inference.prefix import compute_prefix
    from det_al.inference.postprocess import Raw
    from det_al.inference.suffix import run_suffix

    model = model_for("mask")
    im = image(64, 80, 10)
    with torch.inference_mode(), mc_dropout(model, ("roi_heads.mask_predictor",), 0.0, [None]) as control:
        with control.layout([Chunk(None, 0.0)]):
            prefix = compute_prefix(model, [im], "rcnn")
        run_suffix(model, prefix, control, [[None]], [0.0], masks="shared")
        det = prefix.shared_masks.boxes[0]
        far = torch.tensor([[-50.0, -50.0, -40.0, -40.0]])
        rows = [[Raw(torch.cat([det[1:2], far]), torch.ones(2), torch.tensor([1, 2]), torch.ones(2, 4) / 4, "softmax")],
                [Raw(det[:1], torch.ones(1), torch.tensor([1]), torch.ones(1, 4) / 4, "softmax")]]
        sources = _partners(prefix, rows)
    assert det.shape[0] >= 2 and sources[0].tolist() == [1, -1, 0]