"""The warm-start benchmark's detector: a small dense head over frozen, cached backbone features.

The backbone (:mod:`digit_scenes`) is pretrained apart and frozen, so each scene's feature map
``[64, 16, 16]`` is computed once per seed and every arm, round and lookahead candidate trains
only :class:`Head` on the cached features (in seconds on a CPU). One cell per stride-4 step
predicts the class (softmax over background + 10 digits) and the distances from its centre to
the box's four sides; cells in the central half of a box are its positives. Its passes become
det_al :class:`~det_al.inference.detections.Detections` (the deterministic one, and ``T`` with
dropout on), and det_al scores them with its own matching, uncertainty and image combination
(:func:`det_al.run.score_lines.score_image`), as ``det-al score`` scores a torchvision model.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from det_al.inference.detections import Detections

from digit_scenes import CHANNELS, NUM_CLASSES, SIZE, STRIDE

CELLS = SIZE // STRIDE
NEG_WEIGHT = 0.1
BATCH = 32


class Head(nn.Module):
    """``[B, CHANNELS, CELLS, CELLS]`` -> class logits ``[B, 11, CELLS, CELLS]`` (0: background)
    and log side distances ``[B, 4, CELLS, CELLS]`` (left, top, right, bottom, in strides)."""

    def __init__(self, dropout: float = 0.2, width: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, width, 1)
        self.drop = nn.Dropout(dropout)
        self.cls = nn.Conv2d(width, NUM_CLASSES + 1, 3, padding=1)
        self.reg = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(torch.relu(self.conv(x)))
        return self.cls(h), self.reg(h)


def _centres() -> torch.Tensor:
    c = (torch.arange(CELLS, dtype=torch.float32) + 0.5) * STRIDE
    return torch.stack(torch.meshgrid(c, c, indexing="ij"))  # [2 (y, x), CELLS, CELLS]


def targets(boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scene: the class of each cell ``[N, CELLS, CELLS]`` (0 background, digit + 1) and its
    side distances ``[N, 4, CELLS, CELLS]`` (log, in strides; 0 off objects). A cell is positive
    for a box when its centre lies in the box's central half (and always the cell holding the
    box's centre); where boxes compete, the smaller wins."""
    yx = _centres()
    cls = torch.zeros((len(boxes), CELLS, CELLS), dtype=torch.int64)
    reg = torch.zeros((len(boxes), 4, CELLS, CELLS))
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        order = np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) if len(b) else []
        for k in order:  # largest first, so smaller boxes overwrite
            x1, y1, x2, y2 = (float(v) for v in b[k])
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            inside = ((yx[1] - cx).abs() <= w / 4) & ((yx[0] - cy).abs() <= h / 4)
            inside[min(int(cy // STRIDE), CELLS - 1), min(int(cx // STRIDE), CELLS - 1)] = True
            sides = torch.stack([yx[1] - x1, yx[0] - y1, x2 - yx[1], y2 - yx[0]]).clamp_min(1.0) / STRIDE
            cls[i][inside] = int(lab[k]) + 1
            reg[i][:, inside] = sides.log()[:, inside]
    return cls, reg


def loss(head: Head, feats: torch.Tensor, cls: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    logits, pred = head(feats)
    ce = nn.functional.cross_entropy(logits, cls, reduction="none")
    pos = cls > 0
    n_pos = pos.sum().clamp_min(1)
    weight = torch.where(pos, 1.0, NEG_WEIGHT)
    box = nn.functional.smooth_l1_loss(pred.permute(0, 2, 3, 1)[pos], reg.permute(0, 2, 3, 1)[pos], reduction="sum")
    return ((ce * weight).sum() + box) / n_pos


def train(head: Head, feats: torch.Tensor, cls: torch.Tensor, reg: torch.Tensor, epochs: int, lr: float,
          seed: Sequence[int], warmup: int = 0) -> Head:
    """``epochs`` of AdamW over the rows given, cosine decay after ``warmup`` linear steps; the
    data order and dropout follow ``seed`` only (the same for every arm of a seed and round)."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
    torch.manual_seed(int(np.random.SeedSequence([*seed, 1]).generate_state(1)[0]))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(len(feats) / BATCH))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    )
    head.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(feats), generator=generator).split(BATCH):
            value = loss(head, feats[batch], cls[batch], reg[batch])
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


def clone(head: Head) -> Head:
    return copy.deepcopy(head)


def decode(logits: torch.Tensor, reg: torch.Tensor, score_threshold: float = 0.05, max_detections: int = 10) -> list[Detections]:
    """Detections of each scene: cells whose best digit probability passes ``score_threshold``,
    their boxes, class-wise NMS at IoU 0.5, the ``max_detections`` best. ``probs`` is the cell's
    full softmax (background at index 0), so det_al sees the class distribution."""
    yx = _centres().flatten(1)  # [2, HW]
    probs = logits.softmax(dim=1).flatten(2)  # [B, 11, HW]
    sides = reg.exp().flatten(2) * STRIDE  # [B, 4, HW]
    out = []
    for p, d in zip(probs, sides):
        score, label = p[1:].max(dim=0)
        keep = torch.nonzero(score > score_threshold).flatten()
        boxes = torch.stack([yx[1] - d[0], yx[0] - d[1], yx[1] + d[2], yx[0] + d[3]], dim=1)[keep].clamp(0, SIZE)
        score, label, rows = score[keep], label[keep] + 1, p[:, keep].T
        kept = batched_nms(boxes, score, label, 0.5)[:max_detections]
        out.append(Detections(boxes[kept], score[kept], label[kept], rows[kept].contiguous(), prob_kind="softmax"))
    return out


@torch.no_grad()
def detect(head: Head, feats: torch.Tensor, dropout_seed: int | None = None, batch: int = 256) -> list[Detections]:
    """One pass over every scene: deterministic (``dropout_seed`` None) or with dropout on."""
    if dropout_seed is None:
        head.eval()
    else:
        head.train()
        torch.manual_seed(dropout_seed)
    out = []
    for i in range(0, len(feats), batch):
        out += decode(*head(feats[i : i + batch]))
    head.eval()
    return out


def to_results(detections: Sequence[Detections], image_ids: Sequence[int]) -> list[dict]:
    """COCO results (category id = label: digit d is category d + 1)."""
    results = []
    for image_id, det in zip(image_ids, detections):
        for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            results.append({"image_id": int(image_id), "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    return results
