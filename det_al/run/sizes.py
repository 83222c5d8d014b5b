"""The sizes a pool records against its files' true sizes, found while scoring.

A COCO pool's ``width``/``height`` can be stale (the file was replaced) or taken before EXIF
rotation. Scoring reads every file anyway and uses its true (EXIF-transposed) size, and so do the
outputs (``pseudo_labels.json``, selections, exports); but a stale pool entry used to surface only
at ``det-al merge``, after people had labelled, one image per run. :func:`stale_sizes` lists every
such image once, at the end of the scoring run, and :func:`pool_with_true_sizes` gives the pool to
use from then on.
"""

from __future__ import annotations

import numpy as np

from det_al.data.pool import PoolImages


def stale_sizes(pool: PoolImages, scored: list[dict]) -> list[dict]:
    """The scored images whose size in ``pool`` differs from their file's: ``{"image_id",
    "file_name", "pool": [w, h], "file": [w, h]}`` each, in ``scored`` order. Pool entries without
    a size (a folder pool) have nothing to differ.

    >>> pool = PoolImages.from_dicts([{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
    ...                               {"id": 2, "file_name": "b.jpg"}])
    >>> stale_sizes(pool, [{"id": 1, "file_name": "a.jpg", "width": 480, "height": 640},
    ...                    {"id": 2, "file_name": "b.jpg", "width": 9, "height": 9}])
    [{'image_id': 1, 'file_name': 'a.jpg', 'pool': [640, 480], 'file': [480, 640]}]
    """
    if not len(pool) or not scored:
        return []
    order = np.argsort(pool.ids, kind="stable")
    sorted_ids = pool.ids[order]
    out = []
    for image in scored:
        if image.get("width") is None or image.get("height") is None:
            continue
        k = int(np.searchsorted(sorted_ids, image["id"]))
        if k == len(sorted_ids) or sorted_ids[k] != image["id"]:
            continue
        i = int(order[k])
        recorded = (int(pool.widths[i]), int(pool.heights[i]))
        if recorded[0] and recorded[1] and recorded != (int(image["width"]), int(image["height"])):
            out.append({"image_id": image["id"], "file_name": image["file_name"], "pool": list(recorded),
                        "file": [int(image["width"]), int(image["height"])]})
    return out


def pool_with_true_sizes(pool: dict, stale: list[dict]) -> dict:
    """The COCO pool (``images`` and ``categories``) with the sizes of ``stale`` set to the files'."""
    true = {entry["image_id"]: entry["file"] for entry in stale}
    images = []
    for image in pool["images"]:
        if image["id"] in true:
            image = {**image, "width": true[image["id"]][0], "height": true[image["id"]][1]}
        images.append(image)
    return {"images": images, "categories": list(pool.get("categories") or [])}
