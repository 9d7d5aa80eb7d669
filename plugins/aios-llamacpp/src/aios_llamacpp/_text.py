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

from aios.llm.stops import StopMatcher

__all__ = ["TextStream"]


class TextStream:
    """Accumulates decoded text; :meth:`feed` returns what is safe to emit now.

    UTF-8 decoding is here; stop strings are kernel's one matcher,
    :class:`aios.llm.stops.StopMatcher`."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._matcher = StopMatcher(stops)
        self._out: list[str] = []

    @property
    def stopped(self) -> bool:
        """A stop string was found; nothing after it is ever emitted."""
        return self._matcher.stopped

    @property
    def emitted(self) -> str:
        return "".join(self._out)

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the newly safe text (possibly empty)."""
        if self.stopped:
            return ""
        return self._emit(self._matcher.feed(self._decoder.decode(piece))[0])

    def finish(self) -> str:
        """The generation ended: flush incomplete bytes and any held-back tail."""
        if self.stopped:
            return ""
        text, hit = self._matcher.feed(self._decoder.decode(b"", final=True))
        return self._emit(text if hit else text + self._matcher.flush())

    def _emit(self, text: str) -> str:
        if text:
            self._out.append(text)
        return text
