"""The kernel: lifecycle, spawn, the process table, and the resource table.

Agents run as tasks of the kernel's anyio task group; every syscall they make passes the
:class:`~aios._core.door.Door` and runs in the agent's own task once its resource's queue
admits it, so the kernel needs no worker per syscall. The syscall families are handlers
found through the ``aios.handlers`` entry points: this module imports none of them.
Nothing here is module-level state: several kernels can live in one process.
"""

from __future__ import annotations

import inspect
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from aios._core.door import Door, Instrument
from aios._core.lifecycle import LogInstrument, unwrap_group
from aios._core.watchdog import Watchdog
from aios.abc import SyscallHandler
from aios.config import KernelConfig
from aios.context import Context
from aios.errors import ConfigError, KernelClosedError, PermissionDenied, ProcessError
from aios.llm.base import LLMBackend
from aios.log import make_logger
from aios.plugins import PluginRegistry
from aios.process import Process, ProcessInfo, ProcessState
from aios.scheduler.policy import SchedulingPolicy
from aios.scheduler.queue import ResourceQueue
from aios.state import StateDB

if TYPE_CHECKING:
    from aios.access.audit import AuditLog, AuditRecord
    from aios.access.guard import AccessManager

__all__ = ["Kernel"]

T = TypeVar("T")

_current: ContextVar[Process[Any] | None] = ContextVar("aios_current_process", default=None)
"""The process whose task is running (None: the embedding app's code): spawn and
process control check the caller's capabilities with it."""

_NAME_MAX = 200


class _Services:
    """What the kernel lends its handlers (``aios.abc.KernelServices``)."""

    def __init__(self, kernel: Kernel, options: Mapping[str, Any]) -> None:
        self._kernel = kernel
        self.config = kernel.config
        self.db = kernel._db
        self.log = kernel._log
        self.options = options

    @property
    def registry(self) -> PluginRegistry:
        return self._kernel.registry

    def resource(self, name: str, window: int, *, slots: int | None = None,
                 preempt: bool | None = None) -> ResourceQueue:
        return self._kernel._new_resource(name, window, slots=slots, preempt=preempt)

    def handler(self, family: str) -> SyscallHandler | None:
        return self._kernel._handlers.get(family)


class Kernel:
    """``async with Kernel(config) as kernel:`` runs agents; leaving it ends them.

    ``backends`` lends ready LLM backend instances (tests, or one engine shared with
    something else): their window comes from the ``llm`` config entry of the same name, or
    else from the backend's own config; the kernel never closes a lent backend.
    ``tools`` adds tools (``@aios.tool`` functions, tool providers); ``approver`` answers
    approval requests for irreversible tool calls (default: deny). ``registry`` replaces
    plugin discovery.

    Raises :class:`ConfigError` (bad config, state file, backend) on entering; errors of
    the ``async with`` body or of an agent leave it as themselves, not as an
    ``ExceptionGroup``.
    """

    def __init__(
        self,
        config: KernelConfig | None = None,
        *,
        backends: Mapping[str, LLMBackend] | None = None,
        tools: Sequence[Any] | None = None,
        approver: Callable[..., Awaitable[Any]] | None = None,
        registry: PluginRegistry | None = None,
    ) -> None:
        if config is None:
            config = KernelConfig()
        if not isinstance(config, KernelConfig):
            raise ConfigError(f"config must be an aios.KernelConfig, got {type(config).__name__}")
        if backends is not None and not isinstance(backends, Mapping):
            raise ConfigError(f"backends must be a mapping of name to LLMBackend, got "
                              f"{type(backends).__name__}")
        for name, backend in (backends or {}).items():
            if not isinstance(backend, LLMBackend):
                raise ConfigError(f"must be an aios.abc.LLMBackend instance, got "
                                  f"{type(backend).__name__}", key=f"backends.{name}")
        self.config = config
        self.id = secrets.token_hex(4)
        """Unique per kernel run: the prefix of its syscall ids and checkpoint keys."""
        self._options: dict[str, Any] = {"backends": dict(backends or {}),
                                         "tools": list(tools or ()), "approver": approver}
        self._registry = registry
        self._log = make_logger(config.log_format, config.log_level)
        self._procs: dict[int, Process[Any]] = {}
        self._pids = itertools.count(1)
        self._queues: dict[str, ResourceQueue] = {}
        self._handlers: dict[str, SyscallHandler] = {}
        self._policy_cls: type[SchedulingPolicy] | None = None
        self._db = StateDB(config.state_path)
        self.door = Door(self._log, self.id)
        self._tg: TaskGroup | None = None
        self._entered = False
        self._exiting = False
        self.watchdog: Watchdog | None = None
        self._watchdog_scope: anyio.CancelScope | None = None
        self.access: AccessManager | None = None
        """The access manager, when access control is on (``config.access``, or the
        first spawn with ``caps=``/``quota=``)."""
        self._audit: AuditLog | None = None
        self._audit_scope: anyio.CancelScope | None = None

    # -- lifecycle --------------------------------------------------------------------

    @property
    def registry(self) -> PluginRegistry:
        if self._registry is None:
            self._registry = PluginRegistry(autoload=self.config.autoload_plugins)
        return self._registry

    @property
    def _closed(self) -> bool:
        return self.door.closed

    async def __aenter__(self) -> Kernel:
        if self._entered:
            raise KernelClosedError("a Kernel can be entered only once; create a new one")
        self._entered = True
        self._policy_cls = self.registry.get("aios.schedulers", self.config.scheduler.policy)
        await self._db.open()
        try:
            await self._start_handlers()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_handlers()
                await self._db.close()
            raise
        if self.config.log_format != "off":
            self.add_instrument(LogInstrument(self._log))
        if self.config.access.configured:
            await self._start_access()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self._audit is not None:
            self._audit_scope = anyio.CancelScope()
            self._tg.start_soon(self._run_audit, self._audit, self._audit_scope)
        if self.config.block_warn_s > 0:
            self.watchdog = Watchdog(self.config.block_warn_s, self._log)
            self._watchdog_scope = anyio.CancelScope()
            self._tg.start_soon(self._run_watchdog, self.watchdog, self._watchdog_scope)
        self.door.closed = False
        self._log.info("kernel.started", id=self.id, policy=self.config.scheduler.policy,
                       resources=sorted(self._queues))
        return self

    async def _start_access(self) -> None:
        from aios.access.audit import AuditLog
        from aios.access.guard import AccessManager

        cfg = self.config.access
        if cfg.audit:
            self._audit = AuditLog(self._db, cfg, self.id, self._log)
            try:
                await self._audit.start()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._close_handlers()
                    await self._db.close()
                raise
            self.add_instrument(self._audit)
        self.access = AccessManager(cfg, audit=self._audit)
        self.add_guard(self.access.guard)

    @staticmethod
    async def _run_audit(audit: AuditLog, scope: anyio.CancelScope) -> None:
        with scope:
            await audit.run()

    @staticmethod
    async def _run_watchdog(watchdog: Watchdog, scope: anyio.CancelScope) -> None:
        with scope:
            await watchdog.heartbeat()

    async def _start_handlers(self) -> None:
        services = _Services(self, self._options)
        for name in self.registry.names("aios.handlers"):
            cls = self.registry.get("aios.handlers", name)
            handler: SyscallHandler = cls(services)
            await handler.start()
            self._handlers[handler.family or name] = handler
            self.door.register(handler)
        for name, err in self.registry.errors("aios.handlers").items():
            self._log.warning("handler.unavailable", handler=name, error=err)

    async def _close_handlers(self) -> None:
        for handler in reversed(list(self._handlers.values())):
            try:
                await handler.close()
            except Exception as exc:  # close the others regardless; report this one
                self._log.error("handler.close_failed", handler=handler.family,
                                error=f"{type(exc).__name__}: {exc}")
        self._handlers.clear()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        self._exiting = True
        if self.config.on_exit == "cancel" or et is not None:
            for proc in self._procs.values():
                proc.kill()
        else:  # "wait": a suspended process could never finish; it is killed
            for proc in self._procs.values():
                if proc.suspended:
                    self._log.warning("process.killed_at_exit", pid=proc.pid, agent=proc.name,
                                      reason="suspended")
                    proc.kill()
        if self._watchdog_scope is not None:
            self._watchdog_scope.cancel()
        if self._audit_scope is not None:
            self._audit_scope.cancel()
        try:
            with unwrap_group():
                return await self._tg.__aexit__(et, e, tb)
        finally:
            self.door.closed = True
            with anyio.CancelScope(shield=True):
                if self._audit is not None:
                    await self._audit.flush()
                await self._close_handlers()
                await self._db.close()
            self._log.info("kernel.stopped", id=self.id)

    # -- resources and instruments -----------------------------------------------------

    def _new_resource(self, name: str, window: int, *, slots: int | None = None,
                      preempt: bool | None = None) -> ResourceQueue:
        if name in self._queues:
            raise ConfigError(f"resource {name!r} is defined twice")
        assert self._policy_cls is not None
        queue = ResourceQueue(
            name, window, self._policy_cls(self.config.scheduler),
            preempt=self.config.scheduler.preempt if preempt is None else preempt,
            slots=slots,
        )
        self._queues[name] = queue
        return queue

    def resources(self) -> dict[str, ResourceQueue]:
        """Every scheduled resource (``"llm:default"``, ``"tools:search"``...) and its queue."""
        return dict(self._queues)

    def add_guard(self, guard: Callable[[Any, Any], None]) -> None:
        """Run ``guard(sc, syscall)`` before every syscall is queued; it may raise a
        ``SyscallError`` (``PermissionDenied``, ``QuotaExceeded``) to refuse it."""
        self.door.guards.append(guard)

    def add_instrument(self, instrument: Instrument) -> None:
        """Tell ``instrument`` of every syscall's start and end (it must not raise)."""
        self.door.instruments.append(instrument)

    async def audit(self, *, agent: str | None = None, denied: bool = False,
                    since: float | None = None, kind: str | None = None,
                    limit: int | None = None) -> list[AuditRecord]:
        """Rows of the audit log in the state database (``access.audit = true``), oldest
        first: of ``agent``, only refusals (``denied``), from ``since`` (Unix seconds), of
        ``kind``, the last ``limit``. Rows of earlier runs on the same file are included."""
        from aios.access.audit import query

        if self._db._conn is None:
            raise KernelClosedError("audit() on a kernel that is not running")
        if self._audit is not None:
            return await self._audit.query(agent=agent, denied=denied, since=since,
                                           kind=kind, limit=limit)
        return await query(self._db, agent=agent, denied=denied, since=since, kind=kind,
                           limit=limit)

    def llm_resources(self) -> dict[str, Any]:
        """The LLM resources (``LLMResource``: backend, queue, capabilities) by name."""
        handler: Any = self._handlers.get("llm")
        return dict(handler.resources) if handler is not None else {}

    @property
    def context_switches(self) -> int:
        """Context switches of every process so far (a sum over the process table)."""
        return sum(p.context_switches for p in self._procs.values())

    @property
    def syscalls(self) -> int:
        return sum(p.syscalls for p in self._procs.values())

    # -- processes --------------------------------------------------------------------

    def spawn(
        self,
        agent: Callable[..., Awaitable[T]],
        *args: Any,
        name: str | None = None,
        priority: int = 0,
        group: str | None = None,
        caps: Any = None,
        quota: Any = None,
    ) -> Process[T]:
        """Start ``agent(ctx, *args)`` as a new process and return its handle.

        ``name`` (default ``<function>-<pid>``) keys the agent's own memory and storage,
        so an agent spawned again under the same name finds them; ``group`` (default: the
        name, or the spawning agent's group) shares group spaces; ``priority``: lower
        runs first. ``caps`` (:class:`aios.Capabilities`) and ``quota``
        (:class:`aios.Quota`) replace the group's (``[access.groups.<group>]``); an agent
        spawning is bounded by its own caps (it needs ``spawn``, stays in its group, and
        its child can do no more than it). Raises :class:`ProcessError` for a bad
        argument or an unknown group, :class:`ConfigError` for bad caps or quota,
        :class:`PermissionDenied` for a spawn or a priority the caller may not make,
        :class:`KernelClosedError` outside ``async with``."""
        if self._closed or self._tg is None:
            raise KernelClosedError("spawn() on a kernel that is not running (use `async with`)")
        if not _is_async_callable(agent):
            raise ProcessError(f"agent must be an async function (async def), got {agent!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ProcessError(f"priority must be an int, got {priority!r}")
        _check_name("name", name)
        _check_name("group", group)
        parent = self._caller()
        if self.access is None and (caps is not None or quota is not None):
            from aios.access.guard import AccessManager

            self.access = AccessManager(self.config.access)  # on from now on
            self.add_guard(self.access.guard)
        if parent is not None and group is not None and group != parent.group:
            raise PermissionDenied(f"{parent.name!r} (pid {parent.pid}) may spawn only into "
                                   f"its own group {parent.group!r}, not {group!r}")
        pid = next(self._pids)
        if parent is not None:
            pname = _child_name(parent, name, agent, pid)
            taken = next((p for p in self._procs.values()
                          if p.name == pname and p.group != parent.group), None)
            if taken is not None:
                raise PermissionDenied(
                    f"{parent.name!r} (pid {parent.pid}) may not spawn {pname!r}: that name "
                    f"belongs to a process of group {taken.group!r} (its memory and files)")
        else:
            pname = name or f"{getattr(agent, '__name__', 'agent')}-{pid}"
        default_group = parent.group if parent is not None else pname
        proc: Process[T] = Process(self, pid, pname, group or default_group, priority)
        if self.access is not None:
            proc.access = self.access.attach(
                proc, caps=caps, quota=quota, group_given=group is not None,
                parent=parent.access if parent is not None else None)
        proc.log = self._log.bind(pid=pid, agent=pname)
        proc.ctx = Context(self.door, proc)
        self._procs[pid] = proc
        if self.watchdog is not None:
            self.watchdog.watch(_code_of(agent), pname)
        self._tg.start_soon(self._run_process, proc, agent, args, name=f"aios:{pname}")
        return proc

    async def _run_process(
        self, proc: Process[Any], agent: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        log = proc.log
        outcome = ProcessState.KILLED
        _current.set(proc)
        with anyio.CancelScope() as scope:
            proc._scope = scope
            if proc._kill_requested:
                scope.cancel()
            try:
                log.debug("process.started", priority=proc.priority)
                proc._result = await agent(proc.ctx, *args)
                outcome = ProcessState.DONE
            except Exception as exc:
                proc._exc = exc
                outcome = ProcessState.FAILED
                log.warning("process.failed", error=f"{type(exc).__name__}: {exc}")
            except SystemExit as exc:  # an agent's exit ends that agent, not the kernel
                proc._exc = ProcessError(
                    f"process {proc.pid} ({proc.name}) called sys.exit({exc.code!r})")
                outcome = ProcessState.FAILED
                log.warning("process.exited", code=exc.code)
            except anyio.get_cancelled_exc_class():
                if scope.cancel_called or self._shutting_down():
                    raise  # a kill, or the kernel ending: cancellation as it should be
                # The agent raised a cancellation nobody asked for: its own failure, not
                # a cancellation of the kernel's task group.
                proc._exc = ProcessError(
                    f"process {proc.pid} ({proc.name}) raised a cancellation itself "
                    "(CancelledError) without being cancelled")
                outcome = ProcessState.FAILED
                log.warning("process.failed", error="stray CancelledError")
            finally:
                proc._outcome = outcome
                proc.ended_at = time.time()
                proc._done.set()
                log.debug("process.ended", state=outcome.value)

    def ps(self) -> list[ProcessInfo]:
        return [p.info() for p in self._procs.values()]

    def _shutting_down(self) -> bool:
        return self._tg is None or self._tg.cancel_scope.cancel_called or self._exiting

    def _caller(self) -> Process[Any] | None:
        """The process of this kernel whose code is running (None: the app's code)."""
        proc = _current.get()
        return proc if proc is not None and proc._kernel is self else None

    def _check_control(self, target: Process[Any], what: str,
                       priority: int | None = None) -> None:
        """Refuse process control the caller may not do (access control on)."""
        if self.access is not None:
            caller = self._caller()
            self.access.check_control(caller.access if caller is not None else None,
                                      target, what, priority)

    def _on_suspend(self, proc: Process[Any]) -> None:
        for queue in self._queues.values():
            queue.suspend(proc)

    def _on_resume(self, proc: Process[Any]) -> None:
        for queue in self._queues.values():
            queue.resume(proc)

    def _on_priority(self, proc: Process[Any]) -> None:
        by_queue: dict[ResourceQueue, list[Any]] = {}
        for entry, queue in proc.entries.items():
            by_queue.setdefault(queue, []).append(entry)
        for queue, entries in by_queue.items():
            queue.reprioritize(entries, proc.priority)


def _check_name(what: str, value: Any) -> None:
    """A process or group name keys memory namespaces and storage spaces: printable, at
    most ``_NAME_MAX`` characters, and none of the characters that address spaces
    (``/`` in paths, ``:`` in ``agent:``/``group:`` prefixes), nor ``.`` or ``..``."""
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > _NAME_MAX or not all(
            c.isprintable() for c in value):
        raise ProcessError(f"{what} must be a non-empty printable str of at most {_NAME_MAX} "
                           f"characters, got {value!r}")
    if any(c in value for c in "/\\:") or value in (".", ".."):
        raise ProcessError(f"{what} {value!r} may not contain '/', '\\' or ':' nor be "
                           "'.' or '..' (it names a memory namespace and a storage space)")


def _child_name(parent: Process[Any], name: str | None, agent: Any, pid: int) -> str:
    """An agent spawning may name its child only with its own name (the same program's
    memory and files) or a name derived from it, ``<parent>.<suffix>``: never another
    agent's, whose private memory and files that name would open."""
    if name is None:
        return f"{parent.name}.{getattr(agent, '__name__', 'agent')}-{pid}"
    if name != parent.name and not name.startswith(parent.name + "."):
        raise PermissionDenied(
            f"{parent.name!r} (pid {parent.pid}) may spawn only under its own name or "
            f"{parent.name + '.<suffix>'!r}, not {name!r}: that name keys another agent's "
            "memory and files")
    return name


def _code_of(agent: Any) -> Any:
    while hasattr(agent, "func") and not inspect.isfunction(agent):  # functools.partial
        agent = agent.func
    code = getattr(agent, "__code__", None)
    return code if code is not None else getattr(getattr(agent, "__call__", None),  # noqa: B004
                                                 "__code__", None)


def _is_async_callable(obj: Any) -> bool:
    while hasattr(obj, "func") and not inspect.isfunction(obj):  # functools.partial
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004
    )

