"""Reductions, per-image values and the pool policy against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from det_al.config import ScoringConfig
from det_al.run.assemble import rank_records
from det_al.scoring.informativeness import (
    fuse_ranks,
    rank_reference,
    empty_informativeness,
    image_informativeness,
    reduce_objects,
)

V = torch.tensor([0.2, 0.8, 0.5, 0.1])


@pytest.mark.parametrize(
    "how, k, expected",
    [
        ("max", 3, 0.8),
        ("mean", 3, 0.4),  # (.2 + .8 + .5 + .1) / 4 = 1.6 / 4
        ("sum", 3, 1.6),
        ("topk", 2, 0.65),  # (.8 + .5) / 2
        ("topk", 3, 0.5),  # (.8 + .5 + .2) / 3
        ("topk", 10, 0.4),  # fewer than k objects: the mean of all
    ],
)
def test_reduce_objects(how, k, expected):
    assert reduce_objects(V, how, k) == pytest.approx(expected)


@pytest.mark.parametrize("how", ["max", "mean", "sum", "topk"])
def test_reduce_objects_empty(how):
    assert reduce_objects(torch.zeros(0), how, 3) == 0.0


def test_reduce_objects_bad_input():
    with pytest.raises(ValueError, match="max, mean, sum, topk"):
        reduce_objects(V, "median")
    with pytest.raises(ValueError, match="shape"):
        reduce_objects(V[None], "max")


def object_values() -> dict[str, torch.Tensor]:
    # Object 1 falls below min_score .05 and is ignored.
    return {
        "score": torch.tensor([0.9, 0.02, 0.5]),
        "uncertainty": torch.tensor([0.2, 0.99, 0.6]),
        "class_variance": torch.tensor([0.1, 0.9, 0.3]),
        "entropy": torch.tensor([0.7, 0.9, 0.5]),
        "mutual_information": torch.tensor([0.0, 0.9, 0.4]),
        "box_disagreement": torch.tensor([0.3, 0.9, 0.1]),
        "mask_disagreement": torch.tensor([0.4, 0.9, 0.2]),
        "presence_uncertainty": torch.tensor([0.0, 0.9, 0.75]),
    }


def test_image_informativeness_max():
    r = image_informativeness(object_values(), ScoringConfig(image_weights={}, reduction="max"), has_masks=True)
    # Kept objects 0 and 2: max of (.2, .6) etc.
    assert r == pytest.approx(
        {"informativeness": 0.6, "class": 0.3, "box": 0.3, "mask": 0.4, "presence": 0.75,
         "n_objects": 2, "empty": False}
    )


def test_image_informativeness_mean_entropy_no_masks():
    scoring = ScoringConfig(image_weights={}, reduction="mean", class_term="entropy")
    r = image_informativeness(object_values(), scoring, has_masks=False)
    # mean over objects 0 and 2: uncertainty (.2 + .6) / 2 = .4; entropy (.7 + .5) / 2 = .6;
    # box (.3 + .1) / 2 = .2; presence (0 + .75) / 2 = .375; mask 0 (no masks).
    assert r == pytest.approx(
        {"informativeness": 0.4, "class": 0.6, "box": 0.2, "mask": 0.0, "presence": 0.375,
         "n_objects": 2, "empty": False}
    )


def test_image_informativeness_min_score_zero_keeps_all():
    r = image_informativeness(object_values(), ScoringConfig(image_weights={}, min_score=0.0, reduction="sum"), False)
    assert r["n_objects"] == 3
    assert r["informativeness"] == pytest.approx(1.79)  # .2 + .99 + .6


def test_image_informativeness_empty():
    values = object_values()
    r = image_informativeness(values, ScoringConfig(image_weights={}, min_score=0.95), has_masks=True)
    assert r["empty"] is True and r["n_objects"] == 0
    assert r["informativeness"] == 0.0 and r["class"] == 0.0
    none = {name: v[:0] for name, v in values.items()}
    r = image_informativeness(none, ScoringConfig(image_weights={}), has_masks=False)
    assert r["empty"] is True and r["n_objects"] == 0


def records(values: dict[str, float | None]) -> list[dict]:
    """``None`` = an empty image."""
    return [
        {"image_id": i, "informativeness": 0.0 if v is None else v, "empty": v is None,
         "n_objects": 0 if v is None else 1}
        for i, v in values.items()
    ]


def test_rank_records_quantile_median():
    # Non-empty: .1, .4, .3, .9 -> sorted .1 .3 .4 .9, median (.3 + .4) / 2 = .35 for image 5.
    # certain_threshold .2: only image 1 (.1) is certain; the empty image never is.
    pool = records({1: 0.1, 2: 0.4, 3: 0.3, 4: 0.9, 5: None})
    out = rank_records(pool, ScoringConfig(image_weights={}, certain_threshold=0.2))
    assert [r["image_id"] for r in out] == [4, 2, 5, 3, 1]
    assert [r["rank"] for r in out] == [1, 2, 3, 4, 5]
    assert out[2]["informativeness"] == pytest.approx(0.35)
    assert [r["certain"] for r in out] == [False, False, False, False, True]
    assert [r["empty"] for r in out] == [False, False, True, False, False]
    assert pool[4]["informativeness"] == 0.0 and "rank" not in pool[0]  # inputs untouched


def test_rank_records_quantile_q():
    # q = .25 over .1 .3 .4 .9 (linear): position .25 * 3 = .75 -> .1 + .75 * (.3 - .1) = .25.
    pool = records({1: 0.1, 2: 0.4, 3: 0.3, 4: 0.9, 5: None})
    out = rank_records(pool, ScoringConfig(image_weights={}, empty_value=0.25))
    assert {r["image_id"]: r["informativeness"] for r in out}[5] == pytest.approx(0.25)


@pytest.mark.parametrize("value, position", [(1.0, 0), (0.0, 2)])
def test_rank_records_value(value, position):
    # Empty image 9 at a fixed value: first with 1.0, last with 0.0 (never certain, even at 0).
    scoring = ScoringConfig(image_weights={}, empty_policy="value", empty_value=value)
    out = rank_records(records({1: 0.5, 2: 0.2, 9: None}), scoring)
    assert out[position]["image_id"] == 9
    assert out[position]["informativeness"] == value
    assert out[position]["certain"] is False


def test_rank_records_all_empty_and_no_images():
    out = rank_records(records({2: None, 1: None}), ScoringConfig(image_weights={}))
    assert sorted((r["image_id"], r["informativeness"]) for r in out) == [(1, 0.5), (2, 0.5)]
    assert [r["rank"] for r in out] == [1, 2]
    assert rank_records([], ScoringConfig(image_weights={})) == []


def test_rank_records_ties_by_dense_then_a_seeded_hash_not_the_image_id():
    from det_al.scoring.informativeness import tie_break

    out = rank_records(records({3: 0.5, 1: 0.5, 2: 0.7}), ScoringConfig(image_weights={}))
    expected = sorted([1, 3], key=lambda i: tie_break(0, i))
    assert [r["image_id"] for r in out] == [2, *expected]
    # twenty tied empty images: a seed-dependent order, the same for the same seed
    pool = records({i: None for i in range(20)})
    orders = [[r["image_id"] for r in rank_records(pool, ScoringConfig(image_weights={}), seed=s)] for s in (0, 0, 1)]
    assert orders[0] == orders[1] != orders[2] and orders[0] != list(range(20))
    # a larger dense value wins a tie
    pool = [{**r, "dense": 0.1 * (r["image_id"] == 7)} for r in pool]
    assert rank_records(pool, ScoringConfig(image_weights={}))[0]["image_id"] == 7


def test_rank_records_empty_from_n_objects_and_kept_keys():
    pool = [{"image_id": 1, "informativeness": 0.0, "n_objects": 0, "file_name": "a.jpg"},
            {"image_id": 2, "informativeness": 0.02, "n_objects": 3, "file_name": "b.jpg"}]
    out = rank_records(pool, ScoringConfig(image_weights={}))
    # Only one non-empty image (.02): the median is .02, tie broken by image_id; .02 < .05 certain.
    assert [(r["image_id"], r["empty"], r["certain"], r["file_name"]) for r in out] == [
        (1, True, False, "a.jpg"), (2, False, True, "b.jpg")]


def test_empty_informativeness_bad_quantile():
    with pytest.raises(ValueError, match="quantile"):
        empty_informativeness([0.1], ScoringConfig(image_weights={}, empty_value=1.5))


def test_only_anchored_objects_count_by_default():
    values = object_values()
    values["anchored"] = torch.tensor([True, True, False])
    values["expected_score"] = values["score"]
    # object 2 (uncertainty .6) is not anchored: only object 0 (.2) is kept by default
    r = image_informativeness(values, ScoringConfig(image_weights={}, reduction="max"), has_masks=True)
    assert r["n_objects"] == 1 and r["informativeness"] == pytest.approx(0.2)
    r = image_informativeness(values, ScoringConfig(image_weights={}, reduction="max", objects="all"), has_masks=True)
    assert r["n_objects"] == 2 and r["informativeness"] == pytest.approx(0.6)


def test_min_score_filters_on_expected_score():
    values = object_values()
    # object 2 has mean found score above min_score but flickers: expected .01 < .05
    values["expected_score"] = values["score"].clone()
    values["expected_score"][2] = 0.01
    r = image_informativeness(values, ScoringConfig(image_weights={}, reduction="max"), has_masks=True)
    assert r["n_objects"] == 1 and r["informativeness"] == pytest.approx(0.2)


def test_rank_combination_by_hand_in_memory_and_streamed(tmp_path):
    import json

    from det_al.run.assemble import assemble_outputs
    from det_al.run.result_line import ResultLine
    from det_al.config import config_from_dict

    config = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 2}, "scoring": {
        "image_weights": {"objects": 1, "dense": 1}, "image_combination": "rank", "rank_k": 1}})
    pool = [{"image_id": 1, "informativeness": 0.2, "objects": 0.2, "dense": 0.9, "n_objects": 1, "empty": False},
            {"image_id": 2, "informativeness": 0.5, "objects": 0.5, "dense": 0.1, "n_objects": 1, "empty": False},
            {"image_id": 3, "informativeness": 0.0, "objects": 0.0, "dense": 0.5, "n_objects": 0, "empty": True}]
    # objects ranks 2 1 3, dense ranks 1 3 2; (k + 1) / (k + rank) = 2 / (1 + rank), mean of the two:
    # image 1 (2/3 + 1) / 2, image 2 (1 + 1/2) / 2; image 3 is empty: the median of those two
    out = rank_records(pool, config.scoring)
    assert [r["image_id"] for r in out] == [1, 3, 2]
    assert [r["informativeness"] for r in out] == pytest.approx([5 / 6, (5 / 6 + 3 / 4) / 2, 3 / 4])
    lines = [ResultLine(r["image_id"], f"{r['image_id']}.png", record={k: v for k, v in r.items() if k != "image_id"},
                        embedding=[0.0, 1.0]) for r in pool]
    assemble_outputs(lambda: iter(lines), tmp_path, [{"id": 1, "name": "a"}], config)
    streamed = [json.loads(s) for s in (tmp_path / "ranking.jsonl").read_text().splitlines()]
    assert [(r["image_id"], r["informativeness"], r["rank"]) for r in streamed] == \
        [(r["image_id"], pytest.approx(r["informativeness"]), r["rank"]) for r in out]


def test_rank_combination_without_weights_is_the_object_level_informativeness():
    from det_al.config import config_from_dict

    config = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 2},
                               "scoring": {"image_combination": "rank", "image_weights": {}}})
    pool = [{"image_id": 1, "informativeness": 0.2, "n_objects": 1}, {"image_id": 2, "informativeness": 0.5, "n_objects": 1}]
    assert [(r["image_id"], r["informativeness"]) for r in rank_records(pool, config.scoring)] == [(2, 0.5), (1, 0.2)]


def test_default_informativeness_fuses_presence_least_confidence_and_rpn_gap_by_rank():
    scoring = ScoringConfig()
    assert dict(scoring.image_weights) == {"presence": 1.0, "least_confidence": 1.0, "rpn_gap": 1.0}
    assert scoring.image_combination == "rank" and scoring.rank_k == 60.0
    pool = [{"image_id": 1, "informativeness": 0.0, "presence": 0.30, "least_confidence": 0.10, "rpn_gap": 0.01,
             "n_objects": 1, "empty": False},
            {"image_id": 2, "informativeness": 0.0, "presence": 0.01, "least_confidence": 0.02, "rpn_gap": 0.03,
             "n_objects": 1, "empty": False},
            {"image_id": 3, "informativeness": 0.0, "presence": 0.20, "least_confidence": 0.60, "rpn_gap": 0.00,
             "n_objects": 1, "empty": False}]
    # ranks: presence 1 3 2, least_confidence 2 3 1, rpn_gap 2 1 3; value = mean over fields of 61 / (60 + rank)
    out = {r["image_id"]: r for r in rank_records(pool, scoring)}
    expected = {1: (1 + 61 / 62 + 61 / 62) / 3, 2: (61 / 63 + 61 / 63 + 1) / 3, 3: (61 / 62 + 1 + 61 / 63) / 3}
    assert {i: r["informativeness"] for i, r in out.items()} == pytest.approx(expected, abs=1e-9)
    assert [out[i]["rank"] for i in (1, 3, 2)] == [1, 2, 3]
    # certain compares the fields' weighted mean, not the pool-relative fused value:
    # image 2: (.01 + .02 + .03) / 3 = .02 < .05; image 1: .41 / 3 = .137
    assert (out[1]["certain"], out[2]["certain"], out[3]["certain"]) == (False, True, False)


# --------------------------------------------------------------------------- ranks against a reference


def test_fuse_ranks_by_hand():
    # a: ranks 1, 2, 2 (ties share the best); b: ranks 3, 1, 2; k = 1: (k + 1) / (k + rank)
    # image 0: (2/2 + 2/4) / 2 = 0.75; image 1: (2/3 + 2/2) / 2 = 0.8333; image 2: (2/3 + 2/3) / 2 = 0.6667
    fused = fuse_ranks({"a": [0.9, 0.1, 0.1], "b": [0.0, 0.5, 0.2]}, {"a": 1, "b": 1}, k=1)
    assert fused.tolist() == pytest.approx([0.75, 5 / 6, 2 / 3], abs=1e-9)
    # one image alone is always first by every field: 1, whatever it holds (issue 26)
    assert fuse_ranks({"a": [0.0], "b": [0.0]}, {"a": 1, "b": 1}, k=1).tolist() == [1.0]


def test_ranks_against_a_reference_pool():
    columns = {"a": [0.9, 0.1, 0.1, 0.4], "b": [0.0, 0.5, 0.2, 0.3]}
    reference = rank_reference(columns)
    assert reference == {"n": 4, "fields": {"a": [0.9, 0.4, 0.1, 0.1], "b": [0.5, 0.3, 0.2, 0.0]}}
    # the pool against itself: the plain ranks, the same values
    assert fuse_ranks(columns, {"a": 1, "b": 2}, 60.0, reference).tolist() == fuse_ranks(columns, {"a": 1, "b": 2}).tolist()
    # one new image (a 0.5, b 0.25): 1 value of a above it -> rank 2; 2 of b above it -> rank 3
    # k = 1: (2/3 + 2/4) / 2 = 0.583333; alone, without the reference, it would score 1
    one = fuse_ranks({"a": [0.5], "b": [0.25]}, {"a": 1, "b": 1}, k=1, reference=reference)
    assert one.tolist() == pytest.approx([(2 / 3 + 2 / 4) / 2], abs=1e-9)
    # scored in a batch or alone, an image gets the same value against the reference
    batch = fuse_ranks({"a": [0.5, 0.0], "b": [0.25, 0.9]}, {"a": 1, "b": 1}, k=1, reference=reference)
    assert batch[0] == one[0]
    # b 0.9 is above every reference value: rank 1; a 0.0 is below all 4: rank 5 -> (2/6 + 2/2) / 2
    assert batch[1] == pytest.approx((2 / 6 + 1.0) / 2, abs=1e-9)


def test_a_large_reference_keeps_quantiles_and_scales_ranks_to_the_pool():
    values = list(range(100_000))  # 100,000 distinct values
    reference = rank_reference({"a": values}, max_values=1_000)
    assert reference["n"] == 100_000 and len(reference["fields"]["a"]) == 1_000
    assert reference["fields"]["a"][0] == 99_999 and reference["fields"]["a"][-1] == 0
    # the value 89,999.5 has 10,000 values above it in the pool: rank 10,001, up to the quantile step (100)
    k = 60.0
    fused = fuse_ranks({"a": [89_999.5]}, {"a": 1}, k, reference)[0]
    rank = (k + 1) / fused - k
    assert abs(rank - 10_001) <= 101
