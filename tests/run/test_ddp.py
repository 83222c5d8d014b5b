"""torchrun: each rank's share of an epoch, the collectives, and DDP training and loop on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from det_al.models.checkpoint import load_checkpoint, save_checkpoint
from det_al.config import config_from_dict
from det_al.run.distributed import (
    any_rank,
    broadcast_from_main,
    fail_together,
    is_main,
    mean_over_ranks,
    process_group,
    rank_device,
    rank_sampler,
)
from det_al.errors import InputError
from det_al.models.build import build_model
from det_al.loop.train_setup import seed_everything
from det_al.loop.training import train_model

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
MODEL = {"name": "fasterrcnn_tiny", "num_classes": 4, "options": {"min_size": 64, "max_size": 64}}


def _torchrun(args: list[str], timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (a free port), one thread per process."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1", **env),
    )


# --------------------------------------------------------------------------- each rank's share


@pytest.mark.parametrize("size, world", [(8, 2), (9, 2), (6, 3), (1, 2)])
def test_rank_sampler_shares_cover_the_epoch(size, world):
    for epoch in range(3):
        shares = []
        for r in range(world):
            sampler = rank_sampler(size, seed=7, rank=r, world=world)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        assert {len(s) for s in shares} == {-(-size // world)}  # equal steps on every rank
        every = [i for s in shares for i in s]
        assert set(every) == set(range(size))  # each item in some rank's share
        if size % world == 0:
            assert len(every) == len(set(every)) == size  # disjoint
        else:  # padded with the epoch's first items
            assert len(every) - len(set(every)) == world - size % world


def test_rank_sampler_with_one_process_is_the_seeded_permutation():
    # the order a single process trained on before torchrun support, so its runs are unchanged
    sampler = rank_sampler(10, seed=3 * 100_003)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + epoch)).tolist()
        assert list(sampler) == expected
        orders.append(expected)
    assert orders[0] != orders[1]  # a new order each epoch


def test_rank_device():
    assert rank_device("cuda", 1) == "cuda:1"
    assert rank_device("cuda:1", 1) == "cuda:1"
    assert rank_device("cpu", 3) == "cpu"
    with pytest.raises(InputError, match="give --device cuda, not cuda:0"):
        rank_device("cuda:0", 1)
    with pytest.raises(InputError, match="cpu .gloo. or cuda"):
        rank_device("mps", 0)


def test_helpers_without_torchrun_are_the_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group(torch.device("cpu")) as device:
        assert device == "cpu" and is_main()
        assert broadcast_from_main({"a": 1}) == {"a": 1}
        assert any_rank(True) and not any_rank(False)
        assert mean_over_ranks({"loss": 2.0, "a": 1.0}) == {"loss": 2.0, "a": 1.0}
        with pytest.raises(InputError, match="bad"):
            with fail_together():
                raise InputError("bad")


def test_world_size_without_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(InputError, match="launch det_al with torchrun"):
        with process_group("cpu"):
            pass


COLLECTIVES = """
import json, pathlib, sys
from det_al.run.distributed import any_rank, broadcast_from_main, fail_together, gather, mean_over_ranks, process_group, rank
from det_al.errors import InputError

with process_group("cpu"):
    r = rank()
    out = {
        "broadcast": broadcast_from_main(f"from {r}"),
        "any": any_rank(r == 1),
        "none": any_rank(False),
        "mean": mean_over_ranks({"loss": float(r), "b": 2.0 * r}),
        "gather": gather(r),
    }
    try:
        with fail_together():
            if r == 1:
                raise InputError("rank one has bad input")
        out["raised"] = None
    except InputError as e:
        out["raised"] = str(e)
    pathlib.Path(sys.argv[1], "rank%d.json" % r).write_text(json.dumps(out))
"""


@linux_only
def test_collectives_on_two_processes(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    result = _torchrun([str(script), str(tmp_path)])
    assert result.returncode == 0, result.stderr[-6000:]
    outs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for out in outs:
        assert out["broadcast"] == "from 0" and out["any"] is True and out["none"] is False
        assert out["mean"] == {"loss": 0.5, "b": 1.0} and list(out["mean"]) == ["loss", "b"]
        assert out["gather"] == [0, 1]
    # the failing rank raises its own error; the other one names it
    assert sorted(o["raised"] for o in outs) == ["rank 1: rank one has bad input", "rank one has bad input"]


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_data(tiny_data, tmp_path_factory):
    """conftest's tiny training data plus a config for one quick epoch."""
    config = tmp_path_factory.mktemp("ddp") / "config.yaml"
    config.write_text(
        "model: {name: fasterrcnn_tiny, num_classes: 4, options: {min_size: 64, max_size: 64}}\n"
        "train: {epochs: 1, batch_size: 1, optimizer: adamw, lr: 0.002, warmup_iters: 0, schedule: constant}\n"
    )
    return {**tiny_data, "config": config}


# `det-al train` under torchrun, plus (test only) every rank saving its weights after each epoch.
KEEP_WEIGHTS = """
import os, sys, torch
import det_al.loop.training
from det_al.cli import main

train_one_epoch = det_al.loop.training.train_one_epoch

def train_and_keep_weights(model, *args, **kwargs):
    stats = train_one_epoch(model, *args, **kwargs)
    path = os.path.join(os.environ["KEEP_WEIGHTS"], "rank%s.pt" % os.environ["RANK"])
    torch.save(model.module.state_dict(), path)  # model.module: DDP wraps the model
    return stats

det_al.loop.training.train_one_epoch = train_and_keep_weights
raise SystemExit(main(sys.argv[1:]))
"""


@linux_only
def test_torchrun_train_on_two_processes(tiny_data, tmp_path):
    script = tmp_path / "keep_weights.py"
    script.write_text(KEEP_WEIGHTS)
    out = tmp_path / "ddp"
    result = _torchrun(
        [str(script), "train", str(tiny_data["config"]), "--train", str(tiny_data["train"]),
         "--val", str(tiny_data["val"]), "--image-root", str(tiny_data["root"]), "--out", str(out), "--no-progress"],
        KEEP_WEIGHTS=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert result.stdout.count("trained 1 epochs, 2 iterations") == 1  # rank 0 prints; 4 images / (2 x 1) per step
    assert result.stderr.count("det_al.loop.training: epoch 1/1") == 1  # rank 0 logs
    assert {p.name for p in out.iterdir()} == {"last.pt", "best.pt", "metrics.jsonl", "summary.json"}

    # the checkpoint loads with weights_only into a fresh model, with a single process's keys
    stored = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    config = config_from_dict({"model": MODEL})
    model, _, _, extra = load_checkpoint(out / "last.pt", config)
    assert (extra["epoch"], extra["iteration"], extra["world_size"]) == (1, 2, 2)
    single = train_model(
        config_from_dict({"model": MODEL, "train": {"epochs": 1, "batch_size": 4}}),
        tiny_data["train"], tiny_data["root"], tmp_path / "single", progress=False,
    )
    assert list(stored["state_dict"]) == list(torch.load(single["last"], weights_only=True)["state_dict"])

    # both ranks ended with the checkpoint's weights, which training moved away from the start
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in stored["state_dict"].items():
        assert torch.equal(ranks[0][name], value) and torch.equal(ranks[1][name], value), name
    seed_everything(0)
    initial = build_model(config.model).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in stored["state_dict"].items() if v.is_floating_point())
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored["state_dict"][name]), name

    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["iteration"] == 2 and record["val"]["bbox"]["AP"] >= 0  # rank 0 evaluated
    # resuming needs the same number of processes
    with pytest.raises(InputError, match="written by a run of 2 processes, this one has 1"):
        train_model(config, tiny_data["train"], tiny_data["root"], out, resume=True, progress=False)


@linux_only
def test_torchrun_finetuning_keeps_batchnorm_frozen_and_refuses_sync_on_cpu(tiny_data, tmp_path):
    # a torchvision model with BatchNorm2d layers, from a checkpoint with non-default statistics
    model_cfg = {"name": "fasterrcnn_mobilenet_v3_large_320_fpn", "num_classes": 4,
                 "options": {"min_size": 64, "max_size": 64}}
    config = config_from_dict({"model": model_cfg})
    torch.manual_seed(0)
    start = build_model(config.model)
    with torch.no_grad():
        for m in start.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(tmp_path / "start.pt", start, config, tiny_data["coco"]["categories"])
    yaml = tmp_path / "bn.yaml"
    yaml.write_text(json.dumps({"model": model_cfg, "train": {"epochs": 1, "batch_size": 1, "warmup_iters": 0}}))
    args = ["-m", "det_al", "train", str(yaml), "--train", str(tiny_data["train"]), "--image-root",
            str(tiny_data["root"]), "--init", str(tmp_path / "start.pt"), "--no-progress"]

    result = _torchrun([*args, "--out", str(tmp_path / "sync"), "--set", "train.batchnorm=sync"])
    assert result.returncode != 0
    assert result.stderr.count("det-al train: error: train.batchnorm=sync needs CUDA devices") == 2
    assert not (tmp_path / "sync").exists()

    result = _torchrun([*args, "--out", str(tmp_path / "auto")])
    assert result.returncode == 0, result.stderr[-6000:]
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["batchnorm"] == "frozen"
    trained = torch.load(tmp_path / "auto" / "last.pt", weights_only=True)["state_dict"]
    before = start.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 60 and all(torch.equal(trained[k], before[k]) for k in stats)
    assert not torch.equal(trained["rpn.head.conv.0.0.weight"], before["rpn.head.conv.0.0.weight"])


@linux_only
def test_torchrun_bad_input_is_one_line_on_every_rank(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    result = _torchrun(
        ["-m", "det_al", "train", str(tiny_data["config"]), "--train", str(tiny_data["train"]),
         "--image-root", str(tiny_data["root"]), "--out", str(out), "--set", "train.optimizer=adam", "--no-progress"],
    )
    assert result.returncode != 0
    # each rank prints the line (torchrun's workers write unbuffered: the two may interleave)
    assert result.stderr.count("det-al train: error: train.optimizer must be one of sgd, adamw, got 'adam'") == 2
    # torchrun reports the failure with its own traceback; det_al's ranks print none
    assert "det_al/" not in "".join(line for line in result.stderr.splitlines() if line.strip().startswith("File "))
    assert not (out / "last.pt").exists()


@linux_only
def test_torchrun_loop_finetunes_on_two_processes(tmp_path):
    from det_al.loop.results import read_rows
    from det_al.data.synthetic import make_demo_data

    paths = make_demo_data(tmp_path / "data", seed=0, n_train=4, n_val=4, n_pool=8)
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {name: fasterrcnn_tiny, num_classes: 4, options: {min_size: 64, max_size: 64}}\n"
        "train: {optimizer: adamw, lr: 0.002}\n"
        "passes: {dropout: 0.3}\n"
        "loop: {strategies: [random], budget: 2, retrain: finetune}\n"
    )
    out = tmp_path / "loop"
    result = _torchrun(
        ["-m", "det_al", "loop", str(config), "--labelled", str(paths["train"]), "--pool", str(paths["pool"]),
         "--oracle", str(paths["oracle"]), "--val", str(paths["val"]), "--image-root", str(paths["image_root"]),
         "--out", str(out), "--quick", "--no-progress"],
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert result.stdout.count("wrote ") == 1
    rows = read_rows(out / "results.csv")
    assert [(r["round"], r["labelled_images"], len(r["selected"])) for r in rows] == [(0, 4, 2), (1, 6, 0)]
    for folder in (out / "runs" / "seed0" / "round0", out / "runs" / "random" / "seed0" / "round1"):
        _, _, _, extra = load_checkpoint(folder / "last.pt")
        assert extra["world_size"] == 2 and extra["iteration"] == 1  # 4 or 6 images: one step of 8 per rank
