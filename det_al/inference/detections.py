"""``Detections``: the detections of one forward pass over one image.

Equal-length fields, validated on construction, indexable by a boolean mask or index tensor
(in the manner of supervision's ``Detections``). Boxes are ``xyxy`` float pixels of the
original image; labels are the model's contiguous labels (0 is background).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from det_al.inference.mask_paste import paste_masks, paste_masks_in_window

PROB_KINDS = ("softmax", "sigmoid")


@dataclass
class Detections:
    """Detections of one pass over one image.

    Attributes:
        boxes: ``[N, 4]`` float, ``(x1, y1, x2, y2)`` pixels of the original image.
        scores: ``[N]`` float, the detector's confidence of each detection.
        labels: ``[N]`` int64, the model's contiguous label (1..C-1; 0 is background).
        probs: ``[N, C]`` float, the full class-probability vector of each detection:
            softmax including background (index 0) for R-CNN and SSD, per-class sigmoid for
            RetinaNet and FCOS (see ``prob_kind``).
        masks: ``[N, H, W]`` float mask probabilities in the original image size (Mask R-CNN),
            or ``None``; with ``image_size`` set, ``[N, M, M]`` in the frame of each box (the
            mask head's own output, what the stochastic passes keep: see
            :mod:`det_al.inference.mask_paste`).
        prob_kind: ``"softmax"`` or ``"sigmoid"``.
        image_size: ``(H, W)`` of the image box-frame masks belong to; ``None`` when the masks
            (if any) are full-image maps.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    probs: Tensor
    masks: Tensor | None = None
    prob_kind: str = "softmax"
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"expected boxes of shape (N, 4), got {tuple(self.boxes.shape)}")
        if tuple(self.scores.shape) != (n,):
            raise ValueError(f"expected scores of shape ({n},), got {tuple(self.scores.shape)}")
        if tuple(self.labels.shape) != (n,):
            raise ValueError(f"expected labels of shape ({n},), got {tuple(self.labels.shape)}")
        if self.probs.ndim != 2 or self.probs.shape[0] != n:
            raise ValueError(f"expected probs of shape ({n}, C), got {tuple(self.probs.shape)}")
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[0] != n):
            raise ValueError(f"expected masks of shape ({n}, H, W), got {tuple(self.masks.shape)}")
        if self.prob_kind not in PROB_KINDS:
            raise ValueError(f"prob_kind must be one of {PROB_KINDS}, got {self.prob_kind!r}")

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]

    def __getitem__(self, index: Tensor | slice | list[int]) -> "Detections":
        """Select detections by boolean mask, index tensor, list or slice."""
        return Detections(
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            probs=self.probs[index],
            masks=None if self.masks is None else self.masks[index],
            prob_kind=self.prob_kind,
            image_size=self.image_size,
        )

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(
            boxes=self.boxes.to(device),
            scores=self.scores.to(device),
            labels=self.labels.to(device),
            probs=self.probs.to(device),
            masks=None if self.masks is None else self.masks.to(device),
            prob_kind=self.prob_kind,
            image_size=self.image_size,
        )

    @property
    def mask_canvas(self) -> tuple[int, int]:
        """``(H, W)`` of the image the masks belong to (full-image or box-frame masks)."""
        if self.masks is None:
            raise ValueError("these detections have no masks")
        return self.image_size if self.image_size is not None else tuple(self.masks.shape[-2:])

    def window_masks(self, index: Tensor | list[int], window: tuple[int, int, int, int]) -> Tensor:
        """``[n, y1 - y0, x1 - x0]``: the mask probabilities of detections ``index`` inside the
        image window ``(x0, y0, x1, y1)``, pasted there when the masks are in the box frame."""
        if self.masks is None:
            raise ValueError("these detections have no masks")
        x0, y0, x1, y1 = window
        if self.image_size is None:
            return self.masks[index, y0:y1, x0:x1]
        return paste_masks_in_window(self.masks[index], self.boxes[index], window)

    def image_masks(self) -> Tensor | None:
        """``[N, H, W]`` full-image mask probabilities (pasting box-frame masks), or ``None``."""
        if self.masks is None or self.image_size is None:
            return self.masks
        return paste_masks(self.masks, self.boxes, self.image_size)

    @staticmethod
    def gather_window_masks(detections: "list[Detections]", picks: list[tuple[int, int]],
                            window: tuple[int, int, int, int]) -> Tensor:
        """``[n, y1 - y0, x1 - x0]``: the masks of detection ``i`` of ``detections[t]`` for each
        ``(t, i)`` of ``picks``, inside the image window ``(x0, y0, x1, y1)``
        (:meth:`window_masks` of each, box-frame masks pasted in one call)."""
        if all(detections[t].image_size is not None for t, _ in picks):
            masks = torch.stack([detections[t].masks[i] for t, i in picks])
            boxes = torch.stack([detections[t].boxes[i] for t, i in picks])
            return paste_masks_in_window(masks, boxes, window)
        return torch.stack([detections[t].window_masks([i], window)[0] for t, i in picks])

    @classmethod
    def empty(
        cls, num_classes: int, prob_kind: str = "softmax", mask_size: tuple[int, int] | None = None
    ) -> "Detections":
        """No detections, with the shapes a model of ``num_classes`` classes would give."""
        return cls(
            boxes=torch.zeros((0, 4)),
            scores=torch.zeros((0,)),
            labels=torch.zeros((0,), dtype=torch.int64),
            probs=torch.zeros((0, num_classes)),
            masks=None if mask_size is None else torch.zeros((0, *mask_size)),
            prob_kind=prob_kind,
        )


def background_probs(num_classes: int, prob_kind: str) -> Tensor:
    """The probability vector a pass that missed an object contributes, ``[C]``.

    Softmax families: all mass on background (one-hot at index 0). Sigmoid families: every
    class probability 0 (nothing fired).

    >>> background_probs(3, "softmax").tolist()
    [1.0, 0.0, 0.0]
    >>> background_probs(3, "sigmoid").tolist()
    [0.0, 0.0, 0.0]
    """
    v = torch.zeros(num_classes)
    if prob_kind == "softmax":
        v[0] = 1.0
    return v
