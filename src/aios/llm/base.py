"""The interface every LLM backend implements, built-in or third-party.

A backend implements one abstract method, :meth:`LLMBackend.generate`, an async iterator
of :class:`Chunk`. Everything else is optional, declared in :class:`BackendCapabilities`:

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

Token counts: ``Chunk.n_tokens`` counts as the tokens arrive (the engine's own count, the
backend's tokenizer, or a documented estimate); the final chunk's ``usage`` then gives the
segment's exact ``completion_tokens`` when the engine reports one, and the kernel takes it
over its running count. Deadlines: ``GenerationRequest.first_token_deadline`` and
``deadline`` are absolute times on anyio's clock (``anyio.current_time()``); a backend
whose waits can hang (a network server) raises :class:`aios.LLMTimeout` when one passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aios.log import NULL_LOGGER
from aios.syscalls import LLMChat, ToolCallRequest, Usage

__all__ = [
    "BackendCapabilities",
    "Chunk",
    "GenerationRequest",
    "LLMBackend",
    "Resume",
    "SupportsHeldText",
    "SupportsKVSnapshot",
    "constrained",
]


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
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
    held: str = ""
    """Text generated after ``text`` (counted in ``completion_tokens``) that the backend
    held back because it may begin a stop string. A backend applying stop strings itself
    primes its matcher with it (:class:`aios.llm.stops.StopMatcher`), so a stop string
    spanning the switch still stops and nothing is lost or repeated."""
    reasoning: str = ""
    """Reasoning text (``reasoning_content``) produced so far."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the kernel asks a backend for: the syscall plus scheduling context."""

    call: LLMChat
    request_id: str
    priority: int = 0
    resume: Resume | None = None
    first_token_deadline: float | None = None
    """The first chunk must come by then (``anyio.current_time()`` clock), or
    :class:`aios.LLMTimeout` with ``deadline="first_token"``."""
    deadline: float | None = None
    """The whole segment must end by then, or ``LLMTimeout(deadline="total")``."""


@dataclass(slots=True)
class Chunk:
    """A piece of a generation. The last chunk has ``finish_reason`` set.

    ``text`` is the new text (delta), ``token_ids`` the tokens it came from (empty when
    the backend cannot tell). ``n_tokens`` counts the completion tokens in this chunk
    (text and reasoning). ``reasoning`` is new reasoning text (``reasoning_content``),
    kept apart from the answer.
    """

    text: str = ""
    reasoning: str = ""
    token_ids: tuple[int, ...] = ()
    n_tokens: int = 0
    finish_reason: str | None = None
    tool_calls: list[ToolCallRequest] | None = None
    usage: Usage | None = None
    model: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class SupportsHeldText(Protocol):
    """Implemented by the iterator of a backend that holds back text (stop strings)."""

    def held_text(self) -> str:
        """The text generated but not yet yielded (a possible stop-string start)."""
        ...


def constrained(call: LLMChat) -> bool:
    """Whether ``call``'s decoding is constrained (JSON mode, a JSON schema, a forced tool
    call): a server continuing such a generation from text would restart the constraint
    (``{"{"answer"...``), so only an exact (KV) resume may preempt it."""
    fmt = call.response_format
    if fmt is not None and fmt.get("type", "text") != "text":
        return True
    choice = call.tool_choice
    return bool(call.tools) and (choice == "required" or isinstance(choice, dict))


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

    capabilities: BackendCapabilities = BackendCapabilities()
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
        True, except for constrained decoding (:func:`constrained`) on a backend without
        ``kv_snapshot``: a text continuation would lose the grammar's state."""
        return self.capabilities.kv_snapshot or not constrained(call)

    def stats(self) -> dict[str, Any]:
        """Backend counters for ``aios bench`` and ``aios ps``. Default: none."""
        return {}
