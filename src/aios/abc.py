"""Plugin interfaces: what a third-party distribution implements to extend aios.

* :class:`SyscallHandler` (entry-point group ``aios.handlers``): a family of syscalls
  behind the kernel's door (``llm``, ``tools``, ``memory``, ``storage`` are built in this
  way). It receives a :class:`SyscallContext` per syscall and the kernel's services once.
* :class:`LLMBackend` (``aios.llm_backends``): one generation method, optional
  capabilities (see :mod:`aios.llm.base`).
* :class:`SchedulingPolicy` (``aios.schedulers``): orders one resource's waiting syscalls.

Further interfaces (``ToolProvider``, ``MemoryStore``, ``StorageStore``) are defined in
their family packages and re-exported here as they land. This module holds no state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from aios._core.door import Guard, Instrument, SyscallContext
from aios.errors import InvalidSyscall
from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest, LLMBackend, Resume
from aios.memory.base import MemoryStore
from aios.scheduler.policy import SchedulingPolicy
from aios.scheduler.queue import Slot
from aios.storage.base import StorageStore
from aios.tools.base import ToolProvider, ToolSpec

if TYPE_CHECKING:
    from aios.config import KernelConfig
    from aios.plugins import PluginRegistry
    from aios.scheduler.queue import ResourceQueue
    from aios.state import StateDB

__all__ = [
    "BackendCapabilities",
    "Chunk",
    "GenerationRequest",
    "Guard",
    "Instrument",
    "KernelServices",
    "LLMBackend",
    "MemoryStore",
    "Resume",
    "SchedulingPolicy",
    "Slot",
    "StorageStore",
    "SyscallContext",
    "SyscallHandler",
    "ToolProvider",
    "ToolSpec",
]


class KernelServices(Protocol):
    """What the kernel lends to a handler for its lifetime."""

    config: KernelConfig
    db: StateDB
    log: Any
    registry: PluginRegistry
    options: Mapping[str, Any]
    """Keyword arguments given to ``aios.Kernel(...)`` for families (``tools=``,
    ``approver=``, ``backends=``)."""

    def resource(self, name: str, window: int, *, slots: int | None = None,
                 preempt: bool | None = None) -> ResourceQueue:
        """A new scheduled resource (``"tools:search"``) under the kernel's policy; process
        control (suspend, resume, set_priority) reaches its queue."""
        ...

    def handler(self, family: str) -> SyscallHandler | None:
        """Another family's handler (a tools handler exposing memory tools, say)."""
        ...


class SyscallHandler(ABC):
    """A family of syscalls behind the door (entry-point group ``aios.handlers``).

    The kernel constructs it as ``cls(services)``, awaits :meth:`start` once when it
    starts (in entry-point name order) and :meth:`close` once when it stops (reverse
    order). Each syscall whose ``kind`` is in :attr:`kinds` reaches :meth:`call` (or
    :meth:`stream`) once, in the caller's task, after the door's guards passed.

    Raise :mod:`aios.errors` exceptions for failures the caller should see; anything
    else escaping a handler is reported as a bug (``KernelInternalError``).
    """

    family: ClassVar[str] = ""
    kinds: ClassVar[Sequence[str]] = ()

    def __init__(self, services: KernelServices) -> None:
        self.services = services

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open stores, start backends or servers. Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything :meth:`start` acquired. Default: nothing."""

    @abstractmethod
    async def call(self, sc: SyscallContext, syscall: Any) -> Any:
        """Serve one syscall; return its typed result."""

    def stream(self, sc: SyscallContext, syscall: Any) -> AsyncIterator[Any]:
        """Serve one syscall as a stream of events (only families that stream)."""
        raise InvalidSyscall(f"{syscall.kind} cannot be streamed", syscall=syscall)

    def guard_resource(self, syscall: Any) -> str | None:
        """The resource name a syscall uses (``"llm:default"``), for guards and audit."""
        return getattr(syscall, "resource", None)
