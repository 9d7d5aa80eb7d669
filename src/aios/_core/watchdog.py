"""A watchdog for a blocked event loop.

One event loop runs every agent: an agent that computes for 3 s without awaiting stalls
every other agent for 3 s. That is inherent to asyncio; what the kernel can do is say so.
A heartbeat task beats every quarter of the threshold; a daemon thread checks the beat
and, when it is older than the threshold, samples the loop thread's stack and names the
agent whose code is on it (``loop.blocked`` warning, once per stall).
"""

from __future__ import annotations

import sys
import threading
import time
from types import CodeType, FrameType
from typing import Any

import anyio

__all__ = ["Watchdog"]


class Watchdog:
    def __init__(self, threshold_s: float, log: Any) -> None:
        self.threshold_s = threshold_s
        self._log = log
        self._beat = time.monotonic()
        self._agents: dict[CodeType, str] = {}
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stalls: list[tuple[str | None, float]] = []
        """Each stall seen: (agent name or None, seconds blocked when reported)."""

    def watch(self, code: CodeType | None, name: str) -> None:
        if code is not None:
            self._agents[code] = name

    async def heartbeat(self) -> None:
        """Run as a task of the kernel: beats until cancelled."""
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._check, name="aios-watchdog", daemon=True)
        self._thread.start()
        try:
            while True:
                self._beat = time.monotonic()
                await anyio.sleep(self.threshold_s / 4)
        finally:
            self._stop.set()

    def _check(self) -> None:
        reported = 0.0
        while not self._stop.wait(self.threshold_s / 4):
            beat = self._beat
            blocked = time.monotonic() - beat
            if blocked > self.threshold_s and reported != beat:
                reported = beat
                agent = self._culprit()
                self.stalls.append((agent, blocked))
                self._log.warning("loop.blocked", agent=agent, blocked_s=round(blocked, 3),
                                  hint="an agent ran without awaiting; use "
                                  "anyio.to_thread.run_sync for CPU-bound work")

    def _culprit(self) -> str | None:
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        while frame is not None:
            name = self._agents.get(frame.f_code)
            if name is not None:
                return name
            frame = frame.f_back
        return None
