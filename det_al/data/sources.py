"""What can be scored, turned into a pool: folders, COCO files and dicts, lists of paths, images
in memory, torch datasets; and the categories that go with it.

:func:`pool_source` gives a :class:`PoolSource`: the pool (``{"images": PoolImages,
"categories"}``), the image root its file names are relative to, and for images held in memory
a ``make_dataset`` that :func:`det_al.run.score_lines.iter_results` uses instead of reading files.
Everything is checked here, before the first image is scored: a wrong shape, dtype or value
range names the position of the image and what was expected.

:func:`resolve_categories` checks the categories against the model's classes (count, distinct
ids and names), or makes generic ones (``class_1`` ...) when none are known.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from det_al.data.coco import pool_from_folder, validate_coco
from det_al.data.images import to_tensor
from det_al.data.pool import PoolImages, read_pool
from det_al.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSource:
    """A pool ready for a scoring run (:mod:`det_al.run.pool_run`).

    Attributes:
        pool: ``{"images": PoolImages, "categories": list}`` (categories empty if unknown).
        image_root: the folder the pool's file names are relative to.
        make_dataset: for images that are not files, ``make_dataset(sub_pool) -> Dataset`` whose
            items are those of :class:`det_al.data.datasets.PoolDataset`; ``None`` reads the files.
        folder_coco: a folder pool's COCO dict (to save beside the outputs).
        path: the pool file or folder it was read from, for messages.
    """

    pool: dict
    image_root: Path
    make_dataset: Callable[[PoolImages], Dataset] | None = None
    folder_coco: dict | None = None
    path: Path | None = None

    @property
    def file_root(self) -> Path | None:
        """The folder the images are read from; ``None`` for images in memory."""
        return None if self.make_dataset is not None else self.image_root


# --------------------------------------------------------------------------- files


def load_pool(pool: str | os.PathLike, image_root: str | os.PathLike | None = None) -> PoolSource:
    """A pool from a COCO file or a folder of images (what ``det-al score --pool`` takes).

    A folder becomes every image file under it, sorted by path and numbered 1, 2, ... (no file
    is opened: one that cannot be read is skipped when scored); its COCO dict is kept in
    ``folder_coco`` (``det-al score`` saves it as ``OUT/pool.json``). The image root is
    ``image_root``, else the folder, else the COCO file's folder. The pool is read and
    validated as a file, not checked for a run: the run's entry does that
    (:func:`det_al.run.checks.check_run`).
    """
    path = Path(pool)
    if path.is_dir():
        coco = pool_from_folder(path, sizes=False)
        images = PoolImages.from_dicts(coco["images"])
        return PoolSource({"images": images, "categories": []}, Path(image_root) if image_root else path,
                          folder_coco=coco, path=path)
    if not path.exists():
        raise InputError("pool file not found", path)
    return PoolSource(read_pool(path), Path(image_root) if image_root else path.parent, path=path)


def _pool_from_coco_dict(coco: Mapping, image_root: str | os.PathLike | None) -> PoolSource:
    coco = validate_coco({"annotations": [], "categories": [], **coco}, "images (COCO dict)")
    return PoolSource(
        {"images": PoolImages.from_dicts(coco["images"]), "categories": list(coco.get("categories") or [])},
        Path(image_root) if image_root is not None else Path("."),
    )


def _pool_from_paths(paths: Sequence[str | os.PathLike], image_root: str | os.PathLike | None) -> PoolSource:
    """A pool of image files: paths relative to ``image_root`` (default: the working directory)
    or absolute. The pool's root is ``image_root`` if every file is under it, else the files'
    deepest common folder; file names are relative to it (no absolute names in the outputs)."""
    base = os.path.abspath(image_root if image_root is not None else os.curdir)
    full = [os.path.normpath(os.path.join(base, os.fspath(p))) for p in paths]
    root = base if all(f.startswith(base.rstrip(os.sep) + os.sep) for f in full) else \
        os.path.commonpath([os.path.dirname(f) for f in full])
    names = [Path(os.path.relpath(f, root)).as_posix() for f in full]
    images = PoolImages.from_dicts({"id": i, "file_name": name} for i, name in enumerate(names, start=1))
    return PoolSource({"images": images, "categories": []}, Path(root))


# --------------------------------------------------------------------------- images in memory


def image_to_tensor(image: Any, where: str) -> Tensor:
    """One in-memory image as the detector's input, a float ``[3, H, W]`` tensor in ``[0, 1]``.

    Accepts a PIL image (converted to RGB, EXIF orientation applied), an ``[H, W, 3]`` uint8
    array, or a float ``[3, H, W]`` tensor in ``[0, 1]`` (as torchvision detectors take them).
    ``where`` names the image in errors.
    """
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        return to_tensor(np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"{where}: expected an [H, W, 3] uint8 array, got {image.dtype} {tuple(image.shape)}")
        return to_tensor(image)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise InputError(f"{where}: expected a float [3, H, W] tensor in [0, 1], got {image.dtype} {tuple(image.shape)}")
        if image.numel() and (not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1):
            raise InputError(f"{where}: tensor values must be finite and in [0, 1] "
                             f"(got {float(image.min()):.3g} to {float(image.max()):.3g})")
        return image.detach().float()
    raise InputError(f"{where}: expected a PIL image, an [H, W, 3] uint8 array or a [3, H, W] float tensor, "
                     f"got {type(image).__name__}")


def _item_image(item: Any) -> Any:
    """The image of a dataset item: the item, the first of an ``(image, target)`` pair, or the
    ``image`` of a dict."""
    if isinstance(item, Mapping):
        if "image" not in item:
            raise InputError(f"dataset items that are dicts need an 'image' key (have: {', '.join(map(str, item))})")
        return item["image"]
    if isinstance(item, (tuple, list)) and item:
        return item[0]
    return item


class MemoryImages(Dataset):
    """Pool items (see :class:`det_al.data.datasets.PoolDataset`) for the images of ``source``.

    ``source[k]`` is the image of pool image id ``k + 1``; ``images`` is the (sub-)pool to serve.
    """

    def __init__(self, images: PoolImages, source: Sequence[Any] | Dataset):
        self.images = images
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.images.image_id(index)
        item: dict[str, Any] = {"image_id": image_id, "file_name": self.images.file_name(index)}
        try:
            item["image"] = image_to_tensor(_item_image(self.source[image_id - 1]), item["file_name"])
        except InputError as e:
            item["error"] = str(e)
        return item


def _memory_name(index: int) -> str:
    return f"images[{index}]"


def _pool_from_memory(images: Sequence[Any] | Dataset, check_all: bool) -> PoolSource:
    """A pool for in-memory images, named ``images[i]`` with ids ``i + 1``. ``check_all``: every
    image is checked (and sized) now; for a dataset only the first item is (reading them all
    would decode the whole dataset twice), the others when scored."""
    n = len(images)
    entries = [{"id": i + 1, "file_name": _memory_name(i)} for i in range(n)]
    for i in range(n) if check_all else range(min(n, 1)):
        tensor = image_to_tensor(_item_image(images[i]), _memory_name(i))
        entries[i]["height"], entries[i]["width"] = (int(v) for v in tensor.shape[-2:])
    pool = {"images": PoolImages.from_dicts(entries), "categories": []}
    return PoolSource(pool, Path("."), make_dataset=lambda sub: MemoryImages(sub, images))


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def pool_source(images: Any, image_root: str | os.PathLike | None = None) -> PoolSource:
    """What :func:`det_al.score_images` takes, as a :class:`PoolSource`.

    ``images`` is one of: a :class:`PoolSource` (given back as is); a folder or a COCO file (path); a COCO dict (its ``images``; file names
    relative to ``image_root``, default the working directory); a list of image paths (absolute,
    or relative to ``image_root``; named relative to their common folder); a list of PIL images, ``[H, W, 3]`` uint8 arrays or float ``[3, H, W]``
    tensors in ``[0, 1]``; or a torch ``Dataset`` whose items are such images, ``(image,
    target)`` pairs or dicts with ``image``. In-memory images are named ``images[i]`` and
    numbered ``i + 1``.
    """
    if isinstance(images, PoolSource):
        return images
    if _is_path(images):
        return load_pool(images, image_root)
    if isinstance(images, Mapping):
        return _pool_from_coco_dict(images, image_root)
    if isinstance(images, Dataset) and not isinstance(images, (list, tuple)):
        try:
            len(images)
        except TypeError:
            raise InputError("a Dataset to score needs a length (an IterableDataset is not supported)") from None
        source = _pool_from_memory(images, check_all=False)
    elif isinstance(images, (list, tuple)):
        if images and all(_is_path(x) for x in images):
            source = _pool_from_paths(images, image_root)
        elif any(_is_path(x) for x in images):
            raise InputError("images: a list mixes paths and in-memory images; give one kind")
        else:
            source = _pool_from_memory(images, check_all=True)
    else:
        raise InputError(
            "images: expected a folder, a COCO file or dict, a list of paths, PIL images, arrays or tensors, "
            f"or a torch Dataset; got {type(images).__name__}")
    if not len(source.pool["images"]):
        raise InputError("images: nothing to score (the list is empty)")
    return source


# --------------------------------------------------------------------------- categories


def generic_categories(num_classes: int) -> list[dict]:
    """``class_1`` .. ``class_{C-1}`` with ids 1 .. C-1, for ``num_classes`` = C counting background.

    >>> generic_categories(3)
    [{'id': 1, 'name': 'class_1'}, {'id': 2, 'name': 'class_2'}]
    """
    return [{"id": i, "name": f"class_{i}"} for i in range(1, num_classes)]


def check_categories(categories: Any, num_labels: int, source: str | os.PathLike | None = None) -> None:
    """Refuse categories that do not name each of a model's ``num_labels`` labels (background
    not counted) exactly once: label ``l`` (>= 1) is ``categories[l - 1]``, so there is one
    category per label, with distinct integer ids and distinct names (Label Studio and CVAT
    match labels by name). A missing category would make its detections unexportable.
    :class:`InputError` naming ``source`` otherwise."""
    if not isinstance(categories, (list, tuple)):
        raise InputError(f"categories must be a list of dicts, got {type(categories).__name__}", source)
    for i, c in enumerate(categories):
        if not isinstance(c, Mapping) or isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int):
            raise InputError(f"categories[{i}] must be a dict with an integer 'id', got {c!r}", source)
    n = num_labels
    if len(categories) < n:
        missing = list(range(len(categories) + 1, n + 1))
        raise InputError(
            f"no category for model label{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}: "
            f"{len(categories)} categories for a model of {n} classes (the checkpoint or the pool file "
            "must list one category per class)", source
        )
    if len(categories) > n:
        extra = [c.get("name", c["id"]) for c in categories[n:]]
        raise InputError(f"{len(categories)} categories for a model of {n} classes: no model label for {extra}", source)
    for key in ("id", "name"):
        values = [c.get(key) for c in categories if c.get(key) is not None]
        repeated = sorted({v for v in values if values.count(v) > 1}, key=values.index)
        if repeated:
            raise InputError(f"category {key}s must be unique, got {repeated[0]!r} more than once", source)


def resolve_categories(
    categories: Sequence[dict | str] | None,
    num_classes: int,
    fallback: Sequence[dict] | None = None,
    source: str | os.PathLike | None = None,
) -> list[dict]:
    """The categories of a model of ``num_classes`` classes (counting background), checked.

    ``categories`` (COCO category dicts, or names that get ids 1, 2, ...) win; else
    ``fallback`` (a pool's categories) if it has any; else :func:`generic_categories`. Label
    ``l`` of the model is category ``l - 1``. Raises :class:`InputError` (naming ``source``)
    unless there is one category per class with distinct integer ids and distinct names
    (:func:`check_categories`).
    """
    chosen = categories if categories is not None else (fallback or None)
    if chosen is None:
        return generic_categories(num_classes)
    out = []
    for i, c in enumerate(chosen):
        if isinstance(c, str):
            c = {"id": i + 1, "name": c}
        if not isinstance(c, Mapping) or isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int):
            raise InputError(f"categories[{i}] must be a name or a dict with an integer 'id', got {c!r}", source)
        out.append({**c, "name": str(c.get("name", f"class_{c['id']}"))})
    check_categories(out, num_classes - 1, source)
    return out
