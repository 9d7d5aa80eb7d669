"""Stop strings applied to streamed text: the one matcher every backend that applies stop
strings itself uses (the sim, the embedded llama.cpp engine).

A stop string may arrive split over several tokens, so the matcher holds back the
longest tail of the text that could still begin one, and releases it once it cannot.
What it holds at a given moment is a pure function of the text generated so far (the
longest suffix that is a proper prefix of a stop string), which is what lets a preempted
generation resume exactly: the kernel keeps the held text in the checkpoint
(``Resume.held``) and the resumed stream starts with a matcher primed with it, so a stop
string spanning the switch still stops and the held text is neither lost nor repeated.

This module must never do I/O or import a backend: it is plain string handling.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["StopMatcher", "held_suffix"]


def held_suffix(text: str, stops: Iterable[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string
    (the tail a matcher must hold back)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


class StopMatcher:
    """Applies stop strings to a stream of text deltas.

    ``feed(delta)`` returns ``(text safe to emit, hit)``; after a hit nothing more is
    emitted (the stop string itself never is). ``flush()`` releases the held tail when the
    generation ends without a hit. ``held`` is the text held back right now.
    """

    __slots__ = ("held", "stopped", "stops")

    def __init__(self, stops: Iterable[str], held: str = "") -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = held
        """Generated, not yet emitted: may begin a stop string."""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self.held + text if self.held else text
        cut = -1
        for s in self.stops:
            # A stop can only begin in the held tail or the new text: everything emitted
            # before was, when emitted, not the start of any stop string.
            i = buf.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.held = ""
            self.stopped = True
            return buf[:cut], True
        keep = held_suffix(buf, self.stops)
        if keep:
            self.held = buf[-keep:]
            return buf[:-keep], False
        self.held = ""
        return buf, False

    def flush(self) -> str:
        """The generation ended without a hit: the held tail is text after all."""
        held, self.held = self.held, ""
        return held
