"""Atomic output files: everything det_al writes goes to a temporary name, then is renamed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from det_al.errors import InputError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    A reader never sees a half-written file, and an error leaves any previous ``path`` intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write output: {e.strerror}", path.parent) from e
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent)


def write_jsonl(path: str | os.PathLike, records: Any) -> None:
    """Write an iterable of dicts as JSON lines to ``path`` atomically."""
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def remove_earlier_outputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove those of ``paths`` (files or folders) that exist, for a run that starts over; the
    ones removed. A failure is an :class:`InputError` naming the path."""
    removed = []
    for path in map(Path, paths):
        try:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
        except OSError as e:
            raise InputError(f"cannot remove the earlier run's {path.name}: {e.strerror}", path.parent) from e
        removed.append(path)
    return removed


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file is an :class:`InputError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise InputError("file not found", path) from e
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read: {e}", path) from e


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Stream ``(line number, value)`` of a JSON-lines file, blank lines skipped.

    A missing or unreadable file, or a line that is not JSON, is an :class:`InputError` naming
    the file (and the line).
    """
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError as e:
        raise InputError("file not found", path) from e
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from e
    with f:
        try:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"line {line_no}: not valid JSON ({e.msg})", path) from e
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read: {e}", path) from e
