"""Synthetic COCO data: coloured shapes on textured backgrounds, with instance masks.

Three classes (``circle``, ``square``, ``triangle``; COCO ids 1, 2, 3 by default), one to four
objects per image, overlaps allowed (a later shape hides part of an earlier one; each mask is
what stays visible). Two domains:

- ``"old"``: light, smooth backgrounds (a soft gradient, little noise), warm shape colours
  (reds, oranges, browns), large upright shapes (radius 10-20 px at 128 px).
- ``"drifted"``: dark, busy backgrounds (stripes at a random angle, strong noise), cool shape
  colours (blues, greens, purples), small shapes (radius 5-11 px at 128 px) at any rotation.

A detector trained on ``old`` images only is less sure of ``drifted`` ones, which is what the
demo's ranking should show. Everything is deterministic given the seed, and each image depends
only on ``(seed, domain, image_id, size)``, not on how many images are generated.

Segmentations are COCO RLE (``counts`` as str) of the visible part of each shape; ``bbox`` and
``area`` are computed from that mask with ``pycocotools.mask``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from det_al.data.files import write_json

DOMAINS = ("old", "drifted")
CLASS_NAMES = ("circle", "square", "triangle")
IMAGE_FORMATS = ("png", "jpg")

_DOMAIN_CODES = {"old": 0, "drifted": 1}
_MIN_VISIBLE_FRACTION = 0.6  # an occluded shape keeps at least this share of its pixels
_MIN_VISIBLE_PIXELS = 12
_PLACEMENT_TRIES = 20


def categories(category_ids: tuple[int, int, int] = (1, 2, 3)) -> list[dict]:
    """The COCO ``categories`` list: circle, square, triangle with the given ids."""
    if len(category_ids) != len(CLASS_NAMES) or len(set(category_ids)) != len(CLASS_NAMES):
        raise ValueError(f"expected 3 distinct category ids, got {category_ids}")
    return [
        {"id": int(i), "name": name, "supercategory": "shape"}
        for i, name in zip(category_ids, CLASS_NAMES)
    ]


def _background(rng: np.random.Generator, domain: str, size: int) -> np.ndarray:
    """``[size, size, 3]`` float background in ``[0, 255]``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    if domain == "old":
        base = rng.uniform(185, 235, 3).astype(np.float32)
        base[2] -= rng.uniform(0, 20)  # slightly warm whites
        image = base + ramp * rng.uniform(-25, 25, 3).astype(np.float32)
        image += rng.normal(0, 3, (size, size, 3)).astype(np.float32)
    else:
        base = rng.uniform(25, 95, 3).astype(np.float32)
        stripe_angle = rng.uniform(0, np.pi)
        period = rng.uniform(5, 14) / size
        phase = (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy) / period
        stripes = (np.sin(2 * np.pi * phase) > 0).astype(np.float32)[..., None]
        image = base + stripes * rng.uniform(-45, 45, 3).astype(np.float32)
        image += ramp * rng.uniform(-30, 30, 3).astype(np.float32)
        image += rng.normal(0, 14, (size, size, 3)).astype(np.float32)
    return image


def _shape_colour(rng: np.random.Generator, domain: str) -> np.ndarray:
    if domain == "old":  # reds, oranges, browns
        return np.array([rng.uniform(160, 240), rng.uniform(30, 140), rng.uniform(15, 70)])
    return np.array([rng.uniform(30, 140), rng.uniform(110, 230), rng.uniform(150, 255)])


def _shape_mask(
    shape: str, cx: float, cy: float, radius: float, angle: float, size: int
) -> np.ndarray:
    """``[size, size]`` uint8 mask (0/1) of one shape with its centre, radius and rotation."""
    mask = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel vertex precision for cv2
    scale = 1 << shift
    if shape == "circle":
        center = (round(cx * scale), round(cy * scale))
        cv2.circle(mask, center, round(radius * scale), 1, thickness=-1, shift=shift)
        return mask
    if shape == "square":
        corners = [angle + np.pi / 4 + k * np.pi / 2 for k in range(4)]
        reach = radius * math.sqrt(2)
    else:  # triangle, pointing up when angle == 0
        corners = [angle - np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        reach = radius * 1.25
    points = np.array(
        [[cx + reach * math.cos(a), cy + reach * math.sin(a)] for a in corners]
    )
    cv2.fillPoly(mask, [np.round(points * scale).astype(np.int32)], 1, shift=shift)
    return mask


def render_example(
    domain: str,
    seed: int,
    image_id: int,
    size: int = 128,
    category_ids: tuple[int, int, int] = (1, 2, 3),
    n_objects: int | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Render one image without writing anything (benchmarks generate pools on the fly).

    ``n_objects`` shapes are placed (fewer when they cannot all stay visible enough); ``None``
    draws one to four, ``0`` gives a background-only image of the domain.

    Returns:
        image: ``[size, size, 3]`` uint8 RGB.
        objects: one dict per visible object, in drawing order: ``category_id``, ``mask``
            (``[size, size]`` bool, the visible part), ``bbox`` ``[x, y, w, h]`` and ``area``
            of that mask, and ``segmentation`` (COCO RLE, counts as str).
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    if size < 32:
        raise ValueError(f"image size must be at least 32 px, got {size}")
    if n_objects is not None and n_objects < 0:
        raise ValueError(f"n_objects must be >= 0, got {n_objects}")
    rng = np.random.default_rng([int(seed), _DOMAIN_CODES[domain], int(image_id), int(size)])
    unit = size / 128.0
    r_lo, r_hi = (10, 20) if domain == "old" else (5, 11)
    image = _background(rng, domain, size)

    shapes: list[tuple[int, np.ndarray]] = []  # (class index, full mask), drawing order
    if n_objects is None:
        n_objects = int(rng.integers(1, 5))
    for _ in range(n_objects):
        for _ in range(_PLACEMENT_TRIES):
            cls = int(rng.integers(0, 3))
            radius = rng.uniform(r_lo, r_hi) * unit
            margin = radius * 1.45 + 1
            cx, cy = rng.uniform(margin, size - margin, 2)
            if domain == "old":
                angle = rng.uniform(-0.08, 0.08)
            else:
                angle = rng.uniform(0, 2 * np.pi)
            mask = _shape_mask(CLASS_NAMES[cls], cx, cy, radius, angle, size)
            if _keeps_everyone_visible([m for _, m in shapes], mask):
                shapes.append((cls, mask))
                break

    for cls, mask in shapes:
        colour = _shape_colour(rng, domain)
        shade = 1.0 + 0.12 * (np.arange(size, dtype=np.float32)[:, None] / size - 0.5)
        image = np.where(mask[..., None] > 0, colour * shade[..., None], image)
    noise = 3 if domain == "old" else 10
    image = image + rng.normal(0, noise, image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    objects = []
    for i, (cls, mask) in enumerate(shapes):
        visible = mask.astype(bool)
        for _, later in shapes[i + 1 :]:
            visible &= ~later.astype(bool)
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        objects.append(
            {
                "category_id": int(category_ids[cls]),
                "mask": visible,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": float(mask_utils.area(rle)),
                "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
            }
        )
    return image, objects


def _keeps_everyone_visible(previous: list[np.ndarray], new: np.ndarray) -> bool:
    """Whether drawing ``new`` on top leaves every earlier shape (and itself) visible enough."""
    if new.sum() < _MIN_VISIBLE_PIXELS:
        return False
    covered = new.astype(bool)
    for i, mask in enumerate(previous):
        visible = mask.astype(bool) & ~covered
        for later in previous[i + 1 :]:
            visible &= ~later.astype(bool)
        total = mask.sum()
        if visible.sum() < max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * total):
            return False
    return True


def generate(
    out_dir: str | os.PathLike,
    n_images: int,
    domain: str,
    seed: int,
    start_id: int = 1,
    size: int = 128,
    image_format: str = "png",
    category_ids: tuple[int, int, int] = (1, 2, 3),
    n_objects: int | None = None,
) -> dict:
    """Write ``n_images`` images of one domain under ``out_dir/images`` and return their COCO dict.

    ``n_objects`` as in :func:`render_example` (``0``: background-only images).

    Image ids are ``start_id .. start_id + n_images - 1``; file names
    (``images/{domain}_{id:06d}.png``) are relative to the image root ``out_dir``, so a COCO
    file saved in ``out_dir`` has its images beside it; annotation ids are ``10 * image_id + k``,
    so distinct image ids give distinct annotation ids across calls. Each image dict carries a
    ``domain`` key.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; expected one of {IMAGE_FORMATS}")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    image_root = Path(out_dir) / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(start_id, start_id + n_images):
        pixels, objects = render_example(domain, seed, image_id, size, category_ids, n_objects)
        file_name = f"images/{domain}_{image_id:06d}.{image_format}"
        _write_image(Path(out_dir) / file_name, pixels)
        images.append(
            {"id": image_id, "file_name": file_name, "width": size, "height": size, "domain": domain}
        )
        for k, obj in enumerate(objects):
            annotations.append(
                {
                    "id": 10 * image_id + k,
                    "image_id": image_id,
                    "category_id": obj["category_id"],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                    "segmentation": obj["segmentation"],
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories(category_ids)}


def _write_image(path: Path, rgb: np.ndarray) -> None:
    # Written in place: the demo folder is new and generated as a whole.
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise OSError(f"cannot write image {path}")


def _mixed(out_dir, n, drift_fraction, seed, start_id, size, image_format) -> dict:
    """``n`` images, ``round(n * drift_fraction)`` drifted, in a seeded shuffled order."""
    n_drifted = int(round(n * drift_fraction))
    old = generate(out_dir, n - n_drifted, "old", seed, start_id, size, image_format)
    drifted = generate(
        out_dir, n_drifted, "drifted", seed, start_id + n - n_drifted, size, image_format
    )
    images = old["images"] + drifted["images"]
    order = np.random.default_rng([int(seed), 7, int(start_id)]).permutation(len(images))
    return {
        "images": [images[i] for i in order],
        "annotations": old["annotations"] + drifted["annotations"],
        "categories": old["categories"],
    }


def make_demo_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 200,
    n_val: int = 40,
    n_pool: int = 100,
    drift_fraction: float = 0.5,
    size: int = 128,
    image_format: str = "png",
) -> dict[str, Path]:
    """Write the demo data set under ``out_dir`` and return the paths.

    - ``train.json``: ``n_train`` old-domain images with labels;
    - ``val.json``: ``n_val`` mixed images with labels (``drift_fraction`` of them drifted);
    - ``pool.json``: ``n_pool`` mixed images, no annotations, in shuffled order; each image has
      a ``domain`` key (``"old"`` / ``"drifted"``) so demos and tests can check the ranking;
    - ``oracle.json``: the pool's true labels (same images, with annotations);
    - ``images/``: all image files. File names are ``images/...``, relative to ``out_dir``:
      the image root of every JSON above is the folder that holds it.

    Image ids are unique across the four files (train, then val, then pool), so labelled pool
    images can be merged into the training set as they are.

    Returns:
        ``{"train", "val", "pool", "oracle", "image_root"}`` -> paths.
    """
    if not 0.0 <= drift_fraction <= 1.0:
        raise ValueError(f"drift_fraction must be in [0, 1], got {drift_fraction}")
    out = Path(out_dir)
    train = generate(out, n_train, "old", seed, 1, size, image_format)
    val = _mixed(out, n_val, drift_fraction, seed, 1 + n_train, size, image_format)
    oracle = _mixed(out, n_pool, drift_fraction, seed, 1 + n_train + n_val, size, image_format)
    pool = {"images": oracle["images"], "annotations": [], "categories": oracle["categories"]}
    paths = {
        "train": out / "train.json",
        "val": out / "val.json",
        "pool": out / "pool.json",
        "oracle": out / "oracle.json",
        "image_root": out,
    }
    for name, dataset in (("train", train), ("val", val), ("pool", pool), ("oracle", oracle)):
        write_json(paths[name], dataset)
    return paths
