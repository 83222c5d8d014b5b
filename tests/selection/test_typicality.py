"""Typical-first selection and the budget-aware switch (det_al.selection.typicality), on
hand-placed embeddings."""

import numpy as np
import pytest
import torch

from det_al.errors import InputError
from det_al.selection.strategies import get_strategy, top
from det_al.selection.typicality import coverage, coverage_radius, switch_strategy, typicality, typicality_strategy


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_neighbours():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    # k = 2: point 0 -> (1 + 3) / 2 = 2; point 1 -> (1 + 2) / 2 = 1.5; point 2 -> (2 + 3) / 2 = 2.5; point 3 -> (4 + 6) / 2 = 5
    assert typicality(points, k=2).tolist() == pytest.approx([1 / 2, 1 / 1.5, 1 / 2.5, 1 / 5])
    assert typicality(points[:1]).tolist() == [1.0]  # a lone point


def test_coverage_counts_the_pool_within_the_radius_of_a_labelled_point():
    pool = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    assert coverage(pool, torch.tensor([[1.0]], dtype=torch.float64), 1.0) == pytest.approx(0.75)
    assert coverage(pool, pool[:0], 1.0) == 0.0
    # 1st nearest other point of 0, 1, 2, 10: distances 1, 1, 1, 8 -> median 1
    assert coverage_radius(pool, k=1) == pytest.approx(1.0)


def _blobs():
    """Unit-norm 2-D embeddings: blob A near angle 0, blob B near angle 90 degrees; the middle
    point of each blob (smallest angle offset) is its most typical one."""
    angles = [0.0, -0.05, 0.05, -0.1, 0.1, 90.0, 89.9, 90.1, 89.7, 90.3]
    emb = np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in angles])
    records = [{"image_id": i + 100, "informativeness": float(i) / 10} for i in range(len(angles))]
    return records, emb


def test_typicality_picks_the_most_typical_image_of_the_uncovered_cluster():
    records, emb = _blobs()
    labelled = emb[[0]]  # blob A is covered
    chosen = typicality_strategy(records, 1, embeddings=emb, labelled_embeddings=labelled, seed=0, neighbours=2)
    assert [r["image_id"] for r in chosen] == [105]  # the centre of blob B, not its most informative (109)
    # two picks with nothing labelled: one per blob, each its centre
    chosen = typicality_strategy(records, 2, embeddings=emb, labelled_embeddings=None, seed=0, neighbours=2)
    assert sorted(r["image_id"] for r in chosen) == [100, 105]
    with pytest.raises(InputError):
        typicality_strategy(records, None, 5, embeddings=emb)


def test_the_switch_turns_to_uncertainty_once_the_pool_is_covered():
    records, emb = _blobs()
    # nothing labelled: coverage 0 -> typical picks
    poor = switch_strategy(records, 2, embeddings=emb, labelled_embeddings=emb[:0], seed=0, neighbours=2, then=top)
    assert sorted(r["image_id"] for r in poor) == [100, 105]
    # everything labelled: coverage 1 -> the most informative
    covered = switch_strategy(records, 2, embeddings=emb, labelled_embeddings=emb, seed=0, then=top)
    assert [r["image_id"] for r in covered] == [109, 108]
    assert get_strategy("switch:informativeness")(records, 2, embeddings=emb, labelled_embeddings=emb) == covered
    assert get_strategy("typical") is typicality_strategy
