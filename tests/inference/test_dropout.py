"""det_al.inference.dropout: pre-hook MC dropout, reversible, reproducible per pass."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from det_al.config import ModelConfig
from det_al.inference.dropout import Chunk, chunk_rows, default_sites, drop_rows, make_generators, mc_dropout
from det_al.models.build import build_model


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_drop_rows_scales_kept_values_by_inverse_keep_probability():
    x = torch.ones(4, 1000)
    y = drop_rows(x, [Chunk(torch.Generator().manual_seed(0), 0.25)])
    assert torch.isin(y, torch.tensor([0.0, 4.0 / 3.0])).all()
    assert abs((y == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(drop_rows(x, [Chunk(None, 0.0)]), x)


def test_chunk_rows_fixed_and_equal_shares():
    assert chunk_rows(6, [Chunk(None, 0.1)] * 3) == [2, 2, 2]
    assert chunk_rows(7, [Chunk(None, 0.1, 3), Chunk(None, 0.1), Chunk(None, 0.1)]) == [3, 2, 2]
    with pytest.raises(ValueError):
        chunk_rows(7, [Chunk(None, 0.1)] * 2)
    with pytest.raises(ValueError):
        chunk_rows(5, [Chunk(None, 0.1, 2), Chunk(None, 0.1, 2)])


def test_in_place_and_autograd_paths_give_the_same_values():
    x = torch.randn(6, 10)
    chunks = [Chunk(torch.Generator().manual_seed(s), r) for s, r in [(1, 0.3), (2, 0.0)]]
    with torch.no_grad():
        fast = drop_rows(x, chunks)
    chunks = [Chunk(torch.Generator().manual_seed(s), r) for s, r in [(1, 0.3), (2, 0.0)]]
    slow = drop_rows(x.clone().requires_grad_(True), chunks)
    assert torch.equal(fast, slow.detach())


def test_batched_passes_get_the_masks_of_passes_run_one_by_one():
    x = torch.randn(5, 16)
    seeds = [1, 2, 3]
    rates = [0.1, 0.4, 0.0]
    one_by_one = torch.cat(
        [drop_rows(x, [Chunk(g, r)]) for g, r in zip(make_generators(seeds), rates)]
    )
    batched = drop_rows(x.repeat(3, 1), [Chunk(g, r) for g, r in zip(make_generators(seeds), rates)])
    assert torch.equal(one_by_one, batched)
    assert torch.equal(batched[10:], x)  # the rate-0 pass is untouched


def test_hooks_change_outputs_and_leave_the_model_exactly_as_before():
    model = net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 8)
    before = model(x)
    with mc_dropout(model, ["2"], rates=[0.5, 0.5], generators=make_generators([1, 2])):
        y = model(x.repeat(2, 1))
        assert hooks(model) == 1
    assert not torch.equal(y[:4], before) and not torch.equal(y[:4], y[4:])
    assert hooks(model) == 0 and not model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)


def test_hooks_are_removed_after_an_exception():
    model = net()
    with pytest.raises(RuntimeError, match="boom"):
        with mc_dropout(model, ["0", "2"], rates=0.3):
            assert hooks(model) == 2
            raise RuntimeError("boom")
    assert hooks(model) == 0


def test_warns_when_no_site_matched():
    model = net()
    with pytest.warns(UserWarning, match="none of the sites"):
        with mc_dropout(model, ["roi_heads.box_predictor"], rates=0.3):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mc_dropout(model, ["2"], rates=0.3):
            pass


def test_per_pass_rate_list_and_validation():
    model = net()
    x = torch.randn(2, 8)
    with mc_dropout(model, ["2"], rates=[0.0, 0.9], generators=make_generators([1, 2])):
        y = model(x.repeat(2, 1))
    assert torch.equal(y[:2], model(x))
    assert not torch.equal(y[2:], model(x))
    with pytest.raises(ValueError):
        with mc_dropout(model, ["2"], rates=[0.1, 0.2], generators=make_generators([1])):
            pass
    with pytest.raises(ValueError):
        with mc_dropout(model, ["2"], rates=1.0):
            pass


def test_list_inputs_are_dropped_map_by_map():
    """The SSD site is the head, whose input is a list of feature maps."""
    maps = [torch.ones(2, 3, 4, 4), torch.ones(2, 5, 2, 2)]
    out = drop_rows(maps[0], [Chunk(torch.Generator().manual_seed(0), 0.5)])
    assert out.shape == maps[0].shape
    from det_al.inference.dropout import MCDropout

    control = MCDropout(("head",), [Chunk(torch.Generator().manual_seed(0), 0.5)])
    (dropped,) = control.hook(nn.Identity(), (maps,))
    assert [d.shape for d in dropped] == [m.shape for m in maps]
    assert all(set(d.unique().tolist()) <= {0.0, 2.0} for d in dropped)


def test_default_sites_exist_in_each_family():
    options = {"min_size": 64, "max_size": 64}
    for name, family, expected in [
        ("maskrcnn_tiny", "rcnn", ("roi_heads.box_predictor", "roi_heads.mask_predictor")),
        ("fasterrcnn_tiny", "rcnn", ("roi_heads.box_predictor",)),
        ("ssdlite320_mobilenet_v3_large", "ssd", ("head",)),
    ]:
        model = build_model(ModelConfig(name, 3, {} if family == "ssd" else options))
        assert default_sites(family, model) == expected
    assert len(default_sites("fcos")) == 3 and len(default_sites("retinanet")) == 2
    with pytest.raises(ValueError):
        default_sites("yolo")
