"""Checkpoint ensembles (det_al.run.ensemble): members' passes scored together.

Hand-computed values for the joined passes, and through the CLI and the API: one member is
the single model byte for byte, same weights without dropout disagree nowhere, different
weights disagree as their own passes say, mismatched members and changed member lists are
refused in one line before anything is scored.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import det_al
from det_al.cli import main
from det_al.config import Config, PassesConfig
from det_al.errors import InputError
from det_al.inference.detections import Detections
from det_al.inference.passes import ImagePasses, run_passes
from det_al.run.ensemble import EnsemblePasses, check_members, join_passes, member_seed, members_sha256
from det_al.run.score_lines import score_image
from det_al.scoring.matching import match_passes
from det_al.scoring.uncertainty import score_objects


SCORE = ["--no-progress", "--passes", "2", "--seed", "5"]
OUTPUTS = ("ranking.jsonl", "pseudo_labels.json", "passes.jsonl", "skipped.json", "key.json", "embeddings.npy",
           "embeddings_ids.json")


def _dets(box, probs) -> Detections:
    probs = torch.tensor([probs])
    return Detections(torch.tensor([box], dtype=torch.float32), probs[:, 1:].max(1).values,
                      probs[:, 1:].argmax(1) + 1, probs)


def _one_pass(det: Detections, anchor: Detections) -> ImagePasses:
    return ImagePasses(anchor, [det], ["identity"], torch.zeros(4))


# --------------------------------------------------------------------------- pure parts


def test_member_seeds_keep_member_0_and_differ_for_the_others():
    assert member_seed(7, 0) == 7
    seeds = [member_seed(7, m) for m in range(4)]
    assert len(set(seeds)) == 4 and seeds == [member_seed(7, m) for m in range(4)]
    assert member_seed(8, 1) != member_seed(7, 1)
    assert members_sha256(["abc"]) == "abc"
    assert members_sha256(["a", "b"]) != members_sha256(["b", "a"])


def test_joined_passes_disagree_as_the_formulas_say():
    """Member 0 says class 1 at [0, 0, 10, 10], member 1 class 2 at [2, 0, 12, 10]."""
    anchor = _dets([0, 0, 10, 10], [0.1, 0.9, 0.0])
    joined = join_passes([_one_pass(_dets([0, 0, 10, 10], [0.1, 0.9, 0.0]), anchor),
                          _one_pass(_dets([2, 0, 12, 10], [0.1, 0.0, 0.9]), _dets([5, 5, 9, 9], [0.5, 0.5, 0.0]))])
    assert isinstance(joined, EnsemblePasses) and joined.members == [0, 1]
    assert joined.deterministic is anchor and joined.views == ["identity", "identity"]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    line = score_image(joined, Config(), categories, with_masks=False)
    (ann,) = line.annotations
    # mean p = (0.1, 0.45, 0.45); population variance per class (0, 0.2025, 0.2025)
    assert ann["class_variance"] == pytest.approx(0.405 / (1 - 1 / 3), abs=1e-6)
    h_mean = -(0.1 * math.log(0.1) + 2 * 0.45 * math.log(0.45))
    mean_h = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    assert ann["entropy"] == pytest.approx(h_mean / math.log(3), abs=1e-6)
    assert ann["mutual_information"] == pytest.approx((h_mean - mean_h) / math.log(3), abs=1e-6)
    # mean box (1, 0, 11, 10): each box overlaps it 9 x 10 of 11 x 10
    assert ann["box_disagreement"] == pytest.approx(1 - 90 / 110, abs=1e-6)
    assert ann["presence"] == 1.0
    assert line.passes["members"] == [0, 1]
    # one member is returned as it is
    single = _one_pass(anchor, anchor)
    assert join_passes([single]) is single


def test_members_of_another_family_or_class_list_are_refused():
    from det_al.models.build import fasterrcnn_tiny, maskrcnn_tiny

    faster3, faster4, mask3 = fasterrcnn_tiny(3), fasterrcnn_tiny(4), maskrcnn_tiny(3)
    check_members([faster3, fasterrcnn_tiny(3)])
    with pytest.raises(InputError, match=r"^b\.pt: ensemble member has 4 classes .* but a\.pt has 3$"):
        check_members([faster3, faster4], ["a.pt", "b.pt"])
    with pytest.raises(InputError, match=r"^models\[1\]: ensemble member is a MaskRCNN \(rcnn, with masks\) model"):
        check_members([faster3, mask3])
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    other = [{"id": 1, "name": "cat"}, {"id": 2, "name": "fox"}]
    check_members([faster3, fasterrcnn_tiny(3)], categories=[cats, None])  # unknown: not compared
    with pytest.raises(InputError, match=r"^models\[1\]: ensemble member's class 2 is 'fox' but models\[0\]'s is 'dog'$"):
        check_members([faster3, fasterrcnn_tiny(3)], categories=[cats, other])
    with pytest.raises(InputError, match=r"^models\[1\]: ensemble member: passes.sites: 'head' is not a module"):
        check_members([faster3, fasterrcnn_tiny(3)], sites=["head"])  # the first is check_run's


# --------------------------------------------------------------------------- through the API and the CLI


def _files(out):
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def _run_json(out) -> dict:
    run = json.loads((out / "run.json").read_text())
    run.pop("time")
    return run


def test_one_member_is_the_single_checkpoint_byte_for_byte(tiny_pool, tiny_checkpoint, tmp_path):
    args = ["-p", str(tiny_pool["pool"]), *SCORE]
    assert main(["score", "-k", str(tiny_checkpoint), "-o", str(tmp_path / "one"), *args]) == 0
    assert main(["score", "--checkpoints", str(tiny_checkpoint), "-o", str(tmp_path / "list"), *args]) == 0
    assert _files(tmp_path / "one") == _files(tmp_path / "list")
    assert _run_json(tmp_path / "one") == _run_json(tmp_path / "list")
    assert "members" not in _run_json(tmp_path / "list")


def test_same_weights_without_dropout_disagree_nowhere(tiny_pool, tiny_checkpoint):
    members = [det_al.load_model(tiny_checkpoint), det_al.load_model(tiny_checkpoint)]
    scores = det_al.score_images(members, tiny_pool["pool"], passes=1, dropout=0.0, progress=False)
    annotations = scores.pseudo_labels()["annotations"]
    assert annotations and scores.run["members"] == 2
    for ann in annotations:
        assert (ann["class_variance"], ann["mutual_information"], ann["box_disagreement"],
                ann["mask_disagreement"], ann["presence"]) == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_members_passes_are_concatenated_with_their_own_seeds(tiny_pool, tiny_checkpoint, tmp_path):
    """Same weights, dropout on: member 0's passes are the single model's, member 1's differ."""
    images = tiny_pool["coco"]["images"][:2]
    pool = {**tiny_pool["coco"], "images": images}
    model = det_al.load_model(tiny_checkpoint)
    kw = dict(image_root=tiny_pool["root"], passes=2, dropout=0.3, seed=5, progress=False)
    det_al.score_images(model, pool, out_dir=tmp_path / "one", **kw)
    det_al.score_images([model, model], pool, out_dir=tmp_path / "two", **kw)
    one = [json.loads(line) for line in (tmp_path / "one" / "passes.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "passes.jsonl").read_text().splitlines()]
    for a, b in zip(one, two):
        assert b["members"] == [0, 0, 1, 1] and b["views"] == ["identity"] * 4
        assert b["passes"][:2] == a["passes"]
        assert b["passes"][2:] != a["passes"]


def test_different_weights_disagree_as_their_own_passes(tiny_pool, tmp_path, make_checkpoint):
    """Two untrained models (other init seeds), one deterministic pass each: the ensemble's
    per-object values are score_objects of member 0's anchor against both members' passes."""
    categories = tiny_pool["coco"]["categories"]
    paths = [make_checkpoint(tmp_path / "a.pt", "fasterrcnn_tiny", categories)]
    torch.manual_seed(1)
    model_b, config, _ = det_al.load_model(paths[0])
    with torch.no_grad():
        for p in model_b.roi_heads.box_predictor.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model_a = det_al.load_model(paths[0]).model
    image = tiny_pool["coco"]["images"][0]
    scores = det_al.score_images([model_a, model_b], [str(tiny_pool["root"] / image["file_name"])], passes=1,
                                 dropout=0.0, categories=categories, progress=False)
    got = scores.pseudo_labels()["annotations"]

    from det_al.data.images import read_image, to_tensor

    tensor = to_tensor(read_image(tiny_pool["root"] / image["file_name"]))
    p = PassesConfig(passes=1, dropout=0.0)
    a = run_passes(model_a, [tensor], p)[0]
    b = run_passes(model_b, [tensor], p)[0]
    objects = match_passes(a.deterministic, [a.passes[0], b.passes[0]])
    want = score_objects(a.deterministic, [a.passes[0], b.passes[0]], objects, Config().scoring, masks=False)
    assert len(got) == len(a.deterministic) > 0
    assert max(ann["class_variance"] for ann in got) > 0.01  # the members do disagree
    for k, ann in enumerate(got):
        for name in ("class_variance", "mutual_information", "box_disagreement", "presence"):
            assert ann[name] == pytest.approx(float(want[name][k]), abs=2e-6), name


def test_cli_refuses_mismatched_members_in_one_line(tiny_pool, tiny_checkpoint, tmp_path, capsys, make_checkpoint):
    other = [{"id": c["id"], "name": c["name"] + "_x"} for c in tiny_pool["coco"]["categories"]]
    renamed = make_checkpoint(tmp_path / "renamed.pt", "maskrcnn_tiny", other)
    fewer = make_checkpoint(tmp_path / "fewer.pt", "maskrcnn_tiny", tiny_pool["coco"]["categories"][:1])
    faster = make_checkpoint(tmp_path / "faster.pt", "fasterrcnn_tiny", tiny_pool["coco"]["categories"])
    base = ["score", "-p", str(tiny_pool["pool"]), *SCORE, "--checkpoints", str(tiny_checkpoint)]
    for bad, says in ((fewer, "ensemble member has 2 classes (background included) but"),
                      (renamed, "ensemble member's class 1 is"),
                      (faster, "ensemble member is a FasterRCNN (rcnn) model but")):
        out = tmp_path / f"out-{bad.stem}"
        capsys.readouterr()
        assert main([*base, str(bad), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"det-al score: error: {bad}: {says}"), err
        assert not out.exists()  # refused before anything is written


def test_resume_refuses_a_changed_member_list(tiny_pool, tiny_checkpoint, tmp_path, capsys, make_checkpoint):
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_checkpoint, copy)
    other = make_checkpoint(tmp_path / "other.pt", "maskrcnn_tiny", tiny_pool["coco"]["categories"])
    with torch.no_grad():  # same class list, other weights
        obj = torch.load(other, weights_only=True)
        for k, v in obj["state_dict"].items():
            if v.is_floating_point():
                v.add_(0.01)
        torch.save(obj, other)
    out = tmp_path / "out"
    pool = ["-p", str(tiny_pool["pool"]), "-o", str(out), *SCORE]
    assert main(["score", "--checkpoints", str(tiny_checkpoint), str(copy), *pool]) == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["members"], run["checkpoints"], run["checkpoint"]) == (2, [str(tiny_checkpoint), str(copy)],
                                                                       str(tiny_checkpoint))
    assert json.loads((out / "key.json").read_text())["members"] == 2
    for members, says in (([tiny_checkpoint, other], "a different checkpoint (or list of ensemble checkpoints)"),
                          ([tiny_checkpoint, copy, other], "2 ensemble members, this run has 3"),
                          ([tiny_checkpoint], "2 ensemble members, this run has 1")):
        capsys.readouterr()
        assert main(["score", "--checkpoints", *map(str, members), *pool, "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "refusing to resume" in err and says in err, err
    # the same list (another copy of the same weights is the same member) resumes
    assert main(["score", "--checkpoints", str(copy), str(tiny_checkpoint), *pool, "--resume"]) == 0


def test_sharded_ensemble_merges_into_the_single_run(tiny_pool, tiny_checkpoint, tmp_path, make_checkpoint):
    other = make_checkpoint(tmp_path / "other.pt", "maskrcnn_tiny", tiny_pool["coco"]["categories"])
    run = ["score", "--checkpoints", str(tiny_checkpoint), str(other), "-p", str(tiny_pool["pool"]), *SCORE]
    assert main([*run, "-o", str(tmp_path / "single")]) == 0
    dirs = [str(tmp_path / f"shard{i}") for i in range(2)]
    for i, d in enumerate(dirs):
        assert main([*run, "-o", d, "--num-shards", "2", "--shard-index", str(i)]) == 0
    assert main(["merge-shards", *dirs, "--out", str(tmp_path / "merged")]) == 0
    for name in ("ranking.jsonl", "pseudo_labels.json", "passes.jsonl"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    merged = _run_json(tmp_path / "merged")
    assert (merged["members"], merged["checkpoints"]) == (2, [str(tiny_checkpoint), str(other)])


def test_members_whose_stored_scoring_config_differs_get_a_warning(tiny_checkpoint, tmp_path, caplog):
    import argparse
    import logging

    from det_al.cli import score

    def variant(name: str, section: str, values: dict):
        obj = torch.load(tiny_checkpoint, weights_only=True)
        obj["config"][section] = {**obj["config"].get(section, {}), **values}
        torch.save(obj, tmp_path / name)
        return str(tmp_path / name)

    parser = argparse.ArgumentParser()
    score.add_arguments(parser)
    for other, warned in ((variant("seed.pt", "train", {"seed": 7}), False),
                          (variant("passes.pt", "passes", {"passes": 5}), True)):
        args = parser.parse_args(["--checkpoints", str(tiny_checkpoint), other, "-p", "x", "-o", "y"])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            members = score._load_members(args, score.checkpoint_paths(args), None, "cpu")
        assert len(members) == 2 and members[0].config.passes.passes == 3
        assert any("its stored passes/matching/scoring config differs" in r.getMessage() for r in caplog.records) == warned
