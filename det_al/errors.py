"""The one exception type that the command line turns into a one-line message."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input that makes a run impossible: a file, key or value the user must fix.

    The message names the file (or key) and the problem; the CLI prints it on one line and
    exits with status 2, never with a traceback.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
