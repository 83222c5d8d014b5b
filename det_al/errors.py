"""The one exception type that the command line turns into a one-line message."""

from __future__ import annotations

import os
import sys


class InputError(Exception):
    """Bad input that makes a run impossible: a file, key or value the user must fix.

    The message names the file (or key) and the problem; the CLI prints it on one line and
    exits with status 2, never with a traceback.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def print_error(program: str, error: BaseException | str) -> None:
    """``PROGRAM: error: MESSAGE`` on stderr as one write, so that the lines of several
    torchrun processes sharing one stderr never run into each other (``print`` writes the
    message and its newline separately)."""
    message = " ".join(str(error).splitlines())
    sys.stderr.write(f"{program}: error: {message}\n")
    sys.stderr.flush()
