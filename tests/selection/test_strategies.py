import numpy as np
import pytest

from det_al.errors import InputError
from det_al.selection.strategies import (
    STRATEGIES,
    box_cost,
    class_balanced,
    class_quotas,
    classes_from_annotations,
    diverse,
    get_strategy,
    k_center_greedy,
    random,
    run_strategy,
    top,
)


def rec(image_id, informativeness, n_objects=1, **components):
    base = {"class": 0.0, "box": 0.0, "mask": 0.0, "presence": 0.0}
    return {"image_id": image_id, "informativeness": informativeness, "n_objects": n_objects, **base, **components}


def ids(chosen):
    return [r["image_id"] for r in chosen]


# --------------------------------------------------------------------------- random / top


def test_random_is_seeded_and_respects_budget():
    records = [rec(i, 1.0 - i / 20) for i in range(20)]
    a = random(records, budget=5, seed=3)
    assert ids(a) == ids(random(records, budget=5, seed=3))
    assert ids(a) != ids(random(records, budget=5, seed=4))
    assert len(a) == 5 and len(set(ids(a))) == 5
    # the permutation of numpy's seeded generator, filled in order
    assert ids(a) == np.random.default_rng(3).permutation(20)[:5].tolist()


@pytest.mark.parametrize(
    "key, expected",
    [
        ("informativeness", [1, 2]),
        ("class", [3, 1]),
        ("box", [2, 3]),
        ("novelty", [2, 1]),
    ],
)
def test_top_by_component(key, expected):
    records = [
        rec(1, 0.9, **{"class": 0.5, "box": 0.1, "novelty": 0.3}),
        rec(2, 0.8, **{"class": 0.2, "box": 0.9, "novelty": 0.7}),
        rec(3, 0.1, **{"class": 0.6, "box": 0.4, "novelty": 0.0}),
    ]
    assert ids(top(records, budget=2, key=key)) == expected


def test_top_unknown_key_is_an_input_error():
    with pytest.raises(InputError, match="novelty"):
        top([rec(1, 0.5)], budget=1, key="novelty")


def test_top_ranks_by_any_numeric_field_and_lists_the_valid_ones():
    records = [rec(1, 0.9, least_confidence=0.1, n_detections=5, max_entropy=0.2, dense=0.3, file_name="a"),
               rec(2, 0.1, least_confidence=0.7, n_detections=1, max_entropy=0.9, dense=0.8, file_name="b")]
    assert ids(get_strategy("top:least_confidence")(records, budget=1)) == [2]
    assert ids(get_strategy("top:n_detections")(records, budget=1)) == [1]
    assert ids(get_strategy("top:max_entropy")(records, budget=1)) == [2]
    assert ids(get_strategy("top:dense")(records, budget=1)) == [2]
    with pytest.raises(InputError) as e:
        top(records, budget=1, key="file_name")  # a string is not rankable
    assert "valid: box, class, dense, informativeness, least_confidence, mask, max_entropy, " \
        "n_detections, n_objects, presence" in str(e.value)


def test_budget_larger_than_pool_takes_everything():
    records = [rec(1, 0.2), rec(2, 0.4)]
    assert ids(top(records, budget=10)) == [2, 1]
    assert top([], budget=3) == []


# --------------------------------------------------------------------------- box budgets


def test_box_cost_counts_empty_images_as_one():
    assert box_cost({"n_objects": 0}) == 1
    assert box_cost({"n_objects": 4}) == 4


def test_top_box_budget_skips_images_that_do_not_fit():
    # informativeness order 1,2,3,4 with 5,4,2,1 boxes; budget 7 boxes:
    # take 1 (5, left 2), skip 2 (4 > 2), take 3 (2, left 0) -> stop
    records = [rec(1, 0.9, 5), rec(2, 0.8, 4), rec(3, 0.7, 2), rec(4, 0.6, 1)]
    chosen = top(records, budget_boxes=7)
    assert ids(chosen) == [1, 3]
    assert sum(r["n_objects"] for r in chosen) <= 7


def test_image_and_box_budget_together():
    records = [rec(i, 1 - i / 10, 1) for i in range(8)]
    assert len(top(records, budget=3, budget_boxes=5)) == 3
    assert len(top(records, budget=6, budget_boxes=2)) == 2


@pytest.mark.parametrize("name", ["random", "top", "diverse", "class-balanced", "top:box"])
@pytest.mark.parametrize("budget_boxes", [1, 4, 9])
def test_every_strategy_respects_box_budgets(name, budget_boxes):
    rng = np.random.default_rng(0)
    records = [rec(i, float(rng.random()), int(rng.integers(0, 5)), box=float(rng.random())) for i in range(30)]
    context = {
        "embeddings": rng.normal(size=(30, 4)),
        "embedding_ids": list(range(30)),
        "image_classes": {i: [1 + i % 3] * r["n_objects"] for i, r in enumerate(records)},
        "seed": 1,
    }
    chosen = run_strategy(name, records, budget_boxes=budget_boxes, **context)
    assert chosen
    assert sum(box_cost(r) for r in chosen) <= budget_boxes
    assert sum(r["n_objects"] for r in chosen) <= budget_boxes


@pytest.mark.parametrize("budget, budget_boxes", [(None, None), (0, None), (None, -1), (2.5, None)])
def test_bad_budgets(budget, budget_boxes):
    with pytest.raises(InputError):
        top([rec(1, 0.5)], budget=budget, budget_boxes=budget_boxes)


# --------------------------------------------------------------------------- diverse / k-center


def test_k_center_picks_spread_points():
    # two tight clusters and one far point; first pick is index 0 (highest priority)
    points = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 0.0], [10.1, 0.0], [0.0, 10.0]])
    import torch

    picks = k_center_greedy(torch.tensor(points), None, n=3)
    # after 0: the farthest is (10.1, 0) at 10.1 (index 4); then (0, 10) is 10 from index 0
    # and 14.2 from index 4 (nearest 10), while (10, 0) is 0.1 from index 4 -> index 5
    assert picks == [0, 4, 5]


def test_k_center_seeded_by_labelled_centers():
    import torch

    points = torch.tensor([[0.0, 0.0], [5.0, 0.0], [9.0, 0.0]])
    centers = torch.tensor([[10.0, 0.0]])
    # distances to the center: 10, 5, 1 -> pick 0, then 1 (5 from both), then 2
    assert k_center_greedy(points, centers, n=2) == [0, 1]


def unit(angle_deg):
    a = np.deg2rad(angle_deg)
    return [np.cos(a), np.sin(a)]


def test_diverse_avoids_near_duplicates():
    # the three most informative images are near-duplicates (angles 0, 1, 2 degrees);
    # image 4 points at 90 degrees. top takes the duplicates; diverse spreads.
    records = [rec(1, 0.9), rec(2, 0.85), rec(3, 0.8), rec(4, 0.7), rec(5, 0.1)]
    emb = np.array([unit(0), unit(1), unit(2), unit(90), unit(45)])
    assert ids(top(records, budget=2)) == [1, 2]
    chosen = diverse(records, budget=2, embeddings=emb, embedding_ids=[1, 2, 3, 4, 5], pre_factor=2)
    # candidates = top 4; first pick = most informative (1), then the farthest from it (4)
    assert ids(chosen) == [1, 4]


def test_diverse_uses_labelled_embeddings_and_embedding_ids():
    records = [rec(1, 0.9), rec(2, 0.8), rec(3, 0.7)]
    # rows in a different order than the ranking, looked up by id
    emb = np.array([unit(80), unit(0), unit(40)])  # ids 3, 1, 2
    labelled = np.array([unit(0)])
    chosen = diverse(records, budget=1, embeddings=emb, embedding_ids=[3, 1, 2], labelled_embeddings=labelled)
    assert ids(chosen) == [3]  # farthest from the labelled image at 0 degrees


def test_diverse_box_budget_and_pre_factor():
    records = [rec(1, 0.9, 3), rec(2, 0.8, 3), rec(3, 0.7, 1), rec(4, 0.6, 1)]
    emb = np.array([unit(0), unit(10), unit(90), unit(45)])
    # candidates: top images with boxes summing to <= 2 * 4 = 8 -> 1, 2, 3 (7 boxes)
    chosen = diverse(records, budget_boxes=4, embeddings=emb, pre_factor=2)
    assert ids(chosen) == [1, 3]  # 1 (3 boxes), then 3 at 90 degrees (1 box); 2 no longer fits
    assert sum(r["n_objects"] for r in chosen) <= 4


def test_diverse_needs_embeddings():
    with pytest.raises(InputError, match="embeddings"):
        diverse([rec(1, 0.5)], budget=1)


# --------------------------------------------------------------------------- class-balanced


def test_class_quotas_inverse_frequency():
    # weights 1/8 and 1/2 -> exact quotas 0.8 and 3.2 -> floors 0, 3; the larger remainder (0.8) gets the last
    assert class_quotas({1: 8, 2: 2}, 4) == {1: 1, 2: 3}
    assert class_quotas({1: 1, 2: 1, 3: 2}, 5) == {1: 2, 2: 2, 3: 1}
    assert sum(class_quotas({1: 3, 2: 7, 5: 11}, 13).values()) == 13


def test_class_balanced_meets_quotas():
    # 8 images of the frequent class 1 (most informative), 3 images of the rare class 2
    records = [rec(i, 1.0 - i / 100) for i in range(8)] + [rec(10 + i, 0.5 - i / 100) for i in range(3)]
    classes = {i: [1] for i in range(8)} | {10 + i: [2] for i in range(3)}
    # frequencies 8 and 3: quotas of a budget of 4: 4*(1/8)/(1/8+1/3) = 1.09 -> 1, 2.91 -> 3
    chosen = class_balanced(records, budget=4, image_classes=classes)
    assert ids(top(records, budget=4)) == [0, 1, 2, 3]
    assert sorted(ids(chosen)) == [0, 10, 11, 12]
    assert ids(chosen) == [0, 10, 11, 12]  # in priority order


def test_class_balanced_rarest_class_wins_and_leftovers_fill():
    records = [rec(1, 0.9), rec(2, 0.8), rec(3, 0.7), rec(4, 0.6), rec(5, 0.5)]
    # image 3 has both classes: it belongs to the rare class 2. image 5 predicts nothing.
    classes = {1: [1], 2: [1], 3: [1, 2], 4: [1, 1]}
    # frequencies: class 1 in 4 images, class 2 in 1; budget 3 -> quotas 3*(1/4)/(5/4)=0.6 -> 1, 2.4 -> 2
    # class 2 has only image 3 -> one slot left over, filled by informativeness (image 2)
    chosen = class_balanced(records, budget=3, image_classes=classes)
    assert ids(chosen) == [1, 2, 3]
    chosen = class_balanced(records, budget=1, image_classes=classes)
    assert ids(chosen) == [3]


def test_class_balanced_box_budget():
    records = [rec(1, 0.9, 4), rec(2, 0.8, 2), rec(3, 0.3, 2), rec(4, 0.2, 1)]
    classes = {1: [1] * 4, 2: [1, 1], 3: [2, 2], 4: [2]}
    # freq: class 1 in 2 images, class 2 in 2 -> box quotas 3 and 3 of 6
    # class 1: image 1 (4 boxes) exceeds its quota, image 2 (2) fits; class 2: image 3 (2) fits, 4 (1) fits
    # leftovers: 6 - 5 = 1 box left, image 1 does not fit
    chosen = class_balanced(records, budget_boxes=6, image_classes=classes)
    assert ids(chosen) == [2, 3, 4]


def test_class_balanced_with_labelled_counts_takes_rarest_labelled_class_first():
    # informativeness order 1..6; labelled set: class 1 has 5 objects, class 2 has 1, class 3 none
    records = [rec(i, 1.0 - i / 10) for i in range(1, 7)]
    classes = {1: [1], 2: [1, 1], 3: [2], 4: [3], 5: [2, 3], 6: []}
    labelled = {1: 5, 2: 1}
    # pick 1: counts 1:5 2:1 3:0 -> class 3, its first image by priority is 4 -> 3:1
    # pick 2: 2:1, 3:1 tie -> fewer pool images: class 2 in {3, 5}, class 3 in {4, 5} -> tie -> id 2 -> image 3 -> 2:2
    # pick 3: 3:1 lowest -> image 5 (2 and 3) -> 2:3, 3:2
    # pick 4: 3:2 < 2:3 < 1:5, but no open image holds 3 or 2 -> class 1 -> image 1
    chosen = class_balanced(records, budget=4, image_classes=classes, labelled_classes=labelled)
    assert ids(chosen) == [4, 3, 5, 1]
    # image 6 predicts nothing: taken only after every predicted image
    assert ids(class_balanced(records, budget=6, image_classes=classes, labelled_classes=labelled)) == [4, 3, 5, 1, 2, 6]
    # key: the same balance, filled by another field's order
    by_box = [{**r, "box": float(r["image_id"])} for r in records]  # image 6 first, then 5 ...
    assert ids(class_balanced(by_box, budget=2, image_classes=classes, labelled_classes=labelled, key="box")) == [5, 4]


def test_class_balanced_with_labelled_counts_box_budget():
    records = [rec(1, 0.9, 3), rec(2, 0.8, 1), rec(3, 0.7, 1)]
    classes = {1: [2, 2, 2], 2: [2], 3: [1]}
    # nothing labelled: classes 1 and 2 tie at 0; class 1 is predicted in fewer images (1 < 2) ->
    # image 3 (1 box); then class 2: image 1 (3 boxes) does not fit the 1 box left, image 2 does
    chosen = class_balanced(records, budget_boxes=2, image_classes=classes, labelled_classes={})
    assert ids(chosen) == [3, 2]


def test_classes_from_annotations():
    anns = [{"image_id": 5, "category_id": 3}, {"image_id": 5, "category_id": 7}, {"image_id": 2, "category_id": 3}]
    assert classes_from_annotations(anns) == {5: [3, 7], 2: [3]}


# --------------------------------------------------------------------------- registry


def test_registry_and_lookup():
    assert set(STRATEGIES) == {"random", "top", "diverse", "class-balanced", "fused", "typical", "switch"}
    assert get_strategy("top") is top
    fn = get_strategy("top:box")
    records = [rec(1, 0.9, box=0.1), rec(2, 0.1, box=0.9)]
    assert ids(fn(records, 1)) == [2]
    custom = lambda records, budget, budget_boxes, **_: list(records[:budget])  # noqa: E731
    assert get_strategy(custom) is custom
    with pytest.raises(ValueError, match="random, top, diverse, class-balanced, fused"):
        get_strategy("best")


# --------------------------------------------------------------------------- fused


def test_fused_is_weighted_reciprocal_rank_fusion_by_hand():
    from det_al.selection.strategies import fused, fusion_scores

    # informativeness ranks 1, 2, 3 and novelty ranks 3, 1, 2 (image ids 1, 2, 3)
    records = [rec(1, 0.9, novelty=0.1), rec(2, 0.5, novelty=0.8), rec(3, 0.2, novelty=0.4)]
    got = fusion_scores(records)  # k = 60, weights 1 and 1
    expected = [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62]
    assert got == pytest.approx(expected)
    assert ids(fused(records, budget=2)) == [2, 1]
    # novelty weighted 3, k = 0: image 1 gets 1/1 + 3/3 = 2, image 2 1/2 + 3/1 = 3.5, image 3 1/3 + 3/2
    scores = fusion_scores(records, {"informativeness": 1, "novelty": 3}, k=0)
    assert scores == pytest.approx([2.0, 3.5, 1 / 3 + 1.5])
    assert ids(get_strategy("fused")(records, budget=3, fusion_weights={"informativeness": 1, "novelty": 3},
                                     fusion_k=0)) == [2, 1, 3]
    # never a gate: the image last by novelty is still first when informativeness is all that counts
    assert ids(fused(records, budget=1, fusion_weights={"informativeness": 1, "novelty": 0})) == [1]


def test_fused_without_novelty_is_one_clear_error():
    with pytest.raises(InputError, match="needs 'novelty'.*--labelled"):
        run_strategy("fused", [rec(1, 0.5), rec(2, 0.4)], budget=1)


def test_diverse_prefilters_by_fusion():
    # pre_factor 1, budget 1: the single candidate is the fused first, image 2 (not image 1)
    records = [rec(1, 0.9, novelty=0.1), rec(2, 0.5, novelty=0.8), rec(3, 0.2, novelty=0.4)]
    emb = np.eye(3)
    kw = {"budget": 1, "embeddings": emb, "embedding_ids": [1, 2, 3], "pre_factor": 1}
    assert ids(get_strategy("diverse:fused")(records, **kw)) == [2]
    assert ids(get_strategy("diverse")(records, **kw)) == [1]
