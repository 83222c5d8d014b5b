"""Report thumbnails drawn with OpenCV: pseudo-label boxes and mask outlines coloured by uncertainty.

Colours come from one colormap (:data:`UNCERTAINTY_CMAP`, low uncertainty dark blue, high yellow)
over ``[0, vmax]``; the page shows the same colormap as its legend. The first boxes are numbered
as in the page's list of the image's objects, so no user text is ever drawn into pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from matplotlib import colormaps

logger = logging.getLogger(__name__)

#: Matplotlib colormap used for boxes and for the legend.
UNCERTAINTY_CMAP = "plasma"

#: Colours (RGB) of the individual stochastic passes, cycled: matplotlib's tab10.
PASS_COLOURS = [tuple(int(255 * c) for c in colormaps["tab10"](i)[:3]) for i in range(10)]


@dataclass
class DrawnObject:
    """One pseudo-label to draw: ``box`` xyxy pixels of the original image, ``mask`` [H, W] bool or None."""

    box: tuple[float, float, float, float]
    uncertainty: float
    mask: np.ndarray | None = None


def uncertainty_colour(value: float, vmax: float) -> tuple[int, int, int]:
    """RGB colour of an uncertainty ``value`` on ``[0, vmax]`` (clipped)."""
    t = 0.0 if vmax <= 0 or not np.isfinite(value) else min(max(value / vmax, 0.0), 1.0)
    # stay off the darkest 10% of plasma so that low-uncertainty boxes remain visible
    r, g, b, _ = colormaps[UNCERTAINTY_CMAP](0.1 + 0.9 * t)
    return int(255 * r), int(255 * g), int(255 * b)


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the longer side is at most ``max_side`` (never enlarged)."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    height, width = image.shape[:2]
    new_w, new_h = fit_size(width, height, max_side)
    if (new_w, new_h) != (width, height):
        canvas = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    else:
        canvas = image.copy()  # never draw on the caller's image
    return np.ascontiguousarray(canvas), new_w / width, new_h / height


def _label(canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """A small filled tag with ``text`` (ASCII digits only) at the top-left corner of a box."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    y0 = max(y - th - base - 2, 0)
    cv2.rectangle(canvas, (x, y0), (x + tw + 4, y0 + th + base + 2), colour, -1)
    dark = sum(colour) > 3 * 150
    cv2.putText(canvas, text, (x + 2, y0 + th + 1), font, scale,
                (0, 0, 0) if dark else (255, 255, 255), thick, cv2.LINE_AA)


def draw_objects(image: np.ndarray, objects: list[DrawnObject], vmax: float,
                 max_side: int = 360, numbered: int = 12) -> np.ndarray:
    """Thumbnail of ``image`` ([H, W, 3] uint8 RGB) with boxes and mask outlines.

    The first ``numbered`` objects get a number tag; with more objects than that, lines are thin.
    Returns an RGB uint8 array whose longer side is at most ``max_side``.
    """
    canvas, sx, sy = _resize(image, max_side)
    thickness = 2 if len(objects) <= numbered else 1
    # last object first, so that the first (most uncertain, numbered) ones end up on top
    for number, obj in reversed(list(enumerate(objects, start=1))):
        colour = uncertainty_colour(obj.uncertainty, vmax)
        if obj.mask is not None and obj.mask.any():
            contours, _ = cv2.findContours(obj.mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            scaled = [np.round(c * np.array([sx, sy])).astype(np.int32) for c in contours]
            cv2.polylines(canvas, scaled, True, colour, 1, cv2.LINE_AA)
        x1, y1, x2, y2 = obj.box
        p1 = (int(round(x1 * sx)), int(round(y1 * sy)))
        p2 = (int(round(x2 * sx)), int(round(y2 * sy)))
        cv2.rectangle(canvas, p1, p2, colour, thickness, cv2.LINE_AA)
        if number <= numbered:
            _label(canvas, str(number), p1[0], p1[1], colour)
    return canvas


def draw_passes(image: np.ndarray, passes: list[list[tuple[float, float, float, float]]],
                objects: list[DrawnObject], max_side: int = 360, numbered: int = 12) -> np.ndarray:
    """Thumbnail with the boxes of each stochastic pass (one colour per pass, thin lines).

    ``passes[t]`` lists pass ``t``'s boxes as xyxy pixels of the original image; the
    pseudo-labels are drawn on top as thin white outlines, numbered as in :func:`draw_objects`.
    """
    canvas, sx, sy = _resize(image, max_side)
    # darken slightly so that thin coloured boxes stand out on bright images
    canvas = (canvas.astype(np.float32) * 0.75).astype(np.uint8)
    for t, boxes in enumerate(passes):
        colour = PASS_COLOURS[t % len(PASS_COLOURS)]
        for x1, y1, x2, y2 in boxes:
            cv2.rectangle(canvas, (int(round(x1 * sx)), int(round(y1 * sy))),
                          (int(round(x2 * sx)), int(round(y2 * sy))), colour, 1, cv2.LINE_AA)
    for number, obj in reversed(list(enumerate(objects, start=1))):
        x1, y1, x2, y2 = obj.box
        p1 = (int(round(x1 * sx)), int(round(y1 * sy)))
        cv2.rectangle(canvas, p1, (int(round(x2 * sx)), int(round(y2 * sy))),
                      (255, 255, 255), 1, cv2.LINE_AA)
        if number <= numbered:
            _label(canvas, str(number), p1[0], p1[1], (255, 255, 255))
    return canvas


def placeholder(width: int, height: int, max_side: int = 360) -> np.ndarray:
    """A grey thumbnail with a cross, for an image that could not be read."""
    w, h = fit_size(max(width, 1), max(height, 1), max_side)
    canvas = np.full((h, w, 3), 90, np.uint8)
    cv2.line(canvas, (0, 0), (w - 1, h - 1), (150, 150, 150), 1)
    cv2.line(canvas, (0, h - 1), (w - 1, 0), (150, 150, 150), 1)
    return canvas


def write_jpeg(path: str, rgb: np.ndarray, quality: int = 85) -> None:
    """Write an RGB uint8 array as JPEG (OpenCV wants BGR)."""
    ok = cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot write thumbnail {path}")
