"""Turn a stream of token byte pieces into text deltas, honouring stop strings.

The text a generation has emitted after ``k`` tokens is a pure function of those ``k``
tokens: a resumed generation replays the same pieces into a fresh :class:`TextStream` and
arrives at exactly the text the interrupted one had emitted, so resumed and uninterrupted
runs stay identical. Bytes of an incomplete UTF-8 character are held back until the
character is complete, and so is any tail that could still become a stop string.

This module must never import llama.cpp or do I/O: it is plain string handling.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["TextStream"]


class TextStream:
    """Accumulates decoded text; :meth:`feed` returns what is safe to emit now."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._text = ""
        self._emitted = 0
        self.stopped = False
        """A stop string was found; nothing after it is ever emitted."""

    @property
    def emitted(self) -> str:
        return self._text[: self._emitted]

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the newly safe text (possibly empty)."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(piece)
        return self._advance(final=False)

    def finish(self) -> str:
        """The generation ended: flush incomplete bytes and any held-back tail."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(b"", final=True)
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        start = self._emitted
        # A stop string cannot begin before `start`: text already emitted was, when emitted,
        # not the beginning of any stop string (that tail would have been held back).
        hit = -1
        for stop in self._stops:
            i = self._text.find(stop, start)
            if i != -1 and (hit == -1 or i < hit):
                hit = i
        if hit != -1:
            self.stopped = True
            self._emitted = hit
            return self._text[start:hit]
        end = len(self._text)
        if not final:
            end -= self._held_back(self._text[start:])
        self._emitted = end
        return self._text[start:end]

    def _held_back(self, tail: str) -> int:
        """Length of the longest suffix of ``tail`` that some stop string starts with."""
        longest = max((len(s) for s in self._stops), default=0)
        for n in range(min(len(tail), longest - 1), 0, -1):
            suffix = tail[-n:]
            if any(s.startswith(suffix) for s in self._stops):
                return n
        return 0
