"""The tail-agreement benchmark: its image-level comparisons on hand-made values, and its
family list names tiny models of those families."""

import doctest
import math

import numpy as np
import pytest

from det_al.config import ModelConfig
from det_al.models.build import build_model, model_family


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_tail_agreement")


def test_docstring_examples(bench):
    assert doctest.testmod(bench).failed == 0


def test_top_quarter_shared_hand_computed(bench):
    # 8 images, quarter 2: a's top {1, 2}; b's top {3, 2} (4 > 3 > 1 ...): one of two shared
    a = {1: 0.9, 2: 0.8, 3: 0.1, 4: 0.0, 5: 0.0, 6: 0.0, 7: 0.0, 8: 0.0}
    b = {1: 0.2, 2: 0.8, 3: 0.9, 4: 0.1, 5: 0.0, 6: 0.0, 7: 0.0, 8: 0.0}
    assert bench.top_quarter_shared(a, b) == 0.5
    assert bench.top_quarter_shared(a, a) == 1.0
    # ties break by image id: a's top {1, 2} against {5, 6}
    assert bench.top_quarter_shared(a, {i: 1.0 if i >= 5 else 0.0 for i in a}) == 0.0


def test_image_agreement_pairs_values_by_image_id(bench):
    # same ranking in a different dict order: rho 1; reversed: rho -1
    a = {3: 0.3, 1: 0.1, 2: 0.2, 4: 0.4}
    assert bench.image_agreement(a, {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0}) == (pytest.approx(1.0), 1.0)
    rho, shared = bench.image_agreement(a, {1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0})
    assert rho == pytest.approx(-1.0) and shared == 0.0


def test_rank_correlation_without_a_ranking_is_nan(bench):
    assert math.isnan(bench.rank_correlation(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))
    assert math.isnan(bench.rank_correlation(np.array([1.0, 2.0]), np.array([1.0, 2.0])))


def test_the_measured_families_are_tiny_models_of_those_families(bench):
    for family, name in bench.MODELS.items():
        assert model_family(build_model(ModelConfig(name, 4))) == family
