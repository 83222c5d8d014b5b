"""The result line: what scoring one pool image gives, as it travels from the model to the outputs.

A line is either a scored image (its ranking ``record``, its pseudo-label ``annotations`` with
per-object uncertainty, the boxes of every pass and its ``embedding``) or an image that could not
be scored (``skipped``: the reason). It is streamed to ``results.jsonl`` as one JSON line
(:meth:`ResultLine.to_json`), ``image_id`` first::

    {"image_id", "file_name", "width", "height", "record": {...}, "annotations": [...],
     "passes": {...}, "embedding": [...]}
    {"image_id", "file_name", "skipped": "reason"}

and read back with :meth:`ResultLine.from_json`; the assembler (:mod:`det_al.run.assemble`)
turns lines into the outputs, in memory or on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)


@dataclass
class ResultLine:
    """One pool image's result.

    Attributes:
        image_id, file_name: the pool's.
        skipped: why the image could not be scored; ``None`` for a scored image.
        width, height: the image's size in pixels (scored images).
        record: the image's ranking fields before the pool is ranked (``informativeness``,
            components, ``n_objects``, ``empty``, ...).
        annotations: the deterministic pass's detections as COCO annotations without ``id`` and
            ``image_id``, with per-object uncertainty.
        passes: ``{"views": [...], "passes": [...]}``, the boxes of every pass.
        embedding: ``[D]`` the image's backbone embedding (novelty, diverse selection).
    """

    image_id: int
    file_name: str
    skipped: str | None = None
    width: int | None = None
    height: int | None = None
    record: dict[str, Any] | None = None
    annotations: list[dict] = field(default_factory=list)
    passes: dict[str, Any] = field(default_factory=dict)
    embedding: list[float] | None = None

    @property
    def scored(self) -> bool:
        return self.skipped is None

    def skipped_entry(self) -> dict:
        """The line's entry in ``skipped.json``."""
        return {"image_id": self.image_id, "file_name": self.file_name, "reason": self.skipped}

    def image(self) -> dict:
        """The line's COCO image dict (``id``, ``file_name``, ``width``, ``height`` when known)."""
        image = {"id": self.image_id, "file_name": self.file_name}
        if self.width is not None:
            image["width"] = self.width
        if self.height is not None:
            image["height"] = self.height
        return image

    def as_dict(self) -> dict:
        """The line as plain data, keys in file order (``image_id`` first)."""
        out: dict[str, Any] = {"image_id": self.image_id, "file_name": self.file_name}
        if self.skipped is not None:
            out["skipped"] = self.skipped
            return out
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update(record=self.record, annotations=self.annotations, passes=self.passes, embedding=self.embedding)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ResultLine":
        if "skipped" in data:
            return cls(data["image_id"], data["file_name"], skipped=data["skipped"])
        return cls(data["image_id"], data["file_name"], width=data.get("width"), height=data.get("height"),
                   record=data["record"], annotations=data.get("annotations", []), passes=data.get("passes", {}),
                   embedding=data.get("embedding"))

    def to_json(self) -> bytes:
        """The line as compact JSON with a newline, ``image_id`` first.

        orjson, not the standard library: encoding the lines is most of what streaming and
        resuming cost (about 1,300 numbers an image; ``json`` took 3% of a run of a small model
        on an idle CPU, orjson a seventh of that). Floats are written in their shortest
        round-trip form, as ``json`` writes them. The rare line orjson would change (a NaN or
        infinity, which it writes as ``null``; a file name whose bytes are not UTF-8, which it
        refuses) is written by ``json``; :meth:`from_json` reads both.
        """
        data = self.as_dict()
        try:
            raw = orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # a lone surrogate: a file name whose bytes are not UTF-8
            return _JSON.encode(data).encode("ascii") + b"\n"
        if b"null" in raw:  # orjson writes NaN and infinity as null: keep them as json does
            return _JSON.encode(data).encode("ascii") + b"\n"
        return raw

    @classmethod
    def from_json(cls, raw: bytes | str) -> "ResultLine":
        """One line written by :meth:`to_json`."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:  # NaN, or an escaped lone surrogate: json reads them
            data = json.loads(raw)
        return cls.from_dict(data)
