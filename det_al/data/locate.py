"""Does the image root hold the pool's files? A cheap probe before any image is scored.

A wrong ``--image-root`` (it exists, but the files are elsewhere) used to give a finished run
with every image skipped as "file not found" and exit status 0. :func:`check_images_found`
looks for a sample of the pool's files (:data:`PROBE` of them, spread evenly over the pool: a
pool of millions costs 50 ``stat`` calls) and refuses the root when most are missing, saying
where they are when a parent or child folder of the root holds them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from det_al.errors import InputError

#: How many of the pool's files are looked for.
PROBE = 50
#: Child folders of the root looked into for the missing files.
MAX_CHILDREN = 200


def probe_names(n_images: int, file_name: Callable[[int], str], probe: int = PROBE) -> list[str]:
    """Up to ``probe`` file names, evenly spread over the pool (first and last included).

    >>> probe_names(5, lambda i: f"{i}.png", probe=3)
    ['0.png', '2.png', '4.png']
    """
    if n_images <= probe:
        indices = range(n_images)
    else:
        indices = sorted({round(k * (n_images - 1) / (probe - 1)) for k in range(probe)})
    return [file_name(i) for i in indices]


def _found(folder: Path, names: Sequence[str]) -> int:
    return sum(1 for name in names if os.path.isfile(folder / name))


def _candidates(root: Path) -> list[Path]:
    """The folders a misplaced root most likely meant: its parent and grandparent, its child folders."""
    root = root.resolve()
    folders = [p for p in (root.parent, root.parent.parent) if p != root]
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        children = []
    return folders + children[:MAX_CHILDREN]


def check_images_found(names: Sequence[str], image_root: str | os.PathLike,
                       source: str | os.PathLike | None = None, kind: str = "pool") -> None:
    """Raise :class:`InputError` when more than half of ``names`` (file names of the ``kind``
    images, as :func:`probe_names` picks them) are not files under ``image_root``; the message
    names the parent or child folder of the root that holds most of them, if one does."""
    if not names:
        return
    root = Path(image_root)
    found = _found(root, names)
    if 2 * found >= len(names):
        return
    best, best_found = None, found
    for folder in _candidates(root):
        n = _found(folder, names)
        if n > best_found:
            best, best_found = folder, n
    what = f"{len(names) - found} of {len(names)} {kind} images looked for (e.g. {names[0]!r}) are not under the image root {os.fspath(image_root)}"
    if best is not None and 2 * best_found >= len(names):
        raise InputError(f"{what}; {best_found} are under {os.fspath(best)}: is that the image root "
                         f"(--image-root {os.fspath(best)})?", source)
    raise InputError(f"{what}: is the image root right (--image-root)?", source)
