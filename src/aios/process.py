"""Processes: the kernel's handle on a running agent, and its public snapshot.

A :class:`Process` is created by ``Kernel.spawn``; agents never construct one. All of its
counters are updated by the kernel's syscall path; this module must never await a
resource or touch the scheduler's internals beyond telling it about state changes.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict

from aios.errors import KernelClosedError, ProcessError, ProcessKilled
from aios.scheduler.policy import Entry, EntryState

if TYPE_CHECKING:
    from aios._core.kernel import Kernel
    from aios.access.grants import ProcessAccess
    from aios.checkpoint.store import ContextSwitch
    from aios.config import KernelConfig
    from aios.scheduler.queue import ResourceQueue

__all__ = ["Process", "ProcessInfo", "ProcessState"]

T = TypeVar("T")


class ProcessState(StrEnum):
    """Derived from the process's outcome, suspension and in-flight syscalls."""

    RUNNING = "running"      # executing agent code
    WAITING = "waiting"      # blocked in a syscall (queued, being served, or approval)
    SUSPENDED = "suspended"
    DONE = "done"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def finished(self) -> bool:
        return self in (ProcessState.DONE, ProcessState.FAILED, ProcessState.KILLED)


class ProcessInfo(BaseModel):
    """A snapshot of one process, as ``kernel.ps()`` and ``proc.info()`` return it."""

    model_config = ConfigDict(frozen=True)

    pid: int
    name: str
    group: str
    state: ProcessState
    priority: int
    tokens_in: int
    tokens_out: int
    service_s: float
    """Seconds its syscalls spent admitted to a resource (being served)."""
    wait_s: float
    """Seconds its syscalls spent queued, waiting for admission."""
    context_switches: int
    syscalls: int
    llm_calls: int = 0
    tool_calls: int = 0
    tool_s: float = 0.0
    """Seconds its tool calls ran (admitted)."""
    storage_bytes: int = 0
    """Bytes its storage writes added."""
    started_at: float
    ended_at: float | None
    error: str | None = None
    awaiting_approval: str | None = None
    """The tool whose call waits for a human's approval (state ``waiting``)."""
    caps: dict[str, Any] | None = None
    """Its effective capabilities (set fields only); None without access control."""
    quota: dict[str, float] | None = None
    """Its quota limits by name (use is in the counters above)."""


class Process(Generic[T]):
    """Handle on a spawned agent. ``await proc.wait()`` gives its return value."""

    def __init__(self, kernel: Kernel, pid: int, name: str, group: str, priority: int) -> None:
        self._kernel = kernel
        self.pid = pid
        self.name = name
        self.group = group
        self.priority = priority
        self.suspended = False
        self.attained = 0.0
        """Service received so far (tokens), across all of its syscalls (las, fair)."""
        self.counters: dict[str, float] = {}
        """Accounting by the handlers: tokens_in, tokens_out, llm_calls, tool_calls..."""
        self.syscalls = 0
        self.in_syscall = 0
        """Syscalls in flight (the door counts them)."""
        self.wait_s = 0.0
        """Seconds waited by syscalls that have ended (live ones are added in info())."""
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.entries: dict[Entry, ResourceQueue] = {}
        self.switch_log: list[ContextSwitch] = []
        """Every context switch of this process: save/restore time and bytes, and how it
        was restored (``kv``, ``text`` or ``recompute``)."""
        self.ctx: Any = None
        self.log: Any = None
        self.access: ProcessAccess | None = None
        """What it may do and its quota (None without access control)."""
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self._outcome: ProcessState | None = None
        self._result: Any = None
        self._exc: BaseException | None = None
        self._kill_requested = False

    @property
    def kernel_config(self) -> KernelConfig:
        return self._kernel.config

    @property
    def state(self) -> ProcessState:
        """Derived: the outcome once ended; killed as soon as a kill is asked; suspended;
        waiting while a syscall is in flight; else running."""
        if self._outcome is not None:
            return self._outcome
        if self._kill_requested:
            return ProcessState.KILLED
        if self.suspended:
            return ProcessState.SUSPENDED
        return ProcessState.WAITING if self.in_syscall else ProcessState.RUNNING

    @property
    def finished(self) -> bool:
        """The agent's task has ended (or a kill was asked: no new syscall is taken)."""
        return self._outcome is not None or self._kill_requested

    def account(self, counters: dict[str, float]) -> None:
        c = self.counters
        for key, value in counters.items():
            if key == "attained":
                self.attained += value
            else:
                c[key] = c.get(key, 0.0) + value

    @property
    def tokens_in(self) -> int:
        return int(self.counters.get("tokens_in", 0))

    @property
    def tokens_out(self) -> int:
        return int(self.counters.get("tokens_out", 0))

    @property
    def context_switches(self) -> int:
        return int(self.counters.get("context_switches", 0))

    @property
    def service_s(self) -> float:
        return self.counters.get("service_s", 0.0)

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} name={self.name!r} state={self.state.value}>"

    async def wait(self) -> T:
        """Wait for the agent to end; return its result or re-raise its exception."""
        await self._done.wait()
        if self.state is ProcessState.KILLED:
            raise ProcessKilled(self.pid, self.name)
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    @property
    def done(self) -> bool:
        """The agent's task has ended."""
        return self._outcome is not None

    def kill(self) -> None:
        """Cancel the agent. It reads as killed at once; its in-flight syscalls end
        (cancelled); ``wait()`` raises :class:`aios.ProcessKilled`. Killing a finished
        process does nothing."""
        if self._outcome is not None:
            return
        self._kernel._check_control(self, "kill")
        self._kill_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def suspend(self) -> None:
        """Stop dispatching this process's syscalls until :meth:`resume`.

        Its queued syscalls stay queued; a running generation that can be preempted
        yields at the next token boundary and waits, checkpointed.
        """
        self._check_alive("suspend")
        self._kernel._check_control(self, "suspend")
        if self.suspended:
            return
        self.suspended = True
        self._kernel._on_suspend(self)

    def resume(self) -> None:
        self._check_alive("resume")
        self._kernel._check_control(self, "resume")
        if not self.suspended:
            return
        self.suspended = False
        self._kernel._on_resume(self)

    def set_priority(self, priority: int) -> None:
        """Change the priority (lower runs first); applies to queued syscalls at once."""
        self._check_alive("set_priority")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ProcessError(f"priority must be an int, got {priority!r}")
        self._kernel._check_control(self, "set_priority", priority)
        self.priority = priority
        self._kernel._on_priority(self)

    def info(self) -> ProcessInfo:
        now = None
        wait_s = self.wait_s
        for entry in self.entries:  # live syscalls: waited so far, and still waiting
            wait_s += entry.waited
            if entry.state is EntryState.WAITING:
                now = now if now is not None else entry_clock(entry, self.entries)
                wait_s += max(0.0, now - entry.enqueued_at)
        c = self.counters
        access = self.access
        return ProcessInfo(
            pid=self.pid,
            name=self.name,
            group=self.group,
            state=self.state,
            priority=self.priority,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            service_s=self.service_s,
            wait_s=wait_s,
            context_switches=self.context_switches,
            syscalls=self.syscalls,
            llm_calls=int(c.get("llm_calls", 0)),
            tool_calls=int(c.get("tool_calls", 0)),
            tool_s=c.get("tool_s", 0.0),
            storage_bytes=int(c.get("storage_bytes", 0)),
            started_at=self.started_at,
            ended_at=self.ended_at,
            error=None if self._exc is None else f"{type(self._exc).__name__}: {self._exc}",
            awaiting_approval=access.awaiting if access is not None else None,
            caps=access.caps.model_dump(exclude_none=True) if access is not None else None,
            quota=access.quota.limits() if access is not None and access.quota else None,
        )

    def _check_alive(self, what: str) -> None:
        if self._outcome is not None:
            raise ProcessError(
                f"cannot {what} process {self.pid} ({self.name}): it is {self.state.value}"
            )
        if self._kernel._closed:
            raise KernelClosedError(f"cannot {what} process {self.pid}: the kernel is closed")


def entry_clock(entry: Entry, entries: dict[Entry, ResourceQueue]) -> float:
    """The clock of the queue ``entry`` waits in (queues may run on a test clock)."""
    return entries[entry].clock()
