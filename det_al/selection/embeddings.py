"""Per-image embeddings for the strategies that need them (``diverse``, ``typical``, ``switch``).

``det-al score`` writes one backbone embedding per scored image (``embeddings.npy``, with the
image ids in ``embeddings_ids.json``); a strategy looks up the rows of the records it ranks.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from det_al.errors import InputError


def unit_rows(x: Any) -> torch.Tensor:
    """``x`` ``[N, D]`` as float64 rows of length 1 (an all-zero row stays zero).

    >>> unit_rows([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim != 2:
        raise InputError(f"expected embeddings of shape (N, D), got {tuple(t.shape)}")
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12)


def record_embeddings(records: Sequence[Mapping[str, Any]], embeddings: Any,
                      embedding_ids: Sequence[int] | None) -> torch.Tensor:
    """The embedding of each record, ``[N, D]`` float64, looked up by ``image_id`` in
    ``embedding_ids`` (without ids, row ``i`` is record ``i``'s)."""
    if embeddings is None:
        raise InputError("this strategy needs per-image embeddings (embeddings.npy from det-al score)")
    emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    if emb.ndim != 2:
        raise InputError(f"expected embeddings of shape (N, D), got {tuple(emb.shape)}")
    if embedding_ids is None:
        if len(emb) != len(records):
            raise InputError(f"{len(emb)} embeddings for {len(records)} ranking records and no embedding ids")
        return emb
    row = {int(i): k for k, i in enumerate(embedding_ids)}
    missing = [r["image_id"] for r in records if int(r["image_id"]) not in row]
    if missing:
        raise InputError(f"no embedding for {len(missing)} ranked images (first: image_id {missing[0]})")
    return emb[[row[int(r["image_id"])] for r in records]]
