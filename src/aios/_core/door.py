"""The door: every syscall of every agent passes here once, in the caller's task.

A table ``kind -> handler`` (curio's trap table, trio's ``_traps.py``) filled from the
``aios.handlers`` entry points. What every syscall needs happens here and only here:

1. dispatch: an unknown kind is an :class:`InvalidSyscall` listing the installed kinds;
2. guards: synchronous checks that may raise (access control, quotas), before anything is
   queued, so a denied syscall uses no capacity;
3. process state: the process counts as waiting while a syscall is in flight;
4. instruments: observers (lifecycle log, metrics, audit, journal) told of the start and
   the end; they never raise, and with none registered the door pays nothing for them
   (trio's instrument fast path);
5. errors: a :class:`SyscallError` gets the syscall attached (httpx's
   ``request_context``); anything else escaping a handler is a bug of the handler, raised
   as :class:`KernelInternalError` (never blamed on a backend or the agent).

Handlers receive a :class:`SyscallContext`, never the process itself. The door must never
block: it awaits only the handler.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from aios.errors import (
    AIOSError,
    InvalidSyscall,
    KernelClosedError,
    KernelInternalError,
    ProcessError,
    SyscallError,
)
from aios.scheduler.policy import Entry
from aios.scheduler.queue import ResourceQueue, Slot

if TYPE_CHECKING:
    from aios.abc import SyscallHandler
    from aios.checkpoint.store import ContextSwitch
    from aios.context import Context
    from aios.process import Process

__all__ = ["Door", "Guard", "Instrument", "SyscallContext"]

Guard = Callable[["SyscallContext", Any], None]
"""A synchronous check run before a syscall is queued; raises a ``SyscallError``
(``PermissionDenied``, ``QuotaExceeded``...) to refuse it."""


class Instrument(Protocol):
    """An observer of syscalls. Must not raise (an exception is logged and dropped)."""

    def syscall_started(self, sc: SyscallContext, syscall: Any) -> None: ...

    def syscall_ended(
        self, sc: SyscallContext, syscall: Any, result: Any, error: BaseException | None,
        duration_s: float,
    ) -> None: ...


class SyscallContext:
    """One syscall as its handler sees it: who asked, and the kernel's verbs on that
    process (admission to a resource, accounting). Created by the door per syscall."""

    __slots__ = ("_proc", "ctx", "group", "log", "name", "pid", "sid", "syscall")

    def __init__(self, proc: Process[Any], syscall: Any, sid: str, log: Any) -> None:
        self._proc = proc
        self.syscall = syscall
        self.sid = sid
        self.pid = proc.pid
        self.name = proc.name
        self.group = proc.group
        self.log = log
        self.ctx: Context = proc.ctx

    @property
    def priority(self) -> int:
        return self._proc.priority

    @contextmanager
    def entry(self, queue: ResourceQueue, *, preemptible: bool = False) -> Iterator[Entry]:
        """This syscall's place in ``queue`` for the block, across any number of
        admissions (a preempted generation keeps its place and arrival order). Process
        control (suspend, resume, set_priority) reaches it while the block runs."""
        entry = queue.new_entry(self._proc, self.sid, self._proc.priority,
                                preemptible=preemptible)
        self._proc.entries[entry] = queue
        try:
            yield entry
        finally:
            self._proc.entries.pop(entry, None)
            self._proc.wait_s += entry.waited

    def enter(self, queue: ResourceQueue, *, preemptible: bool = False) -> Entry:
        """Like :meth:`entry` without the context manager (for a hot loop): pair it with
        :meth:`leave` in a ``finally``."""
        entry = queue.new_entry(self._proc, self.sid, self._proc.priority,
                                preemptible=preemptible)
        self._proc.entries[entry] = queue
        return entry

    def leave(self, entry: Entry) -> None:
        self._proc.entries.pop(entry, None)
        self._proc.wait_s += entry.waited

    @asynccontextmanager
    async def admitted(
        self, queue: ResourceQueue, *, preemptible: bool = False
    ) -> AsyncIterator[Slot]:
        """Wait for a slot of ``queue`` (under the kernel's policy) and hold it for the
        block; it is given back on every path, cancellation included."""
        with self.entry(queue, preemptible=preemptible) as entry:
            async with queue.admitted(entry) as slot:
                yield slot

    def account(self, **counters: float) -> None:
        """Add to the process's counters (``tokens_in``, ``tokens_out``, ``llm_calls``,
        ``tool_calls``, ``tool_s``, ``storage_bytes``...)."""
        self._proc.account(counters)

    def charge(self, service: float) -> None:
        """Add ``service`` (tokens) to the process's attained service (las, fair)."""
        self._proc.attained += service

    def record_switch(self, switch: ContextSwitch) -> None:
        """Append a context switch to the process's ``switch_log``."""
        self._proc.switch_log.append(switch)

    def update_last_switch(self, **fields: Any) -> ContextSwitch:
        log = self._proc.switch_log
        log[-1] = log[-1].model_copy(update=fields)
        return log[-1]


class Door:
    """The table of handlers, the guards and the instruments of one kernel."""

    def __init__(self, log: Any, kernel_id: str) -> None:
        self._table: dict[str, SyscallHandler] = {}
        self.guards: list[Guard] = []
        self.instruments: list[Instrument] = []
        self._log = log
        self._kernel_id = kernel_id
        self._next = 0
        self.closed = True

    def register(self, handler: SyscallHandler) -> None:
        for kind in handler.kinds:
            other = self._table.get(kind)
            if other is not None and other is not handler:
                raise AIOSError(f"syscall kind {kind!r} is claimed by both "
                                f"{type(other).__qualname__} and {type(handler).__qualname__}")
            self._table[kind] = handler

    @property
    def kinds(self) -> list[str]:
        return sorted(self._table)

    def _enter(self, proc: Process[Any], syscall: Any) -> tuple[SyscallHandler, SyscallContext]:
        kind = getattr(syscall, "kind", None)
        handler = self._table.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise InvalidSyscall(
                f"unknown syscall kind {kind!r} (installed: {', '.join(self.kinds) or 'none'})",
                syscall=syscall)
        if self.closed:
            raise KernelClosedError(f"{kind} on a kernel that is not running")
        if proc.done:  # (a process being killed goes on: its cancellation lands next)
            raise ProcessError(f"process {proc.pid} ({proc.name}) is {proc.state.value}")
        self._next += 1
        sc = SyscallContext(proc, syscall, f"{self._kernel_id}.{proc.pid}.{self._next}",
                            proc.log)
        try:
            for guard in self.guards:
                guard(sc, syscall)
        except SyscallError as exc:
            if exc.syscall is None:
                exc.syscall = syscall
            raise
        proc.syscalls += 1
        return handler, sc

    async def call(self, proc: Process[Any], syscall: Any) -> Any:
        """Run ``syscall`` for ``proc`` and return its typed result.

        Raises the handler's :class:`SyscallError` (syscall attached),
        :class:`InvalidSyscall` for an unknown kind, :class:`KernelInternalError` for a
        handler's bug; cancellation propagates as anyio's."""
        handler, sc = self._enter(proc, syscall)
        outcome = _Outcome()
        t0 = self._begin(proc, sc, syscall)
        try:
            outcome.result = await handler.call(sc, syscall)
            return outcome.result
        except BaseException as exc:
            outcome.error = _attach(exc, syscall, handler)
            if outcome.error is exc:
                raise
            raise outcome.error from exc
        finally:
            self._finish(proc, sc, syscall, outcome, t0)

    def stream(
        self, proc: Process[Any], syscall: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """``async with door.stream(proc, syscall) as events:`` the syscall's events; the
        stream is closed (its slot freed) when the block exits, on every path."""
        return self._stream(proc, syscall)

    @asynccontextmanager
    async def _stream(self, proc: Process[Any], syscall: Any) -> AsyncIterator[
            AsyncIterator[Any]]:
        handler, sc = self._enter(proc, syscall)
        outcome = _Outcome()
        t0 = self._begin(proc, sc, syscall)
        events: AsyncIterator[Any] | None = None
        try:
            try:
                events = handler.stream(sc, syscall)
            except BaseException as exc:
                outcome.error = _attach(exc, syscall, handler)
                if outcome.error is exc:
                    raise
                raise outcome.error from exc
            # Errors of the caller's own block pass through unchanged; the handler's
            # errors are mapped step by step by _Guarded.
            yield _Guarded(events, outcome, syscall, handler)
        except BaseException as exc:
            if outcome.error is None:
                outcome.error = exc
            raise
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
            self._finish(proc, sc, syscall, outcome, t0)

    def _begin(self, proc: Process[Any], sc: SyscallContext, syscall: Any) -> float:
        proc.in_syscall += 1
        if not self.instruments:
            return 0.0
        for inst in self.instruments:
            try:
                inst.syscall_started(sc, syscall)
            except Exception as exc:  # an observer must never change the outcome
                self._log.error("instrument.failed", instrument=repr(inst), error=repr(exc))
        return time.monotonic()

    def _finish(self, proc: Process[Any], sc: SyscallContext, syscall: Any,
                outcome: _Outcome, t0: float) -> None:
        proc.in_syscall -= 1
        if not self.instruments:
            return
        duration = time.monotonic() - t0
        for inst in self.instruments:
            try:
                inst.syscall_ended(sc, syscall, outcome.result, outcome.error, duration)
            except Exception as exc:
                self._log.error("instrument.failed", instrument=repr(inst), error=repr(exc))


class _Outcome:
    __slots__ = ("error", "result")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None


def _attach(exc: BaseException, syscall: Any, handler: SyscallHandler) -> BaseException:
    """The error the caller sees for ``exc`` escaping ``handler``."""
    if isinstance(exc, SyscallError):
        if exc.syscall is None:
            exc.syscall = syscall
        return exc
    if isinstance(exc, AIOSError) or not isinstance(exc, Exception):
        return exc  # kernel-level errors, cancellation, KeyboardInterrupt: as they are
    return KernelInternalError(
        f"bug in the {handler.family or type(handler).__qualname__} handler serving "
        f"{syscall.kind}: {type(exc).__name__}: {exc}", syscall=syscall)


class _Guarded:
    """A handler's event stream with the door's error mapping on each step."""

    __slots__ = ("_events", "_handler", "_outcome", "_syscall")

    def __init__(self, events: AsyncIterator[Any], outcome: _Outcome, syscall: Any,
                 handler: SyscallHandler) -> None:
        self._events = events
        self._outcome = outcome
        self._syscall = syscall
        self._handler = handler

    def __aiter__(self) -> _Guarded:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._events.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            err = _attach(exc, self._syscall, self._handler)
            self._outcome.error = err
            if err is exc:
                raise
            raise err from exc
        self._outcome.result = item
        return item

