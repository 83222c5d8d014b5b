"""Shared fixtures: a tiny synthetic pool and an untrained tiny checkpoint (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory) -> dict:
    """Six synthetic 96-px images (three old, three drifted) and a COCO pool file for them."""
    from det_al.data.synthetic import generate

    root = tmp_path_factory.mktemp("pool")
    old = generate(root, 3, "old", seed=1, start_id=1, size=96)
    new = generate(root, 3, "drifted", seed=2, start_id=4, size=96)
    pool = {
        "images": old["images"] + new["images"],
        "categories": old["categories"],
        "annotations": [],
    }
    (root / "pool.json").write_text(json.dumps(pool))
    return {"root": root, "pool": root / "pool.json", "coco": pool}


def _tiny_checkpoint(path: Path, name: str, categories: list[dict]) -> Path:
    from det_al.models.checkpoint import save_checkpoint
    from det_al.config import config_from_dict
    from det_al.models.build import build_model

    config = config_from_dict(
        {
            "model": {
                "name": name,
                "num_classes": len(categories) + 1,
                "options": {"min_size": 96, "max_size": 96, "box_score_thresh": 0.0},
            },
            "passes": {"passes": 3, "dropout": 0.3},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model)
    save_checkpoint(path, model, config, categories)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_pool) -> Path:
    """An untrained maskrcnn_tiny checkpoint with score threshold 0, so it detects something."""
    path = tmp_path_factory.mktemp("ckpt") / "maskrcnn_tiny.pt"
    return _tiny_checkpoint(path, "maskrcnn_tiny", tiny_pool["coco"]["categories"])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four 64-px training images and two validation images, synthetic, with masks."""
    from det_al.data.synthetic import generate

    root = tmp_path_factory.mktemp("data")
    train = generate(root, 4, "old", seed=3, start_id=1, size=64)
    val = generate(root, 2, "old", seed=4, start_id=10, size=64)
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    image_root = root if (root / train["images"][0]["file_name"]).exists() else root / "images"
    return {"root": image_root, "train": root / "train.json", "val": root / "val.json", "coco": train}


def load_benchmark(name: str):
    """The module of ``benchmarks/NAME.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
