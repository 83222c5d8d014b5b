"""train.batchnorm: freezing, syncing and the training runs that use them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from det_al.models.batchnorm import freeze_batchnorm, prepare_batchnorm, resolve_batchnorm
from det_al.models.checkpoint import load_checkpoint, save_checkpoint
from det_al.config import config_from_dict
from det_al.errors import InputError
from det_al.models.build import build_model
from det_al.loop.training import train_model


def _bn(channels, mean, var, weight=None, bias=None, eps=0.0, **kwargs):
    layer = nn.BatchNorm2d(channels, eps=eps, **kwargs)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor(mean))
        layer.running_var.copy_(torch.tensor(var))
        if weight is not None:
            layer.weight.copy_(torch.tensor(weight))
            layer.bias.copy_(torch.tensor(bias))
    return layer


def test_frozen_layer_by_hand():
    # (x - mean) / sqrt(var + eps) * weight + bias: (6 - 2) / 2 * 3 + 1 = 7; (0 - 1) / 1 * 1 + 0 = -1
    net = nn.Sequential(_bn(2, [2.0, 1.0], [4.0, 1.0], weight=[3.0, 1.0], bias=[1.0, 0.0]))
    assert freeze_batchnorm(net) == 1
    assert type(net[0]) is FrozenBatchNorm2d and net[0].eps == 0.0
    x = torch.tensor([6.0, 0.0]).reshape(1, 2, 1, 1)
    net.train()  # frozen: running statistics in train mode too
    assert net(x).flatten().tolist() == [7.0, -1.0]
    assert list(net.parameters()) == []


def test_freeze_keeps_eval_outputs_and_skips_what_it_cannot_freeze():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        _bn(4, [0.1, -0.2, 0.3, 0.0], [0.5, 2.0, 1.5, 1.0], eps=1e-3),
        nn.Sequential(nn.Conv2d(4, 4, 1), _bn(4, [1.0, 0.0, 0.0, -1.0], [1.0, 1.0, 3.0, 1.0], affine=False)),
        nn.BatchNorm2d(4, track_running_stats=False),  # batch statistics even in eval: stays
        nn.GroupNorm(2, 4),
    )
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    before = net(x)
    assert freeze_batchnorm(net) == 2
    assert type(net[1]) is FrozenBatchNorm2d and net[1].eps == 1e-3
    assert type(net[2][1]) is FrozenBatchNorm2d  # nested; affine=False: weight 1, bias 0
    assert net[2][1].weight.tolist() == [1.0] * 4 and net[2][1].bias.tolist() == [0.0] * 4
    assert type(net[3]) is nn.BatchNorm2d and type(net[4]) is nn.GroupNorm
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)


def test_resolve_and_prepare():
    assert resolve_batchnorm("auto", from_checkpoint=True) == "frozen"
    assert resolve_batchnorm("auto", from_checkpoint=False) == "train"
    assert resolve_batchnorm("sync", from_checkpoint=True) == "sync"
    with pytest.raises(InputError, match="train.batchnorm must be one of auto, train, frozen, sync, got 'off'"):
        resolve_batchnorm("off", from_checkpoint=False)
    net = nn.Sequential(nn.BatchNorm2d(2))
    assert prepare_batchnorm(net, "sync", world=1, device="cpu", from_checkpoint=False) is net
    assert type(net[0]) is nn.BatchNorm2d  # one process: sync is train
    with pytest.raises(InputError, match="train.batchnorm=sync needs CUDA"):
        prepare_batchnorm(net, "sync", world=2, device="cpu", from_checkpoint=False)
    assert prepare_batchnorm(net, "train", world=2, device="cpu", from_checkpoint=False) is net


# a torchvision model whose backbone has BatchNorm2d layers (built with weights_backbone=None)
MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _config(**train):
    settings = {"epochs": 1, "batch_size": 2, "optimizer": "sgd", "lr": 0.01, "warmup_iters": 0,
                "schedule": "constant", "eval_every": 0, **train}
    options = {"min_size": 64, "max_size": 64}
    return config_from_dict({"model": {"name": MODEL, "num_classes": 4, "options": options}, "train": settings})


@pytest.fixture(scope="module")
def start(tiny_data, tmp_path_factory):
    """A checkpoint of the BatchNorm model with running statistics that are not the defaults."""
    config = _config()
    torch.manual_seed(0)
    model = build_model(config.model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("bn") / "start.pt"
    save_checkpoint(path, model, config, tiny_data["coco"]["categories"])
    return path, model


def test_finetuning_from_a_checkpoint_freezes_batchnorm_by_default(tiny_data, start, tmp_path):
    path, model = start
    summary = train_model(_config(), tiny_data["train"], tiny_data["root"], tmp_path / "auto",
                          init_checkpoint=path, progress=False)
    assert summary["batchnorm"] == "frozen"
    trained, _, _, extra = load_checkpoint(tmp_path / "auto" / "last.pt")
    assert extra["batchnorm"] == "frozen"
    before, after = model.state_dict(), trained.state_dict()
    bn = [k for k in after if k.endswith("running_var")]
    assert len(bn) > 30
    for k in bn:  # statistics, weight and bias of every BatchNorm layer as in the checkpoint
        prefix = k[: -len("running_var")]
        for name in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(after[prefix + name], before[prefix + name]), prefix + name
    assert not torch.equal(after["roi_heads.box_predictor.cls_score.weight"], before["roi_heads.box_predictor.cls_score.weight"])

    # train: the same start, the statistics move; resuming the frozen run with train is refused
    summary = train_model(_config(batchnorm="train"), tiny_data["train"], tiny_data["root"], tmp_path / "train",
                          init_checkpoint=path, progress=False)
    assert summary["batchnorm"] == "train"
    moved, _, _, _ = load_checkpoint(tmp_path / "train" / "last.pt")
    assert not all(torch.equal(moved.state_dict()[k], before[k]) for k in bn)
    with pytest.raises(InputError, match=r"cannot resume: last.pt was trained with train.batchnorm=frozen, the config says "
                                         r"train \(set it to frozen or auto to resume, or start over with --overwrite\)"):
        train_model(_config(epochs=2, batchnorm="train"), tiny_data["train"], tiny_data["root"], tmp_path / "auto",
                    resume=True, progress=False)
    # auto on resume takes the run's own mode: the statistics stay frozen
    resumed = train_model(_config(epochs=2), tiny_data["train"], tiny_data["root"], tmp_path / "auto",
                          resume=True, progress=False)
    assert resumed["batchnorm"] == "frozen" and resumed["epochs"] == 2
    again, _, _, _ = load_checkpoint(tmp_path / "auto" / "last.pt")
    assert all(torch.equal(again.state_dict()[k], before[k]) for k in bn)


def test_from_scratch_trains_batchnorm_and_warns_when_frozen(tiny_data, tmp_path, caplog):
    summary = train_model(_config(), tiny_data["train"], tiny_data["root"], tmp_path / "a", progress=False)
    assert summary["batchnorm"] == "train"
    # sync with one process is plain train, and is recorded so
    summary = train_model(_config(batchnorm="sync"), tiny_data["train"], tiny_data["root"], tmp_path / "s", progress=False)
    assert summary["batchnorm"] == "train"
    with caplog.at_level("WARNING", logger="det_al.models.batchnorm"):
        summary = train_model(_config(batchnorm="frozen"), tiny_data["train"], tiny_data["root"], tmp_path / "b",
                              progress=False)
    assert summary["batchnorm"] == "frozen"
    assert "BatchNorm layers keep their initial statistics (mean 0, variance 1)" in caplog.text


def test_bad_batchnorm_value_fails_before_training(tiny_data, tmp_path):
    with pytest.raises(InputError, match="train.batchnorm must be one of auto, train, frozen, sync, got 'none'"):
        train_model(_config(batchnorm="none"), tiny_data["train"], tiny_data["root"], tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()
