"""Read a large JSON object a piece at a time: its values one by one, its arrays in chunks.

:class:`JSONStream` keeps a chunk of the text in hand and decodes it with the standard
library's decoder, so values mean exactly what ``json.load`` makes of them, while only a chunk
of the text and what was decoded from it are in memory at a time, never the whole document.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator


class NotStreamable(Exception):
    """The text is not valid JSON, or not what the caller expects: read it whole to say why."""


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JSONStream:
    """JSON text read from ``f`` in chunks of ``chunk`` characters; values are decoded one at a
    time with ``raw_decode``, array entries as many at a time as the text in hand holds.

    Raises :class:`NotStreamable` where the text is not valid JSON (the caller reads the file
    whole to say where).
    """

    def __init__(self, f, chunk: int):
        self.f, self.chunk = f, chunk
        self.text, self.pos, self.eof = "", 0, False
        self.base = 0  # offset of text[0] in the file (characters)
        self.slow_until = 0  # entries before this offset are decoded one by one

    def _more(self) -> bool:
        """Append the next chunk (at least as much as is buffered, so a long value costs
        linear time); False at the end of the file."""
        data = "" if self.eof else self.f.read(max(self.chunk, len(self.text) - self.pos))
        self.eof = not data
        if data:
            self.base += self.pos
            self.text = self.text[self.pos:] + data
            self.pos = 0
        return bool(data)

    def peek(self) -> str:
        """The next character that is not white space ("" at the end), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._more():
                return ""

    def take(self, allowed: str) -> str:
        """Consume the next character, which must be one of ``allowed``."""
        c = self.peek()
        if not c or c not in allowed:
            raise NotStreamable
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if self._more():
                    continue  # the value goes on in the next chunk
                raise NotStreamable from None
            # A number at the very end of the text may go on in the next chunk.
            if end < len(self.text) or not self._more():
                self.pos = end
                return value

    def keys(self) -> Iterator[str]:
        """The keys of the object that starts here; the caller reads each one's value (with
        :meth:`value` or :meth:`entries`) before asking for the next key."""
        self.take("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise NotStreamable
            self.take(":")
            yield key
            if self.take(",}") == "}":
                return

    def end(self) -> None:
        """Check that only white space is left."""
        if self.peek():
            raise NotStreamable

    def entries(self) -> Iterator[list]:
        """The entries of the array that starts here, a list of those in hand at a time."""
        self.take("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self._some_entries()
            if self.take(",]") == "]":
                return

    def _some_entries(self) -> list:
        """At least one entry from here: all those up to the last ``}`` in hand if possible.

        Parsing that text as one array is many times faster than entry by entry, and it parses
        only if that ``}`` closes an entry (one inside a string or a nested object, or past the
        array's end, leaves it invalid), so a success is never wrong. After a failure: half as
        far, then entry by entry up to where that failed (no retrying on every entry).
        """
        if self.base + self.pos >= self.slow_until:
            if len(self.text) - self.pos < self.chunk // 2:
                self._more()
            stop = len(self.text)
            for attempt in range(2):
                cut = self.text.rfind("}", self.pos, stop)
                if cut < 0:
                    break
                try:
                    entries = json.loads("[" + self.text[self.pos:cut + 1] + "]")
                except json.JSONDecodeError:
                    if attempt:
                        self.slow_until = self.base + cut
                    stop = self.pos + (cut - self.pos) // 2
                    continue
                self.pos = cut + 1
                return entries
        return [self.value()]
