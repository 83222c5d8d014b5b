"""``benchmarks/bench_error_capture.py --quick`` in this process: the JSON's shape, no timing."""

import json
import math

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_error_capture")


def test_quick_run_writes_the_documented_json(bench, tmp_path, capsys):
    candidate = "od=scoring.image_weights={objects: 1, dense: 1};scoring.image_combination=weighted"
    args = bench.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "out"), "--candidate", candidate])
    bench.main(args)
    result = json.loads((tmp_path / "out" / "error_capture.json").read_text())
    sizes = bench.SIZES["quick"]
    assert result["n_images"] == sizes["old"] + sizes["drifted"] + sizes["background"]
    assert result["seeds"] == list(sizes["seeds"])
    scores = result["scores"]
    for name in ("random", "informativeness", "class", "box", "presence", "least_confidence", "n_detections",
                 "max_entropy", "dense", "miss", "rpn_gap", "novelty", "fused", "od", "od+fused"):
        assert name in scores
    assert set(scores) <= set(bench.SCORES) | {"od", "od+fused"}
    for name, entry in scores.items():
        for key in ("spearman", "spearman_norm"):
            assert entry[key] is None or -1.0 <= entry[key] <= 1.0, (name, key)
        for key in ("auroc_missed", "recall_at_10pct", "recall_at_10pct_norm"):
            assert entry[key] is None or 0.0 <= entry[key] <= 1.0, (name, key)
        for key in ("spearman", "spearman_norm", "auroc_missed", "recall_at_10pct", "recall_at_10pct_norm"):
            lo, hi = entry[f"{key}_ci95"]
            assert (lo is None and hi is None) or lo <= entry[key] <= hi, (name, key)
        shares = [entry[key] for key in bench.SHARES]
        assert all(0.0 <= v <= 1.0 for v in shares) and sum(shares) <= 1.0 + 1e-9, name
    # every image of every seed has a row with its errors and every score
    rows = [json.loads(line) for line in (tmp_path / "out" / "per_image.jsonl").read_text().splitlines()]
    assert len(rows) == result["n_images"] * len(result["seeds"])
    assert {r["group"] for r in rows} == {"old", "drifted", "background"}
    for r in rows:
        assert r["count"] == r["fn"] + r["fp"] and 0.0 <= r["normalised"] <= 1.0
        assert all(math.isfinite(r[name]) for name in scores)
    # background-only scenes have nothing to miss
    assert not any(r["missed"] for r in rows if r["group"] == "background")
    assert set(result["targets"]) == set(result["vs_one_pass"]) and "informativeness" in result["targets"]
    assert "informativeness" in capsys.readouterr().out

    # the same model and pool, as any labelled COCO data: one run, novelty from --labelled; the
    # candidate rescored by det-al score this time, not recombined from the base ranking
    seed0 = next((tmp_path / "out" / "cache").glob("seed0-*"))
    args = bench.get_args_parser().parse_args([
        "--checkpoint", str(seed0 / "train" / "last.pt"), "--pool-gt", str(seed0 / "data" / "pool_gt.json"),
        "--labelled", str(seed0 / "data" / "train.json"), "--out", str(tmp_path / "ck"),
        "--candidate", candidate, "--rescore-candidates",
    ])
    bench.main(args)
    once = json.loads((tmp_path / "ck" / "error_capture.json").read_text())
    assert once["n_images"] == result["n_images"] and once["seeds"] == [0]
    assert "novelty" in once["scores"] and once["scores"]["informativeness"]["spearman_ci95"] == [None, None]
    for name, measures in once["per_seed"]["0"].items():  # same model, pool, passes and seed
        assert measures == {k: result["per_seed"]["0"][name][k] for k in measures}, name
    rescored = {r["image_id"]: r["od"] for r in map(json.loads, (tmp_path / "ck" / "per_image.jsonl").read_text().splitlines())}
    assert rescored == {r["image_id"]: r["od"] for r in rows if r["seed"] == 0}


def test_checkpoint_mode_needs_ground_truth(bench, tmp_path):
    args = bench.get_args_parser().parse_args(["--checkpoint", "ck.pt", "--out", str(tmp_path)])
    with pytest.raises(bench.InputError, match="--pool-gt"):
        bench.main(args)
