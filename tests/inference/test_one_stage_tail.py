"""The restricted one-stage tail (``passes.tail: candidates``, det_al.inference.one_stage)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from det_al.config import PassesConfig
from det_al.inference import one_stage
from det_al.inference.restricted import NARROW_OUTPUTS, conv_at, neighbourhoods, restrictable
from det_al.inference.passes import run_passes


def test_neighbourhoods_by_hand():
    # 2 x 3 map: position 5 is (y=1, x=2); its neighbours above-left (0, 1) = 1 and above (0, 2) = 2
    index = neighbourhoods(torch.tensor([5]), 2, 3)
    assert index.tolist() == [[1, 2, 6, 4, 5, 6, 6, 6, 6]]


@pytest.mark.parametrize("outputs", [6, NARROW_OUTPUTS + 6])  # per-pixel products / gathered patches
def test_conv_at_equals_the_convolution_at_those_positions(outputs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, outputs, 3, padding=1)
    x = torch.randn(4, 5, 7)
    positions = torch.tensor([0, 6, 17, 34])  # corners and the middle
    full = conv(x[None])[0].reshape(outputs, -1)[:, positions].T  # [n, O]
    got = conv_at(x, positions, torch.zeros(4, dtype=torch.long), [(conv, outputs)], [None, None], [0.0, 0.0],
                  drop=False)[0]
    assert got.shape == (2, 4, outputs)
    torch.testing.assert_close(got[1], full, atol=1e-5, rtol=0)
    # anchor groups: row j gets channels groups[j] * w .. + w (3 anchors of w outputs each)
    groups, w = torch.tensor([2, 0, 1, 2]), outputs // 3
    got = conv_at(x, positions, groups, [(conv, w)], [None], [0.0], drop=False)[0][0]
    for j, g in enumerate(groups.tolist()):
        torch.testing.assert_close(got[j], full[j, w * g: w * g + w], atol=1e-5, rtol=0)
    assert restrictable(conv) and not restrictable(nn.Conv2d(4, 6, 1)) and not restrictable(nn.Conv2d(4, 6, 3))


def _dropped_conv(conv: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``conv`` at ``positions`` of ``x`` ``[3, 4, 4]`` whose pixels read got ``keep`` ``[U, 3]`` at rate 0.5."""
    needed = torch.unique(neighbourhoods(positions, 4, 4))  # [U], 16 = the padding column
    mask = torch.zeros(3, 17)
    mask[:, needed] = keep.T
    dropped = x.reshape(3, 16) * mask[:, :16] * 2.0
    return conv(dropped.reshape(1, 3, 4, 4))[0].reshape(conv.out_channels, -1)[:, positions].T


@pytest.mark.parametrize("outputs", [2, NARROW_OUTPUTS + 2])
def test_conv_at_drops_the_input_pixels_it_reads_with_the_pass_generator(outputs):
    """By hand: the keep-mask ``rand([U, C]) >= r`` over the U distinct pixels read (sorted flat
    indices, the zero padding last), applied to the map, then the convolution; two convs read one
    draw (``shared``, one site before both) or draw in turn (a site at each)."""
    torch.manual_seed(1)
    convs = [nn.Conv2d(3, outputs, 3, padding=1), nn.Conv2d(3, 1, 3, padding=1)]
    x = torch.randn(3, 4, 4)
    positions = torch.tensor([5, 15])
    rows = torch.zeros(2, dtype=torch.long)
    u = torch.unique(neighbourhoods(positions, 4, 4)).numel()
    draws = torch.Generator().manual_seed(3)
    first, second = [(torch.rand((u, 3), generator=draws) >= 0.5).float() for _ in range(2)]
    pairs = [(c, c.out_channels) for c in convs]
    one = conv_at(x, positions, rows, pairs, [torch.Generator().manual_seed(3)], [0.5], drop=True)
    for conv, got in zip(convs, one):
        torch.testing.assert_close(got[0], _dropped_conv(conv, x, positions, first), atol=1e-5, rtol=0)
    each = conv_at(x, positions, rows, pairs, [torch.Generator().manual_seed(3)], [0.5], drop=True, shared=False)
    for conv, got, keep in zip(convs, each, (first, second)):
        torch.testing.assert_close(got[0], _dropped_conv(conv, x, positions, keep), atol=1e-5, rtol=0)
    # a site at the second conv only: the first reads the map as it is, the second the first draw
    only = conv_at(x, positions, rows, pairs, [torch.Generator().manual_seed(3)], [0.5], drop=[False, True],
                   shared=False)
    torch.testing.assert_close(only[0][0], convs[0](x[None])[0].reshape(outputs, -1)[:, positions].T,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(only[1][0], _dropped_conv(convs[1], x, positions, first), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["retinanet", "fcos", "ssd"])
def test_candidates_tail_equals_exact_without_dropout_and_is_reproducible(family, model_for):
    """Without dropout a pass is the deterministic pass: every detection's anchor is a candidate,
    so the restricted tail finds the same detections as the exact one, and the same dense values."""
    model = model_for(family)
    im = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(2))
    saved = model.score_thresh
    try:
        base = run_passes(model, [im], PassesConfig(passes=1, dropout=0.0), seeds=[1])[0].deterministic
        ranked = base.scores.sort(descending=True).values
        model.score_thresh = float(ranked[15] + ranked[16]) / 2  # the restriction bites, no score at the edge
        config = dict(passes=2, dropout=0.0, dense_candidates=20)
        exact = run_passes(model, [im], PassesConfig(**config), seeds=[1])[0]
        assert len(exact.deterministic) >= 10
        tail = run_passes(model, [im], PassesConfig(**config, tail="candidates"), seeds=[1])[0]
        for a, b in zip(exact.passes, tail.passes, strict=True):
            assert len(a) == len(b) == len(exact.deterministic)
            torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
            torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)
        expected = exact.candidates.foreground
        if family == "ssd":  # exact keeps every default box, the restricted tail its 20 best
            expected = expected[expected.topk(20).indices.sort().values]
        torch.testing.assert_close(tail.candidates.foreground, expected, atol=1e-5, rtol=0)
        config = dict(passes=3, dropout=0.3, dense_candidates=20, tail="candidates")
        one = run_passes(model, [im], PassesConfig(**config), seeds=[4])[0]
        two = run_passes(model, [im], PassesConfig(**config, chunk=1), seeds=[4])[0]
        for a, b in zip(one.passes, two.passes, strict=True):
            torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)
        assert any(len(p) != len(one.deterministic) or not torch.equal(p.scores, one.deterministic.scores)
                   for p in one.passes)
    finally:
        model.score_thresh = saved


def test_passes_tail_must_be_exact_or_candidates():
    from det_al.config import config_from_dict
    from det_al.errors import InputError

    assert config_from_dict({"passes": {"tail": "candidates"}}).passes.tail == "candidates"
    with pytest.raises(InputError, match="passes.tail must be one of auto, exact, candidates"):
        config_from_dict({"passes": {"tail": "some"}})


@pytest.mark.parametrize("family, restricted", [("retinanet", False), ("fcos", True), ("ssd", True)])
def test_auto_tail_restricts_fcos_and_ssd_but_not_retinanet(family, restricted, model_for, monkeypatch):
    from det_al.inference import one_stage

    calls = []
    for name in ("tail_passes", "ssd_tail_passes"):
        original = getattr(one_stage, name)
        monkeypatch.setattr(one_stage, name, lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    im = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(2))
    assert PassesConfig().tail == "auto"
    # element-wise dropout (with the default channel groups every family's auto tail is exact)
    run_passes(model_for(family), [im], PassesConfig(passes=2, dropout=0.2, dropout_groups=0), seeds=[1])
    assert bool(calls) == restricted
    calls.clear()
    run_passes(model_for(family), [im], PassesConfig(passes=2, dropout=0.2, dropout_groups=0, tail="exact"), seeds=[1])
    assert not calls
    run_passes(model_for(family), [im], PassesConfig(passes=2, dropout=0.2), seeds=[1])
    assert not calls


@pytest.mark.parametrize("centerness", [False, True])
def test_foreground_from_the_highest_logit_equals_the_highest_probability(centerness):
    torch.manual_seed(0)
    cls = [torch.randn(2, 3 * 5, 4, 6), torch.randn(2, 3 * 5, 2, 3)]  # 3 anchors, 5 columns
    ctr = [torch.randn(2, 3, 4, 6), torch.randn(2, 3, 2, 3)] if centerness else None
    probs = one_stage.one_stage_probs(cls, ctr, 5, first=0)  # [2, R, 5]
    foreground, top = one_stage.one_stage_foreground(cls, ctr, 5)
    # equal up to the last bit sigmoid's vectorised and scalar code paths may differ in
    torch.testing.assert_close(foreground, probs[..., 1:].amax(-1), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(top, probs.amax(-1), atol=1e-7, rtol=1e-6)
    assert not torch.allclose(foreground, top)  # column 0 counts in top only


def test_ssd_detections_equal_torchvisions_class_by_class_postprocessing():
    """One sort instead of torchvision's loop over the classes, with a per-class cap that bites."""
    from det_al.inference.postprocess import ssd_detections
    from det_al.models.build import BUILDERS

    model = BUILDERS["ssd_tiny"](num_classes=5, score_thresh=0.15, topk_candidates=3, detections_per_img=12).eval()
    torch.manual_seed(0)
    r = 200
    anchors = torch.rand(r, 2) * 80
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(r, 2) * 30], 1)
    logits, deltas = torch.randn(1, r, 5) * 2, torch.randn(1, r, 4) * 0.1
    ref = model.postprocess_detections({"cls_logits": logits, "bbox_regression": deltas}, [anchors], [(128, 128)])[0]
    raw = ssd_detections(model, torch.softmax(logits[0], -1), deltas[0], anchors, (128, 128))
    assert len(ref["boxes"]) == 12  # the cap, after 3 per class (4 classes) at most
    torch.testing.assert_close(raw.boxes, ref["boxes"])
    torch.testing.assert_close(raw.scores, ref["scores"])
    assert torch.equal(raw.labels, ref["labels"])
