"""The lifecycle log as an instrument, and the unwrapping of task-group errors.

The log instrument is registered only when the kernel logs (``log_format`` not ``off``):
a kernel that does not log pays nothing for it at the door.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio

__all__ = ["LogInstrument", "unwrap_group"]


class LogInstrument:
    """Logs each syscall's start and end: ``syscall.started`` (debug), then
    ``syscall.done`` (debug), ``syscall.failed`` (info) or ``syscall.cancelled`` (debug)."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def syscall_started(self, sc: Any, syscall: Any) -> None:
        self._log.debug("syscall.started", pid=sc.pid, agent=sc.name, syscall=sc.sid,
                        kind=syscall.kind)

    def syscall_ended(self, sc: Any, syscall: Any, result: Any, error: BaseException | None,
                      duration_s: float) -> None:
        if error is None:
            self._log.debug("syscall.done", pid=sc.pid, syscall=sc.sid, kind=syscall.kind,
                            duration_s=round(duration_s, 6))
        elif isinstance(error, anyio.get_cancelled_exc_class()):
            self._log.debug("syscall.cancelled", pid=sc.pid, syscall=sc.sid, kind=syscall.kind)
        else:
            self._log.info("syscall.failed", pid=sc.pid, syscall=sc.sid, kind=syscall.kind,
                           error=f"{type(error).__name__}: {error}")


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Raise the one real error of an ``ExceptionGroup`` as itself.

    The kernel's task group wraps an error of the ``async with`` body in a group; a user
    catching ``aios.AIOSError`` must see the error itself. Cancellations beside it are
    dropped; a group of several real errors stays a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        real = [e for e in _leaves(group)
                if not isinstance(e, anyio.get_cancelled_exc_class())]
        if len(real) == 1:
            raise real[0] from None
        raise


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
