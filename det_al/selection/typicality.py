"""Selection for small budgets: typical images first, and a switch to uncertainty once the
labelled set covers the pool.

At a small labelling budget the images that teach a detector most are the typical ones, not
the hardest (Hacohen, Dekel & Weinshall, ICML 2022, "Active Learning on a Budget":
TypiClust); once the labelled set covers the data, uncertainty wins (Doucet et al. 2024, TCM;
DCoM's switch). Both strategies here work on per-image embeddings (``embeddings.npy`` of
``det-al score``; L2-normalised, Euclidean distance):

- :func:`typicality_strategy` (``"typical"``): k-means over the pool and the labelled set
  into ``labelled + budget`` clusters; each pick goes to the cluster holding the fewest
  labelled (and already picked) images, the largest first, and takes its most typical pool
  image (:func:`typicality`: the inverse mean distance to its ``k`` nearest neighbours in the
  cluster).
- :func:`switch_strategy` (``"switch"``): :func:`typicality_strategy` while the labelled set
  covers less than ``coverage_threshold`` of the pool (:func:`coverage` within
  :func:`coverage_radius`), then :func:`top` by ``key`` (the informativeness, or any ranking
  field). In ``benchmarks/bench_warm_start.py`` a start set of 150 covered about 0.36 of a
  scored subset of 300 and 250 labelled about 0.5: the switch came after two rounds.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from det_al.errors import InputError
from det_al.selection.embeddings import record_embeddings, unit_rows

logger = logging.getLogger(__name__)

#: how many nearest neighbours define typicality
NEIGHBOURS = 10
#: the labelled set's coverage of the pool at which :func:`switch_strategy` turns to uncertainty
COVERAGE_THRESHOLD = 0.5


def typicality(points: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """``1 / mean distance to the k nearest other points`` of each row of ``points`` ``[N, D]``
    (``k`` capped at ``N - 1``; a lone point gets 1).

    >>> typicality(torch.tensor([[0.0], [1.0], [3.0]]), k=1).tolist()  # nearest: 1, 1, 2
    [1.0, 1.0, 0.5]
    """
    n = len(points)
    if n < 2:
        return torch.ones(n, dtype=points.dtype)
    k = min(k, n - 1)
    d = torch.cdist(points, points)
    d.fill_diagonal_(math.inf)
    mean = d.topk(k, dim=1, largest=False).values.mean(dim=1)
    return 1.0 / mean.clamp_min(1e-12)


def coverage_radius(points: torch.Tensor, k: int = 1) -> float:
    """The median distance from a point of ``points`` ``[N, D]`` to its ``k``-th nearest other point."""
    if len(points) < 2:
        return 0.0
    k = min(k, len(points) - 1)
    d = torch.cdist(points, points)
    d.fill_diagonal_(math.inf)
    return float(d.topk(k, dim=1, largest=False).values[:, -1].median())


def coverage(pool: torch.Tensor, labelled: torch.Tensor, radius: float) -> float:
    """Share of ``pool`` rows ``[N, D]`` within ``radius`` of some ``labelled`` row ``[L, D]``.

    >>> coverage(torch.tensor([[0.0], [1.0], [5.0]]), torch.tensor([[0.5]]), 0.6)  # 0 and 1 covered
    0.6666666666666666
    """
    if len(pool) == 0:
        return 1.0
    if len(labelled) == 0:
        return 0.0
    return float((torch.cdist(pool, labelled).min(dim=1).values <= radius).double().mean())


def _kmeans(points: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    _, assignment = kmeans2(points, n_clusters, minit="++", seed=seed, iter=20)
    return assignment


def typicality_strategy(
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    *,
    embeddings: Any = None,
    embedding_ids: Sequence[int] | None = None,
    labelled_embeddings: Any = None,
    seed: int = 0,
    neighbours: int = NEIGHBOURS,
    **_: Any,
) -> list[dict]:
    """TypiClust for detection pools: the most typical image of each uncovered cluster.

    The pool's and the labelled set's embeddings are clustered together (k-means, ``L + budget``
    clusters, seeded). Each pick goes to the cluster with the fewest labelled or picked images
    (ties: the largest cluster, then the lowest cluster index) and takes its unpicked pool image
    of highest :func:`typicality` within the cluster. An image budget only (``budget_boxes``
    raises: typicality knows nothing of boxes).
    """
    if budget_boxes is not None or budget is None or budget < 1:
        raise InputError("the typicality strategy takes an image budget (--budget) only")
    if not records:
        return []
    pool = unit_rows(record_embeddings(records, embeddings, embedding_ids))
    labelled = unit_rows(labelled_embeddings) if labelled_embeddings is not None and len(labelled_embeddings) else pool[:0]
    budget = min(budget, len(records))
    points = torch.cat([pool, labelled])
    n_clusters = min(len(labelled) + budget, len(points))
    assignment = torch.as_tensor(_kmeans(points.numpy(), n_clusters, seed))
    pool_cluster = assignment[: len(pool)]
    taken = torch.bincount(assignment[len(pool):], minlength=n_clusters)
    size = torch.bincount(assignment, minlength=n_clusters)
    typical = torch.zeros(len(pool), dtype=torch.float64)
    for c in torch.unique(pool_cluster).tolist():
        members = torch.nonzero(assignment == c).flatten()
        value = typicality(points[members], neighbours)
        in_pool = members < len(pool)
        typical[members[in_pool]] = value[in_pool]
    available = torch.ones(len(pool), dtype=torch.bool)
    picks: list[int] = []
    while len(picks) < budget:
        open_clusters = torch.unique(pool_cluster[available]).tolist()
        if not open_clusters:
            break
        c = min(open_clusters, key=lambda c: (int(taken[c]), -int(size[c]), c))
        candidates = torch.nonzero(available & (pool_cluster == c)).flatten()
        i = int(candidates[torch.argmax(typical[candidates])])
        picks.append(i)
        available[i] = False
        taken[c] += 1
    return [records[i] for i in picks]


def switch_strategy(
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    *,
    embeddings: Any = None,
    embedding_ids: Sequence[int] | None = None,
    labelled_embeddings: Any = None,
    coverage_threshold: float = COVERAGE_THRESHOLD,
    key: str = "informativeness",
    then: Callable[..., list[dict]] | None = None,
    **context: Any,
) -> list[dict]:
    """Typical images while the labelled set covers the pool poorly, uncertain ones after.

    The coverage is the share of pool images within the coverage radius (:func:`coverage_radius`
    of the pool: the median distance from a pool image to its nearest other pool image) of a
    labelled image: the labelled set covers a pool image when it is as close to it as the pool's
    images typically are to each other. Below
    ``coverage_threshold`` (default :data:`COVERAGE_THRESHOLD`) the batch is
    :func:`typicality_strategy`'s, from there ``then``'s by ``key`` (the registry passes
    :func:`det_al.selection.strategies.top`; ``"fused"``: informativeness and novelty by rank).
    """
    if then is None:
        raise ValueError("switch_strategy needs then=, the strategy used once the pool is covered")
    if not records:
        return []
    pool = unit_rows(record_embeddings(records, embeddings, embedding_ids))
    labelled = unit_rows(labelled_embeddings) if labelled_embeddings is not None and len(labelled_embeddings) else pool[:0]
    covered = coverage(pool, labelled, coverage_radius(pool))
    phase = "typical" if covered < coverage_threshold else "uncertain"
    logger.info("switch: labelled set covers %.0f%% of the pool (switch at %.0f%%): %s images",
                100 * covered, 100 * coverage_threshold, phase)
    if phase == "typical":
        return typicality_strategy(records, budget, budget_boxes, embeddings=embeddings, embedding_ids=embedding_ids,
                                   labelled_embeddings=labelled_embeddings, **context)
    return then(records, budget, budget_boxes, key=key, **context)
