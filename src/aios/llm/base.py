"""The interface every LLM backend implements, built-in or third-party.

A backend implements one abstract method, :meth:`LLMBackend.generate`, an async iterator
of :class:`Chunk`. Everything else is optional, declared in :class:`Capabilities`:

* ``token_boundary``: the iterator yields as tokens are produced, so the kernel can stop
  it between two tokens (preemption). A backend that yields one final chunk cannot be
  preempted and the kernel will not try.
* ``continuation``: given ``request.resume`` (text and token ids produced so far), the
  backend continues the same assistant message and produces exactly the remainder an
  uninterrupted generation would have produced (at temperature 0 / fixed seed).
* ``kv_snapshot``: the iterator returned by ``generate`` implements
  :class:`SupportsKVSnapshot`; ``resume.kv`` then holds such a snapshot to restore.

Rules for implementations: never block the event loop (run blocking inference in a worker
thread); raise only :mod:`aios.errors` exceptions (``LLMError`` subclasses) for failures;
put the counts in the final chunk's ``usage``. Provider SDKs stay inside the backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aios.log import NULL_LOGGER
from aios.syscalls import LLMChat, ToolCallRequest, Usage

__all__ = [
    "Capabilities",
    "Chunk",
    "GenerationRequest",
    "LLMBackend",
    "Resume",
    "SupportsKVSnapshot",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    token_boundary: bool = False
    continuation: bool = False
    kv_snapshot: bool = False
    engine_queue: bool = True
    """The engine queues requests beyond its slots itself (a server with continuous
    batching). Then the kernel's default window gets headroom over ``max_concurrency`` so
    the batch stays full during hand-overs; an in-process engine that runs one generation
    at a time (llama.cpp) sets this False and gets a window of exactly its slots."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a preempted generation stopped: everything produced so far.

    A backend resuming from it yields only the new text and counts ``n_tokens`` only for
    new tokens; its ``usage.prompt_tokens`` counts the prompt it was given, i.e. the
    original prompt plus the ``completion_tokens`` it continues (as vLLM reports a
    continuation). The kernel keeps the completion count itself.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    kv: bytes | None = None
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the kernel asks a backend for: the syscall plus scheduling context."""

    call: LLMChat
    request_id: str
    priority: int = 0
    resume: Resume | None = None


@dataclass(slots=True)
class Chunk:
    """A piece of a generation. The last chunk has ``finish_reason`` set.

    ``text`` is the new text (delta), ``token_ids`` the tokens it came from (empty when
    the backend cannot tell). ``n_tokens`` counts the completion tokens in this chunk.
    """

    text: str = ""
    token_ids: tuple[int, ...] = ()
    n_tokens: int = 0
    finish_reason: str | None = None
    tool_calls: list[ToolCallRequest] | None = None
    usage: Usage | None = None
    model: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class SupportsKVSnapshot(Protocol):
    """Implemented by the iterator of a ``kv_snapshot`` backend."""

    async def save_kv(self) -> bytes:
        """Snapshot the KV state at the current token boundary."""
        ...


class LLMBackend(ABC):
    """Base class of LLM backends (entry-point group ``aios.llm_backends``).

    The entry point names a class; the kernel constructs it as ``cls(config)`` with the
    :class:`aios.LLMConfig` of the resource, awaits :meth:`start` once before use and
    :meth:`close` once when the kernel stops.
    """

    capabilities: Capabilities = Capabilities()
    log: Any = NULL_LOGGER
    """A structlog-style logger; the kernel sets it to its own, bound to the resource
    name, before :meth:`start`. Backends log through it, never through a global one."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (connections, model weights). Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Default: nothing."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Produce the completion of ``request`` as chunks (usually an async generator)."""

    def check(self, call: LLMChat) -> None:  # noqa: B027 - optional hook
        """Validate a call against what this backend supports; the kernel calls it at the
        door before queueing. Raise :class:`aios.InvalidSyscall` naming the unsupported
        field (never accept a field and drop it). Default: everything is supported."""

    def preemptible(self, call: LLMChat) -> bool:
        """Whether this call may be preempted (its generation resumed exactly). Default:
        True; a backend returns False for calls it cannot resume exactly (e.g. decoding
        constrained by a grammar whose state a text continuation would lose)."""
        return True

    def stats(self) -> dict[str, Any]:
        """Backend counters for ``aios bench`` and ``aios ps``. Default: none."""
        return {}
