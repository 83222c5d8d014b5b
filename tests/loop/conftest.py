"""The loop tests' hand-written data: a labelled set of one image, a pool of two and their oracle
labels (``loop_data()``, a fresh ``LoopData`` per call)."""

from __future__ import annotations

import pytest

from det_al.loop.data import LoopData


def _loop_data() -> LoopData:
    """One labelled image, two pool images (one per domain) and their oracle labels, category 5."""
    cats = [{"id": 5, "name": "a"}]
    labelled = {"images": [{"id": 1, "file_name": "1.png"}], "annotations": [{"id": 9, "image_id": 1, "category_id": 5, "bbox": [0, 0, 2, 2]}], "categories": cats}
    oracle = {
        "images": [{"id": 2, "file_name": "2.png", "domain": "old"}, {"id": 3, "file_name": "3.png", "domain": "drifted"}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 5, "bbox": [1, 1, 2, 2]}, {"id": 2, "image_id": 3, "category_id": 5, "bbox": [0, 0, 1, 1]}],
        "categories": cats,
    }
    pool = {"images": oracle["images"], "annotations": [], "categories": cats}
    return LoopData(labelled=labelled, pool=pool, oracle=oracle, val=labelled, image_root=".", categories=cats)


@pytest.fixture
def loop_data():
    """``loop_data()``: a fresh copy of the hand-written :class:`LoopData` (runs change theirs)."""
    return _loop_data
