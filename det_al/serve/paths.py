"""Task image URL -> file: the inverse of det_al's Label Studio export, confined to its roots.

A task's image reaches the backend as the URL Label Studio stored; the backend never fetches
it over the network (``/data/local-files/`` and ``/data/upload/`` URLs need Label Studio's own
login), it maps it back to a file:

- ``/data/local-files/?d=REL`` (also with a scheme and host in front) -> ``local_files_root / REL``,
  the inverse of :func:`det_al.annotation.label_studio.local_files_url`;
- a URL starting with ``url_prefix`` -> ``image_root / REST`` (URL-unquoted), the inverse of
  :func:`det_al.annotation.label_studio.prefixed_url`;
- otherwise the task's ``file_name`` (det_al's export puts it in every task's ``data``) or a
  plain relative path -> ``image_root / file_name``.

Every path is resolved (symbolic links followed) and must lie inside its root; anything else
(``..``, an absolute path, a link leading out, an unknown URL form) is refused with a
:class:`TaskImageError`, and nothing outside the roots is ever opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

LOCAL_FILES_PATH = "/data/local-files/"


class TaskImageError(ValueError):
    """A task whose image cannot be mapped to a file under the roots (the message says why)."""


def _inside(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, or :class:`TaskImageError` when it leaves ``root``."""
    if not relative or "\x00" in relative:
        raise TaskImageError(f"empty or invalid path {relative!r}")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise TaskImageError(f"absolute path {relative!r} refused")
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise TaskImageError(f"{relative!r} leaves the root {root}")
    return path


@dataclass(frozen=True)
class ImageRoots:
    """Where task images may be read from.

    Args:
        image_root: the folder of ``file_name`` entries and of ``url_prefix`` URLs (and of the
            ``det-al score`` folder's file names); default: ``local_files_root``.
        local_files_root: Label Studio's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``.
        url_prefix: the ``--url-prefix`` the tasks were exported with.
    """

    image_root: Path | None = None
    local_files_root: Path | None = None
    url_prefix: str | None = None

    @classmethod
    def make(cls, image_root: str | os.PathLike | None = None, local_files_root: str | os.PathLike | None = None,
             url_prefix: str | None = None) -> "ImageRoots":
        """Roots resolved to absolute paths; at least one folder must be given and exist."""
        from det_al.errors import InputError

        if image_root is None and local_files_root is None:
            raise InputError("give --image-root or --local-files-root (where the task images are)")
        folders = []
        for name, value in (("--image-root", image_root), ("--local-files-root", local_files_root)):
            if value is None:
                folders.append(None)
                continue
            if not Path(value).is_dir():
                raise InputError(f"{name}: not a folder", value)
            folders.append(Path(value).resolve())
        image, local = folders
        return cls(image if image is not None else local, local, url_prefix)

    def task_image(self, data: Mapping[str, Any], image_key: str = "image") -> Path:
        """The file of a task's image (``data`` is the task's ``data``; ``image_key`` the
        variable the labeling config's ``<Image value="$...">`` names)."""
        url = data.get(image_key)
        if not isinstance(url, str) or not url:
            raise TaskImageError(f"task data has no image URL under {image_key!r}")
        parts = urlsplit(url)
        if parts.path.endswith(LOCAL_FILES_PATH) or parts.path == LOCAL_FILES_PATH.rstrip("/"):
            if self.local_files_root is None:
                raise TaskImageError(f"{url!r} is a local-files URL; the backend has no --local-files-root")
            relative = parse_qs(parts.query).get("d", [""])[0]
            return _inside(self.local_files_root, relative)
        if self.image_root is None:
            raise TaskImageError(f"{url!r} is not a local-files URL; the backend has no --image-root")
        if self.url_prefix and url.startswith(self.url_prefix.rstrip("/") + "/"):
            rest = url[len(self.url_prefix.rstrip("/")) + 1:]
            cloud = self.url_prefix.startswith(("s3://", "gs://", "azure-blob://"))
            return _inside(self.image_root, rest if cloud else unquote(rest))
        file_name = data.get("file_name")
        if isinstance(file_name, str) and file_name:
            return _inside(self.image_root, file_name)
        if not parts.scheme and not parts.netloc and not url.startswith("/"):
            return _inside(self.image_root, url)
        raise TaskImageError(f"cannot map {url!r} to a file under {self.image_root} (no file_name in the task data; "
                             "give --url-prefix for URLs made with det-al export --url-prefix)")

    def relative_name(self, path: Path) -> str | None:
        """``path`` relative to ``image_root`` with ``/`` separators (the ``file_name`` that
        ``det-al score`` gives it), or ``None`` when it lies elsewhere."""
        if self.image_root is None or (path != self.image_root and self.image_root not in path.parents):
            return None
        return path.relative_to(self.image_root).as_posix()
