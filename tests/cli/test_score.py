"""End-to-end ``det-al score`` on a tiny pool: outputs, determinism, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import det_al
from det_al.cli import main
from det_al.data.coco import quiet_coco


def _score(tiny_pool, ckpt, out, *extra) -> int:
    return main(
        [
            "score", "--checkpoint", str(ckpt), "--pool", str(tiny_pool["pool"]),
            "--out", str(out), "--no-progress", *extra,
        ]
    )


def _ranking(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "ranking.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(tiny_pool, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scores")
    assert _score(tiny_pool, tiny_checkpoint, out, "--passes", "3", "--seed", "7") == 0
    return out


def test_ranking_is_sorted_and_complete(scored, tiny_pool):
    ranking = _ranking(scored)
    assert [r["rank"] for r in ranking] == list(range(1, 7))
    assert sorted(r["image_id"] for r in ranking) == [1, 2, 3, 4, 5, 6]
    values = [r["informativeness"] for r in ranking]
    assert values == sorted(values, reverse=True)
    for r in ranking:
        assert {"file_name", "class", "box", "mask", "presence", "n_objects", "certain", "empty"} <= set(r)
        assert 0.0 <= r["informativeness"] <= 1.0
    assert json.loads((scored / "skipped.json").read_text()) == []


def test_pseudo_labels_load_in_pycocotools(scored, tiny_pool):
    data = json.loads((scored / "pseudo_labels.json").read_text())
    gt = quiet_coco(data)
    assert sorted(gt.getImgIds()) == [1, 2, 3, 4, 5, 6]
    assert data["categories"] == tiny_pool["coco"]["categories"]
    assert len(data["annotations"]) > 0
    ids = [a["id"] for a in data["annotations"]]
    assert len(set(ids)) == len(ids)
    category_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        assert a["category_id"] in category_ids
        assert 0.0 <= a["uncertainty"] <= 1.0
        image = gt.imgs[a["image_id"]]
        m = mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"].encode()})
        assert m.shape == (image["height"], image["width"])
    results = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in data["annotations"]]
    dt = gt.loadRes(results)
    assert len(dt.anns) == len(results)
    # n_detections in the ranking counts the image's pseudo-labels
    per_image = {}
    for a in data["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    for r in _ranking(scored):
        assert r["n_detections"] == per_image.get(r["image_id"], 0)


def test_passes_and_embeddings(scored):
    lines = [json.loads(x) for x in (scored / "passes.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    assert all(len(x["passes"]) == 3 for x in lines)
    emb = np.load(scored / "embeddings.npy")
    ids = json.loads((scored / "embeddings_ids.json").read_text())
    assert emb.shape[0] == len(ids) == 6 and emb.shape[1] > 0


def test_same_seed_same_ranking_whatever_the_batch(scored, tiny_pool, tiny_checkpoint, tmp_path):
    assert _score(tiny_pool, tiny_checkpoint, tmp_path, "--passes", "3", "--seed", "7", "--batch-size", "4") == 0
    assert _ranking(tmp_path) == _ranking(scored)


def test_plain_path_gives_the_same_ranking(scored, tiny_pool, tiny_checkpoint, tmp_path):
    assert _score(tiny_pool, tiny_checkpoint, tmp_path, "--passes", "3", "--seed", "7", "--plain") == 0
    fast, plain = _ranking(scored), _ranking(tmp_path)
    assert [r["image_id"] for r in fast] == [r["image_id"] for r in plain]
    np.testing.assert_allclose(
        [r["informativeness"] for r in fast], [r["informativeness"] for r in plain], atol=1e-4
    )


def test_unreadable_images_are_skipped_and_listed(tiny_pool, tiny_checkpoint, tmp_path):
    root = tmp_path / "pool"
    shutil.copytree(tiny_pool["root"], root)
    pool = json.loads((root / "pool.json").read_text())
    first, second = pool["images"][0]["file_name"], pool["images"][1]["file_name"]
    (root / first).write_bytes(b"")  # zero bytes
    (root / second).unlink()  # missing
    out = tmp_path / "out"
    code = main(["score", "-k", str(tiny_checkpoint), "-p", str(root / "pool.json"), "-o", str(out), "--passes", "2", "--no-progress"])
    assert code == 0
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(s["image_id"] for s in skipped) == [1, 2]
    assert all(s["reason"] for s in skipped)
    assert len(_ranking(out)) == 4


def test_folder_pool(tiny_pool, tiny_checkpoint, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for im in tiny_pool["coco"]["images"][:2]:
        shutil.copy(tiny_pool["root"] / im["file_name"], folder / Path(im["file_name"]).name)
    (folder / "broken.png").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["score", "-k", str(tiny_checkpoint), "-p", str(folder), "-o", str(out), "--passes", "2", "--no-progress"]) == 0
    pool = json.loads((out / "pool.json").read_text())
    names = sorted(Path(im["file_name"]).name for im in tiny_pool["coco"]["images"][:2]) + ["broken.png"]
    assert [im["file_name"] for im in pool["images"]] == sorted(names)
    # the unreadable file is in the pool and listed as skipped, not dropped
    assert [(s["file_name"], s["reason"]) for s in json.loads((out / "skipped.json").read_text())] == [("broken.png", "empty file")]
    ranked = {r["file_name"]: r for r in _ranking(out)}
    assert sorted(ranked) == sorted(names[:2])
    images = {im["file_name"]: im for im in json.loads((out / "pseudo_labels.json").read_text())["images"]}
    assert [(images[n]["width"], images[n]["height"]) for n in names[:2]] == [(96, 96), (96, 96)]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "det_al", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown_config_key", "unknown config key 'passes.bogus'"),
        ("pool_missing_images", "images"),
        ("pool_duplicate_ids", "duplicate"),
        ("corrupt_checkpoint", "checkpoint"),
        ("missing_pool", "not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, expected, tiny_pool, tiny_checkpoint, tmp_path):
    pool = tiny_pool["pool"]
    ckpt = tiny_checkpoint
    args = []
    if case == "unknown_config_key":
        config = tmp_path / "bad.yaml"
        config.write_text("model:\n  name: maskrcnn_tiny\n  num_classes: 4\npasses:\n  bogus: 1\n")
        args = ["--config", str(config)]
        expected_file = str(config)
    elif case == "pool_missing_images":
        pool = tmp_path / "pool.json"
        pool.write_text(json.dumps({"categories": []}))
        expected_file = str(pool)
    elif case == "pool_duplicate_ids":
        data = json.loads(tiny_pool["pool"].read_text())
        data["images"].append(dict(data["images"][0]))
        pool = tmp_path / "pool.json"
        pool.write_text(json.dumps(data))
        expected_file = str(pool)
    elif case == "corrupt_checkpoint":
        ckpt = tmp_path / "model.pt"
        ckpt.write_bytes(b"not a checkpoint")
        expected_file = str(ckpt)
    elif case == "missing_pool":
        pool = tmp_path / "nope.json"
        expected_file = str(pool)
    out = tmp_path / "out"
    result = _cli("score", "-k", str(ckpt), "-p", str(pool), "-o", str(out), "--no-progress", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0] and expected_file in lines[0], lines[0]
    assert not (out / "ranking.jsonl").exists()


def test_result_line_values_are_rounded_as_documented():
    import torch

    from det_al.config import config_from_dict
    from det_al.inference.detections import Detections
    from det_al.inference.passes import ImagePasses
    from det_al.run.score_lines import score_image

    det = Detections(boxes=torch.tensor([[10.25, 20.5, 40.75, 60.5]]), scores=torch.tensor([0.123456789]),
                     labels=torch.tensor([2]), probs=torch.tensor([[0.1, 0.2, 0.7]]))
    passes = ImagePasses(deterministic=det, passes=[det, det], views=["identity", "identity"],
                         embedding=torch.tensor([0.123456789, -2.5]))
    config = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 3}})
    line = score_image(passes, config, [{"id": 7, "name": "a"}, {"id": 3, "name": "b"}], with_masks=False)
    (ann,) = line.annotations
    # label 2 -> the second category (id 3); xywh to 2 decimals; float32 0.123456789 to 6
    assert ann["category_id"] == 3 and ann["bbox"] == [10.25, 20.5, 30.5, 40.0] and ann["area"] == 1220.0
    assert ann["score"] == 0.123457 and ann["presence"] == 1.0 and ann["box_disagreement"] == 0.0
    assert ann["entropy"] == 0.729847  # -(0.1 ln 0.1 + 0.2 ln 0.2 + 0.7 ln 0.7) / ln 3
    # pass boxes to 1 decimal, Python's correctly rounded round(): the exact binary 10.25 -> 10.2
    row = json.dumps(line.passes["passes"][0], separators=(",", ":"))
    assert row == "[[10.2,20.5,30.5,40.0,3,0.1235]]" and line.passes["passes"][1] == line.passes["passes"][0]
    assert line.embedding == [0.12346, -2.5]


def test_ranking_carries_dense_and_one_pass_fields(scored):
    records = _ranking(scored)
    for r in records:  # maskrcnn_tiny: an RPN, so rpn_gap too
        assert r["n_candidates"] > 0
        for name in ("dense", "miss", "rpn_gap", "least_confidence", "max_entropy"):
            assert 0.0 <= r[name] <= 1.0, (name, r)
        assert r["least_confidence"] == 0.0 or r["n_detections"] > 0
    fields = json.loads((scored / "run.json").read_text())["ranking_fields"]
    assert {"informativeness", "dense", "miss", "rpn_gap", "n_candidates", "least_confidence", "max_entropy",
            "n_detections", "class", "box", "mask", "presence"} <= set(fields)


def test_labelled_gives_novelty_and_select_fused_uses_it(tiny_pool, tiny_checkpoint, scored, tmp_path, capsys):
    from det_al.scoring.novelty import novelty
    from det_al.selection.strategies import class_balanced, fusion_scores

    labelled = {**tiny_pool["coco"], "images": tiny_pool["coco"]["images"][:3]}
    first, last = labelled["categories"][0]["id"], labelled["categories"][-1]["id"]
    labelled["annotations"] = [  # labels: 2 objects of the first class, 1 of the last, 1 crowd region
        {"id": k + 1, "image_id": labelled["images"][k % 3]["id"], "category_id": c, "bbox": [1, 1, 5, 5],
         "area": 25, "iscrowd": int(k == 3)} for k, c in enumerate([first, first, last, last])]
    (tmp_path / "train.json").write_text(json.dumps(labelled))
    out = tmp_path / "scores"
    assert _score(tiny_pool, tiny_checkpoint, out, "--passes", "2", "--labelled", str(tmp_path / "train.json"),
                  "--labelled-root", str(tiny_pool["root"])) == 0
    records = _ranking(out)
    emb, ids = np.load(out / "embeddings.npy"), json.loads((out / "embeddings_ids.json").read_text())
    expected = novelty(emb.astype(np.float64), np.load(out / "labelled_embeddings.npy")).tolist()
    by_id = dict(zip(ids, expected))
    assert [r["novelty"] for r in records] == [pytest.approx(by_id[r["image_id"]], abs=2e-6) for r in records]

    # the labelled set's objects per class travel in run.json to class-balanced
    counts = {str(first): 2, str(last): 1} if first != last else {str(first): 3}
    assert json.loads((out / "run.json").read_text())["labelled_classes"] == counts
    context = det_al.Scores.load(out).strategy_context()
    assert context["labelled_classes"] == {int(c): n for c, n in counts.items()}
    assert main(["select", "--ranking", str(out / "ranking.jsonl"), "--budget", "2", "--out", str(tmp_path / "cb"),
                 "--strategy", "class-balanced"]) == 0
    expected = class_balanced(records, 2, image_classes=context["image_classes"], labelled_classes=context["labelled_classes"])
    assert sorted(im["id"] for im in json.loads((tmp_path / "cb" / "selection.json").read_text())["images"]) == sorted(
        r["image_id"] for r in expected)

    sel = tmp_path / "sel"
    assert main(["select", "--ranking", str(out / "ranking.jsonl"), "--budget", "2", "--out", str(sel),
                 "--strategy", "fused", "--fusion-k", "1"]) == 0
    fused = fusion_scores(records, k=1)
    best = sorted(range(len(records)), key=lambda i: -fused[i])[:2]
    chosen = json.loads((sel / "selection.json").read_text())["images"]
    assert sorted(im["id"] for im in chosen) == sorted(records[i]["image_id"] for i in best)

    # no --strategy: a ranking scored with a labelled COCO set is selected from by class-balanced:fused,
    # one with novelty alone (no labelled_classes in run.json) by fused, one without novelty by top
    capsys.readouterr()
    assert main(["select", "--ranking", str(out / "ranking.jsonl"), "--budget", "2", "--out", str(tmp_path / "d0"),
                 "--fusion-k", "1"]) == 0
    assert capsys.readouterr().out.startswith("class-balanced:fused: selected 2")
    balanced = class_balanced(records, 2, image_classes=context["image_classes"], key="fused", fusion_k=1,
                              labelled_classes=context["labelled_classes"])
    assert sorted(im["id"] for im in json.loads((tmp_path / "d0" / "selection.json").read_text())["images"]) == sorted(
        r["image_id"] for r in balanced)
    run = json.loads((out / "run.json").read_text())
    del run["labelled_classes"]
    (out / "run.json").write_text(json.dumps(run))
    assert main(["select", "--ranking", str(out / "ranking.jsonl"), "--budget", "2", "--out", str(tmp_path / "d1"),
                 "--fusion-k", "1"]) == 0
    assert capsys.readouterr().out.startswith("fused: selected 2")
    assert json.loads((tmp_path / "d1" / "selection.json").read_text())["images"] == chosen
    assert main(["select", "--ranking", str(scored / "ranking.jsonl"), "--budget", "2", "--out", str(tmp_path / "d2")]) == 0
    assert capsys.readouterr().out.startswith("top: selected 2")
    top_two = [r["image_id"] for r in _ranking(scored)[:2]]
    assert [im["id"] for im in json.loads((tmp_path / "d2" / "selection.json").read_text())["images"]] == top_two

    capsys.readouterr()
    assert main(["select", "--ranking", str(scored / "ranking.jsonl"), "--budget", "2", "--out", str(tmp_path / "no"),
                 "--strategy", "fused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs 'novelty'" in err[0] and "--labelled" in err[0]
    assert not (tmp_path / "no" / "selection.json").exists()


def test_bad_labelled_set_is_one_line_and_writes_nothing(tiny_pool, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert _score(tiny_pool, tiny_checkpoint, out, "--labelled", str(tmp_path / "missing.json")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "missing.json" in line
    assert not (out / "ranking.jsonl").exists() and not (out / "labelled_embeddings.npy").exists()
