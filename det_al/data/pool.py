"""The images of a pool to score, held compactly, and a COCO pool reader that streams them.

A million COCO image dicts (with COCO's six keys) cost about 500 MiB of Python objects, 630
MiB at the peak of ``json.load``. :class:`PoolImages` keeps what scoring needs (ids, file
names, widths and heights) in four numpy arrays: 24 bytes per image plus its file name.
:func:`read_pool` fills them while it parses the file, a chunk of ``images`` entries at a time,
so no list of dicts is ever built. Few large objects instead of millions of small ones also
keep ``DataLoader`` worker processes from slowly copying the parent's memory (touching a Python
object's reference count writes to its page).

The checks and one-line messages are those of :func:`det_al.data.coco.validate_coco`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from array import array
from itertools import accumulate, islice
from typing import Any, Iterable, Iterator

import numpy as np

from det_al.data.coco import annotation_problem, image_problem, validate_coco
from det_al.errors import InputError
from det_al.data.files import read_json
from det_al.data.json_stream import JSONStream, NotStreamable

logger = logging.getLogger(__name__)

_INT32_MAX = 2**31 - 1


class PoolImages:
    """Pool images as equal-length arrays; indexing gives COCO image dicts or sub-pools.

    Args:
        ids: ``[N]`` image ids (int64).
        names: the UTF-8 file names, concatenated (bytes, or a uint8 array; kept read-only).
        offsets: ``[N + 1]`` int64; name ``i`` is ``names[offsets[i]:offsets[i + 1]]``.
        widths, heights: ``[N]`` int32, 0 where the pool gives none.

    ``pool[i]`` is ``{"id", "file_name"[, "width", "height"]}``; ``pool[slice]``,
    ``pool[bool mask]`` and ``pool[int array]`` are :class:`PoolImages`.
    """

    def __init__(
        self, ids: np.ndarray, names: bytes | np.ndarray, offsets: np.ndarray, widths: np.ndarray, heights: np.ndarray
    ):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.names = np.frombuffer(names, dtype=np.uint8) if isinstance(names, (bytes, bytearray)) else np.asarray(names, np.uint8)
        self.names.flags.writeable = False
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.widths = np.asarray(widths, dtype=np.int32)
        self.heights = np.asarray(heights, dtype=np.int32)
        n = len(self.ids)
        if not (len(self.widths) == len(self.heights) == n and len(self.offsets) == n + 1):
            raise ValueError(
                f"expected ids, widths, heights of length N and offsets of N + 1, got {n}, "
                f"{len(self.widths)}, {len(self.heights)} and {len(self.offsets)}"
            )
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.names):
            raise ValueError(f"offsets must run from 0 to {len(self.names)}, got {self.offsets[0]} to {self.offsets[-1]}")

    @classmethod
    def from_dicts(cls, images: Iterable[dict]) -> "PoolImages":
        """From COCO image dicts (``id``, ``file_name``, optional ``width``/``height``)."""
        builder, images = _Builder(), iter(images)
        while batch := list(islice(images, 65_536)):
            builder.extend(
                [int(im["id"]) for im in batch], [str(im["file_name"]) for im in batch],
                [im.get("width") or 0 for im in batch], [im.get("height") or 0 for im in batch],
            )
        return builder.build()

    def __len__(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> int:
        return int(self.ids[index])

    def file_name(self, index: int) -> str:
        index = range(len(self))[index]  # negative indices, IndexError
        return self.names[self.offsets[index]:self.offsets[index + 1]].tobytes().decode("utf-8", "surrogatepass")

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            index = range(len(self))[index]
            image = {"id": int(self.ids[index]), "file_name": self.file_name(index)}
            if self.widths[index]:
                image["width"] = int(self.widths[index])
            if self.heights[index]:
                image["height"] = int(self.heights[index])
            return image
        if isinstance(index, slice) and range(len(self))[index] == range(len(self)):
            return self  # the whole pool (one shard of one): nothing to copy
        positions = np.arange(len(self))[index]
        if positions.ndim != 1:
            raise IndexError(f"expected an int, a slice, a 1-d mask or index array, got shape {positions.shape}")
        starts, ends = self.offsets[positions], self.offsets[positions + 1]
        offsets = np.zeros(len(positions) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        return PoolImages(self.ids[positions], _gather(self.names, starts, ends), offsets,
                          self.widths[positions], self.heights[positions])

    def __iter__(self) -> Iterator[dict]:
        for index in range(len(self)):
            yield self[index]

    def _name_chunks(self, step: int = 8192) -> Iterator[tuple[int, int, bytes, list[int]]]:
        """``(start, stop, names, offsets)`` for images ``start:stop``: their names as one bytes
        object and ``stop - start + 1`` offsets into it (bounded memory, fast slicing)."""
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            offsets = self.offsets[start:stop + 1]
            yield start, stop, self.names[offsets[0]:offsets[-1]].tobytes(), (offsets - offsets[0]).tolist()

    def sha256(self) -> str:
        """Hash of ids, file names and sizes, in order: one line ``id\tname\twidth\theight``
        per image (``None`` for a size the pool does not give)."""
        h = hashlib.sha256()
        for start, stop, names, offsets in self._name_chunks():
            widths, heights = ([b"%d" % v if v else b"None" for v in sizes[start:stop].tolist()]
                               for sizes in (self.widths, self.heights))
            h.update(b"".join(
                b"%d\t%b\t%b\t%b\n" % (i, names[a:b], w, v)
                for i, a, b, w, v in zip(self.ids[start:stop].tolist(), offsets, offsets[1:], widths, heights)
            ))
        return h.hexdigest()

    def duplicate_file_names(self) -> list[str]:
        """File names given more than once, in the order of their first appearance."""
        hashes = np.zeros(len(self), dtype=np.int64)
        for start, stop, names, offsets in self._name_chunks():
            hashes[start:stop] = [hash(names[a:b]) for a, b in zip(offsets, offsets[1:])]
        repeated = _repeated(hashes)
        if not len(repeated):
            return []
        # Equal hashes are candidates only: compare the names themselves.
        first_seen: dict[str, int] = {}
        counts: dict[str, int] = {}
        for position in np.flatnonzero(np.isin(hashes, repeated)).tolist():
            name = self.file_name(position)
            first_seen.setdefault(name, position)
            counts[name] = counts.get(name, 0) + 1
        return sorted((n for n, c in counts.items() if c > 1), key=first_seen.__getitem__)


def _repeated(values: np.ndarray) -> np.ndarray:
    """The values that occur more than once (sorted; one transient sorted copy of ``values``)."""
    ordered = np.sort(values)
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


def as_pool_images(images: PoolImages | Iterable[dict]) -> PoolImages:
    """``images`` as :class:`PoolImages` (COCO image dicts are converted)."""
    return images if isinstance(images, PoolImages) else PoolImages.from_dicts(images)


def _gather(names: np.ndarray, starts: np.ndarray, ends: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """The byte ranges ``names[starts[i]:ends[i]]``, concatenated (bounded temporary memory)."""
    if len(starts) and np.array_equal(starts[1:], ends[:-1]):  # one contiguous range
        return names[int(starts[0]):int(ends[-1])]
    parts = []
    for i in range(0, len(starts), chunk):
        s, e = starts[i:i + chunk], ends[i:i + chunk]
        lengths = e - s
        begin = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=begin[1:])
        parts.append(names[np.repeat(s - begin, lengths) + np.arange(lengths.sum(), dtype=np.int64)])
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


class _Builder:
    """Appends images, a list at a time, to compact buffers; :meth:`build` makes the arrays."""

    def __init__(self):
        self.ids = array("q")
        self.widths = array("i")
        self.heights = array("i")
        self.offsets = array("q", [0])
        self.names = bytearray()

    def extend(self, ids: list[int], names: list[str], widths: list[int], heights: list[int]) -> None:
        """Append images; 0 for a size the pool does not give. Ids must fit in int64, sizes in int32."""
        encoded = [name.encode("utf-8", "surrogatepass") for name in names]
        self.ids.extend(ids)
        self.offsets.extend(islice(accumulate(map(len, encoded), initial=len(self.names)), 1, None))
        self.names += b"".join(encoded)
        self.widths.extend(widths)
        self.heights.extend(heights)

    def build(self) -> PoolImages:
        return PoolImages(
            np.frombuffer(self.ids, dtype=np.int64) if self.ids else np.zeros(0, np.int64),
            self.names,  # shared, not copied
            np.frombuffer(self.offsets, dtype=np.int64),
            np.frombuffer(self.widths, dtype=np.int32) if self.widths else np.zeros(0, np.int32),
            np.frombuffer(self.heights, dtype=np.int32) if self.heights else np.zeros(0, np.int32),
        )


# ---------------------------------------------------------------- reading a COCO pool file


def read_pool(path: str | os.PathLike, chunk: int = 1 << 20) -> dict:
    """Read and validate a COCO pool file into ``{"images": PoolImages, "categories": [...]}``.

    The file is read ``chunk`` characters at a time: the top-level object one value at a time,
    the ``images`` and ``annotations`` arrays as many entries at a time as the chunk holds, so
    memory stays that of :class:`PoolImages` (plus about 16 bytes per image while ids and file
    names are checked for duplicates) whatever the number of images. Annotations are checked as
    :func:`~det_al.data.coco.validate_coco` checks them, then dropped (scoring does not use them).
    Duplicate file names are logged as a warning.

    Raises:
        InputError: naming ``path`` and the first problem found, on one line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            pool = _read_stream(JSONStream(f, chunk), path)
    except FileNotFoundError as e:
        raise InputError("file not found", path) from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read: {e}", path) from e
    except NotStreamable:
        # Not valid JSON, not an object, or a key given twice: the plain reader finds the
        # error (and its line and column) or, for a valid file, json.load's meaning of it.
        pool = validate_coco(read_json(path), path)
        pool = {"images": PoolImages.from_dicts(pool["images"]), "categories": pool["categories"]}
    duplicates = pool["images"].duplicate_file_names()
    if duplicates:
        logger.warning("%s: %d file names appear more than once (first: %r)", path, len(duplicates), duplicates[0])
    return pool


def _read_stream(stream: JSONStream, path: str | os.PathLike) -> dict:
    def fail(message: str):
        raise InputError(message, path)

    if stream.peek() != "{":
        raise NotStreamable  # json.load and validate_coco say what it is
    builder, annotations, values = _Builder(), _Annotations(), {}
    for key in stream.keys():
        if key in values:
            raise NotStreamable  # json.load keeps the last value: let it decide
        if key == "images" and stream.peek() == "[":
            values[key] = []
            for entries in stream.entries():
                _add_images(builder, entries, fail)
        elif key == "annotations" and stream.peek() == "[":
            values[key] = []
            for entries in stream.entries():
                for ann in entries:
                    annotations.add(ann, fail)
        else:
            values[key] = stream.value()
    stream.end()
    # The keys and categories (streamed arrays stand as empty lists), then what needs every
    # entry: duplicate ids and references.
    validate_coco(values, path)
    images = builder.build()
    del builder
    _check_unique(images.ids, "image id", "images", fail)
    annotations.check(images.ids, values["categories"], fail)
    return {"images": images, "categories": values["categories"]}


def _add_images(builder: _Builder, images: list, fail) -> None:
    """Check image entries (as :func:`~det_al.data.coco.image_problem` does) and append them."""
    try:
        ids = [im["id"] for im in images]
        names = [im["file_name"] for im in images]
        widths = [im.get("width", 0) for im in images]
        heights = [im.get("height", 0) for im in images]
        ok = (
            set(map(type, ids)) == {int} and -(2**63) <= min(ids) and max(ids) < 2**63
            and set(map(type, names)) == {str} and all(names)
            and _sizes_ok(widths, "width", images) and _sizes_ok(heights, "height", images)
        )
    except (TypeError, KeyError, AttributeError):  # an entry that is not an object, a key missing
        ok = False
    if not ok:  # find the first bad entry and say what is wrong with it
        for i, image in enumerate(images, start=len(builder.ids)):
            problem = image_problem(image, i) or _range_problem(image, i)
            if problem:
                fail(problem)
    builder.extend(ids, names, widths, heights)


def _sizes_ok(sizes: list, key: str, images: list[dict]) -> bool:
    """Integers in [1, 2**31) where given (0 stands for not given, so count those given)."""
    if set(map(type, sizes)) != {int} or max(sizes) > _INT32_MAX:
        return False
    return min(sizes) > 0 or (min(sizes) == 0 and sum(map(bool, sizes)) == sum(key in im for im in images))


def _range_problem(image: dict, index: int) -> str | None:
    """Integers :class:`PoolImages` cannot hold (ids beyond int64, sizes beyond int32)."""
    where = f"images[{index}] (id {image['id']})"
    if not -(2**63) <= image["id"] < 2**63:
        return f"{where}: 'id' is out of the 64-bit integer range"
    for key in ("width", "height"):
        if image.get(key, 0) > _INT32_MAX:
            return f"{where}: '{key}' must be below 2**31, got {image[key]!r}"
    return None


def _first_repeat(ids: np.ndarray) -> tuple[int, int] | None:
    """Positions ``(first, second)`` of the repeated id whose second appearance comes first."""
    repeated = _repeated(ids)
    if not len(repeated):
        return None
    seen: dict[int, int] = {}
    candidates = np.flatnonzero(np.isin(ids, repeated))
    for position, value in zip(candidates.tolist(), ids[candidates].tolist()):
        if value in seen:
            return seen[value], position
        seen[value] = position
    return None


def _check_unique(ids: np.ndarray, what: str, key: str, fail) -> None:
    repeat = _first_repeat(ids)
    if repeat:
        first, second = repeat
        fail(f"duplicate {what} {int(ids[first])} ({key}[{first}] and {key}[{second}])")


class _Annotations:
    """The ids of a pool's annotations, checked one by one as they stream by, then together."""

    def __init__(self):
        self.ids, self.image_ids, self.category_ids = array("q"), array("q"), array("q")

    def add(self, ann: Any, fail) -> None:
        index = len(self.ids)
        problem = annotation_problem(ann, index)
        if problem:
            fail(problem)
        try:
            self.ids.append(ann["id"])
            self.image_ids.append(ann["image_id"])
            self.category_ids.append(ann["category_id"])
        except OverflowError:
            fail(f"annotations[{index}]: an id is out of the 64-bit integer range")

    def check(self, image_ids: np.ndarray, categories: list[dict], fail) -> None:
        """Duplicate annotation ids, unknown image and category ids: the first annotation with
        one, as :func:`~det_al.data.coco.validate_coco` reports it."""
        if not self.ids:
            return
        ids = np.frombuffer(self.ids, dtype=np.int64)
        image_of = np.frombuffer(self.image_ids, dtype=np.int64)
        category_of = np.frombuffer(self.category_ids, dtype=np.int64)
        unknown_image = ~np.isin(image_of, image_ids)
        unknown_category = ~np.isin(category_of, np.array([c["id"] for c in categories], dtype=np.int64))
        firsts = [int(np.argmax(bad)) for bad in (unknown_image, unknown_category) if bad.any()]
        repeat = _first_repeat(ids)
        if repeat:
            firsts.append(repeat[1])
        if not firsts:
            return
        i = min(firsts)
        earlier = np.flatnonzero(ids[:i] == ids[i])
        if len(earlier):
            fail(f"duplicate annotation id {int(ids[i])} (annotations[{int(earlier[0])}] and annotations[{i}])")
        where = f"annotations[{i}] (id {int(ids[i])})"
        if unknown_image[i]:
            fail(f"{where}: unknown image id {int(image_of[i])}")
        fail(f"{where}: unknown category id {int(category_of[i])}")
