"""The restricted one-stage tail (``passes.tail: candidates``, det_al.inference.one_stage)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from det_al.config import PassesConfig
from det_al.inference.one_stage import conv_at, neighbourhoods, restrictable
from det_al.inference.passes import run_passes


def test_neighbourhoods_by_hand():
    # 2 x 3 map: position 5 is (y=1, x=2); its neighbours above-left (0, 1) = 1 and above (0, 2) = 2
    index = neighbourhoods(torch.tensor([5]), 2, 3)
    assert index.tolist() == [[1, 2, 6, 4, 5, 6, 6, 6, 6]]


def test_conv_at_equals_the_convolution_at_those_positions():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(4, 5, 7)
    positions = torch.tensor([0, 6, 17, 34])  # corners and the middle
    full = conv(x[None])[0].reshape(6, -1)[:, positions].T  # [n, O]
    got = conv_at(x, positions, torch.zeros(4, dtype=torch.long), [(conv, 6)], [None, None], [0.0, 0.0],
                  drop=False)[0]
    assert got.shape == (2, 4, 6)
    torch.testing.assert_close(got[1], full, atol=1e-5, rtol=0)
    # anchor groups: row j gets channels groups[j] * 2 .. + 2 (3 anchors of 2 outputs each)
    groups = torch.tensor([2, 0, 1, 2])
    got = conv_at(x, positions, groups, [(conv, 2)], [None], [0.0], drop=False)[0][0]
    for j, g in enumerate(groups.tolist()):
        torch.testing.assert_close(got[j], full[j, 2 * g: 2 * g + 2], atol=1e-5, rtol=0)
    assert restrictable(conv) and not restrictable(nn.Conv2d(4, 6, 1)) and not restrictable(nn.Conv2d(4, 6, 3))


def test_conv_at_drops_the_input_pixels_it_reads_with_the_pass_generator():
    """By hand: the keep-mask ``rand([U, C]) >= r`` over the U distinct pixels read (sorted flat
    indices, the zero padding last), applied to the map, then the convolution."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(3, 4, 4)
    positions = torch.tensor([5, 15])
    got = conv_at(x, positions, torch.zeros(2, dtype=torch.long), [(conv, 2)], [torch.Generator().manual_seed(3)],
                  [0.5], drop=True)[0][0]
    needed = torch.unique(neighbourhoods(positions, 4, 4))  # [U], 16 = the padding column
    keep = (torch.rand((needed.numel(), 3), generator=torch.Generator().manual_seed(3)) >= 0.5).float()
    mask = torch.zeros(3, 17)
    mask[:, needed] = keep.T
    dropped = x.reshape(3, 16) * mask[:, :16] * 2.0
    full = conv(dropped.reshape(1, 3, 4, 4))[0].reshape(2, -1)[:, positions].T
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)


def _retinanet():
    from det_al.config import ModelConfig
    from det_al.models.build import build_model

    torch.manual_seed(0)
    options = {"min_size": 64, "max_size": 96, "score_thresh": 0.0, "detections_per_img": 60}
    return build_model(ModelConfig("retinanet_resnet50_fpn", 4, options))


def test_candidates_tail_equals_exact_without_dropout_and_is_reproducible():
    """Without dropout a pass is the deterministic pass: every detection's anchor is a candidate,
    so the restricted tail finds the same detections as the exact one, and the same dense values."""
    model = _retinanet()
    im = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(2))
    saved = model.score_thresh
    try:
        base = run_passes(model, [im], PassesConfig(passes=1, dropout=0.0), seeds=[1])[0].deterministic
        model.score_thresh = float(base.scores.sort(descending=True).values[15])  # the restriction bites
        config = dict(passes=2, dropout=0.0, dense_candidates=20)
        exact = run_passes(model, [im], PassesConfig(**config), seeds=[1])[0]
        assert len(exact.deterministic) >= 10
        tail = run_passes(model, [im], PassesConfig(**config, tail="candidates"), seeds=[1])[0]
        for a, b in zip(exact.passes, tail.passes, strict=True):
            assert len(a) == len(b) == len(exact.deterministic)
            torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
            torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)
        torch.testing.assert_close(exact.candidates.foreground, tail.candidates.foreground, atol=1e-5, rtol=0)
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
    import pytest

    from det_al.config import config_from_dict
    from det_al.errors import InputError

    assert config_from_dict({"passes": {"tail": "candidates"}}).passes.tail == "candidates"
    with pytest.raises(InputError, match="passes.tail must be one of exact, candidates"):
        config_from_dict({"passes": {"tail": "some"}})
