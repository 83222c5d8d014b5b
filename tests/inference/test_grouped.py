"""Channel-group dropout (``passes.dropout_groups``): the hook's draws, the per-group sum of a
convolution, and the one-stage fast path against the plain path and torchvision's own forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from det_al.config import PassesConfig, config_from_dict
from det_al.errors import InputError
from det_al.inference import grouped
from det_al.inference.certified import Certified
from det_al.inference.dropout import Chunk, drop_rows, group_keep, mc_dropout
from det_al.inference.passes import _tail, dropout_groups, pass_seed, resolve_sites, run_passes, torchvision_forward
from det_al.inference.restricted import drop_pixels
from det_al.models.build import BUILDERS


def test_group_dropout_drops_whole_channel_groups_with_one_draw_per_chunk():
    x = torch.arange(1, 1 + 3 * 6 * 2 * 2, dtype=torch.float32).view(3, 6, 2, 2)
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    out = drop_rows(x, [Chunk(g0, 0.5, 2), Chunk(g1, 0.5, 1)], groups=3)
    # by hand: channel c is in group c * 3 // 6 = c // 2; a kept group is doubled (1 / (1 - 0.5))
    keep0 = torch.rand(3, generator=torch.Generator().manual_seed(3)) >= 0.5
    keep1 = torch.rand(3, generator=torch.Generator().manual_seed(4)) >= 0.5
    for row, keep in ((0, keep0), (1, keep0), (2, keep1)):  # rows 0-1 share chunk 0's draw
        for c in range(6):
            expected = x[row, c] * (2.0 if keep[c // 2] else 0.0)
            assert torch.equal(out[row, c], expected)
    # the same at every position of a channel: whole channels are kept or dropped
    assert ((out == 0).flatten(2).all(2) | (out != 0).flatten(2).all(2)).all()
    assert torch.equal(group_keep(torch.Generator().manual_seed(3), 0.5, 3), keep0.float() * 2.0)


def test_group_dropout_through_the_hook_on_a_linear_layer():
    net = nn.Sequential(nn.Identity(), nn.Linear(4, 1, bias=False)).eval()
    net[1].weight.data = torch.tensor([[1.0, 10.0, 100.0, 1000.0]])
    with mc_dropout(net, ["1"], 0.5, [torch.Generator().manual_seed(0)], groups=2):
        y = net(torch.ones(2, 4))
    keep = torch.rand(2, generator=torch.Generator().manual_seed(0)) >= 0.5
    expected = 2.0 * (11.0 * keep[0] + 1100.0 * keep[1])  # groups {0, 1} and {2, 3}
    assert torch.equal(y[:, 0], torch.full((2,), float(expected)))


@pytest.mark.parametrize("conv", [nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(6, 5, 1), nn.Conv2d(3, 4, 3, stride=2, padding=1)],
                         ids=["3x3", "1x1", "stride2-3ch"])
def test_conv_passes_equal_the_convolution_of_each_dropped_input(conv):
    torch.manual_seed(0)
    b_count, p_count, groups = 2, 3, 4  # 4 groups of 3 channels: one group is empty
    x = torch.randn(b_count, conv.in_channels, 7, 6)
    factors = (torch.rand(p_count * b_count, groups) >= 0.3).float() / 0.7
    with torch.no_grad():
        out = grouped.conv_passes(conv, x, factors)
        index = torch.arange(conv.in_channels) * groups // conv.in_channels
        for p in range(p_count):
            for i in range(b_count):
                dropped = x[i] * factors[p * b_count + i][index][:, None, None]
                torch.testing.assert_close(out[p * b_count + i], conv(dropped[None])[0], atol=1e-5, rtol=1e-5)
        partial = grouped.partial_outputs(conv, x[0], groups)
        torch.testing.assert_close(partial.sum(0) + conv.bias[:, None], conv(x[:1])[0].flatten(1), atol=1e-5, rtol=1e-5)
    assert out.shape[-2:] == conv(x).shape[-2:]


def test_restricted_pixels_get_the_same_group_factors():
    values = torch.rand(5, 8)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    out = drop_pixels(values, gens, [0.25, 0.0], groups=4)
    keep = torch.rand(4, generator=torch.Generator().manual_seed(1)) >= 0.25
    factors = keep.float().repeat_interleave(2) / 0.75
    torch.testing.assert_close(out[0], values * factors, atol=1e-6, rtol=0)
    assert torch.equal(out[1], values)


def _spread(model: nn.Module) -> nn.Module:
    """Untrained heads score every anchor near their prior: re-draw the last class convs so the
    scores spread and no two detections tie (the fast path sums in another order than a conv)."""
    torch.manual_seed(1)
    head = model.head.classification_head
    for conv in getattr(head, "module_list", None) or [head.cls_logits]:
        nn.init.normal_(conv.weight, std=0.05)
        nn.init.zeros_(conv.bias)
    return model.eval()


@pytest.mark.parametrize("name,tail", [("retinanet_tiny", "auto"), ("retinanet_tiny", "exact"), ("fcos_tiny", "auto"),
                                       ("ssd_tiny", "auto"), ("ssd_tiny", "exact")])
def test_one_stage_fast_path_with_groups_equals_the_plain_path_and_torchvision(name, tail, image):
    torch.manual_seed(0)
    model = _spread(BUILDERS[name](num_classes=4, detections_per_img=30))
    # SSD's restricted passes give their dense candidates only (like passes.tail: candidates), the
    # plain path every default box: with dense_candidates 0 both give every one
    config = PassesConfig(passes=3, dropout=(0.2, 0.3, 0.5), dropout_groups=8, tail=tail,
                          dense_candidates=0 if name == "ssd_tiny" else 1000)
    family, sites = resolve_sites(model, config)
    # auto with groups: RetinaNet's certified entries (scale 1 / (1 - 0.5)), else the dense grouped tail
    expected = Certified(8, 2.0) if family in ("retinanet", "ssd") and tail == "auto" else None
    assert _tail(model, family, sites, config) == expected
    images = [image(128, 128, 5), image(112, 128, 6)]
    fast = run_passes(model, images, config, seeds=[3, 4], fast=True)
    plain = run_passes(model, images, config, seeds=[3, 4], fast=False)
    for f, p in zip(fast, plain):
        assert len(f.passes) == 3
        # the dense candidates' values over the passes, too
        torch.testing.assert_close(f.candidates.boxes, p.candidates.boxes)
        torch.testing.assert_close(f.candidates.mutual_information, p.candidates.mutual_information, atol=1e-5, rtol=0)
        torch.testing.assert_close(f.candidates.foreground, p.candidates.foreground, atol=1e-5, rtol=0)
        assert f.candidates.mutual_information.max() > 0
        for a, b in zip(f.passes, p.passes, strict=True):
            assert len(a) == len(b) > 0
            torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
            torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
            assert torch.equal(a.labels, b.labels)
            torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)
    # the plain path is model(image) under the hook with the pass's generator
    generator = torch.Generator().manual_seed(pass_seed(3, 0, 1))
    ref = torchvision_forward(model, images[:1], sites, 0.3, generator, groups=8)[0]
    torch.testing.assert_close(plain[0].passes[1].boxes, ref["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(plain[0].passes[1].scores, ref["scores"], atol=1e-5, rtol=0)
    # and differs from element-wise dropout with the same seeds
    elementwise = run_passes(model, images[:1], PassesConfig(passes=3, dropout=(0.2, 0.3, 0.5), dropout_groups=0),
                             seeds=[3])
    assert not torch.allclose(elementwise[0].passes[1].scores[:5], fast[0].passes[1].scores[:5])


def test_dropout_groups_are_auto_or_a_count():
    for bad in (-1, "eight"):
        with pytest.raises(InputError, match="passes.dropout_groups must be auto or an integer >= 0"):
            config_from_dict({"passes": {"dropout_groups": bad}}, "cfg.yaml")
    assert config_from_dict({"passes": {"dropout_groups": 16}}, "cfg.yaml").passes.dropout_groups == 16
    auto = PassesConfig()
    assert auto.dropout_groups == "auto"
    assert [dropout_groups(f, auto) for f in ("rcnn", "retinanet", "fcos", "ssd")] == [0, 8, 8, 8]
    assert dropout_groups("ssd", PassesConfig(dropout_groups=0)) == 0


def test_group_dropout_needs_a_channel_dimension():
    with pytest.raises(ValueError, match="channel dimension"):
        drop_rows(torch.ones(4), [Chunk(torch.Generator().manual_seed(0), 0.5)], groups=2)


def test_certified_entries_hold_every_logit_a_pass_can_lift_over_the_threshold():
    """The bound b + s * sum_g max(Y_g, 0): no draw of group factors lifts a left-out entry over it."""
    from det_al.inference import certified

    model = _spread(BUILDERS["retinanet_tiny"](num_classes=4)).eval()
    conv = model.head.classification_head.cls_logits
    torch.manual_seed(2)
    x = torch.rand(conv.in_channels, 8, 8)
    mode = certified.Certified(groups=4, scale=1.0 / (1.0 - 0.5))
    model.score_thresh = 0.6
    with torch.no_grad():
        logits, level = certified.prepare(model, mode, x, torch.rand(conv.in_channels, 8, 8), [certified.CLS_SITE])
        torch.testing.assert_close(logits, conv(x[None])[0], atol=1e-4, rtol=1e-5)
        assert 0 < level.entries.numel() < logits.numel()  # it restricts, and keeps some
        kept = torch.zeros(logits.numel(), dtype=torch.bool)
        kept[level.entries] = True
        threshold = torch.logit(torch.tensor(0.6))
        index = torch.arange(conv.in_channels) * 4 // conv.in_channels
        for _ in range(50):
            f = (torch.rand(4) >= 0.5).float() * 2.0
            z = conv(x[None] * f[index][None, :, None, None])[0].flatten()
            assert not (z[~kept] > threshold).any()
        # the kept entries' partial outputs give a pass's logits there
        f = torch.tensor([2.0, 0.0, 2.0, 2.0])
        z = conv(x[None] * f[index][None, :, None, None])[0].flatten()
        combined = conv.bias[level.entries // 64] + f @ level.values
        torch.testing.assert_close(combined, z[level.entries], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["retinanet_tiny", "ssd_tiny"])
def test_certified_passes_detect_as_the_plain_path_with_few_candidates(name, image):
    """With 10 dense candidates the restricted passes evaluate only the entries (RetinaNet) or
    anchors (SSD) that can detect, and still find every detection of the whole-model passes."""
    torch.manual_seed(0)
    model = _spread(BUILDERS[name](num_classes=4, detections_per_img=30))
    model.score_thresh = 0.3 if name == "retinanet_tiny" else 0.6  # SSD: 787 of its 1280 anchors can detect
    config = PassesConfig(passes=3, dropout=0.3, dropout_groups=4, dense_candidates=10)
    fast = run_passes(model, [image(128, 128, 8)], config, seeds=[5])[0]
    plain = run_passes(model, [image(128, 128, 8)], config, seeds=[5], fast=False)[0]
    assert len(fast.candidates) == 10
    for a, b in zip(fast.passes, plain.passes, strict=True):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)


def test_ssd_anchors_left_out_stay_below_the_threshold_in_every_draw():
    from det_al.inference import certified

    torch.manual_seed(3)
    groups, anchors, classes, positions = 4, 2, 5, 30
    part = 0.5 * torch.randn(groups, anchors * classes, positions)
    bias = torch.randn(anchors, classes)
    bias[:, 0] += 2.0  # the background usually wins
    bias = bias.flatten()
    can = certified._ssd_can_detect(part, bias, classes, 1.25, 0.5)  # [L * A], anchor order; rate 0.2
    seen = torch.zeros_like(can)
    for _ in range(200):
        f = (torch.rand(groups) >= 0.2).float() * 1.25
        logits = bias[:, None] + torch.einsum("g,gol->ol", f, part)  # [A * K, L]
        probs = logits.view(anchors, classes, positions).softmax(1)
        seen |= (probs[:, 1:] > 0.5).any(1).t().reshape(-1)
    assert not (seen & ~can).any()
    assert 0 < int(seen.sum()) <= int(can.sum()) < can.numel()  # some detect, the bound leaves some out
    # without dropout (scale 0) the bound is the probability itself
    exact = certified._ssd_can_detect(part, bias, classes, 0.0, 0.5)
    probs = (bias[:, None] + part.sum(0)).view(anchors, classes, positions).softmax(1)
    assert torch.equal(exact, (probs[:, 1:] > 0.5).any(1).t().reshape(-1))
