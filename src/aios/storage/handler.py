"""The storage family behind the door: sandbox, scheduling and accounting of storage
syscalls; persistence is the store's (``aios.storage`` entry points, ``sqlite`` built in).

Each syscall's path is normalised and access-checked (:mod:`aios.storage.paths`) before
it queues, so a refused syscall uses no capacity; then it waits for a slot of the
``storage:<store>`` resource under the kernel's policy (one agent's bulk writes queue
behind the window instead of starving another's reads), and runs on the store. The
slot's service is the store's time in seconds. This handler keeps no state of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from aios.abc import KernelServices, SyscallContext, SyscallHandler
from aios.errors import InvalidSyscall, PluginError, QuotaExceeded
from aios.scheduler.queue import ResourceQueue
from aios.storage import paths
from aios.storage.base import StorageStore
from aios.storage.paths import Target
from aios.syscalls.storage import (
    FileInfo,
    FileVersion,
    StorageDelete,
    StorageHistory,
    StorageHit,
    StorageList,
    StorageRead,
    StorageRollback,
    StorageSearch,
    StorageWrite,
)

if TYPE_CHECKING:
    from aios.config import StorageConfig
    from aios.plugins import PluginRegistry
    from aios.state import StateDB

__all__ = ["StorageHandler", "load_store"]

M = TypeVar("M", FileVersion, FileInfo)
T = TypeVar("T")


def load_store(config: StorageConfig, registry: PluginRegistry, db: StateDB) -> StorageStore:
    """The configured store (``config.store`` in group ``aios.storage``), built but not
    started; ``PluginError`` if it is not a :class:`StorageStore`."""
    cls = registry.get("aios.storage", config.store)
    if not (isinstance(cls, type) and issubclass(cls, StorageStore)):
        raise PluginError(config.store, "must be a subclass of aios.abc.StorageStore")
    return cls(config, db)


class StorageHandler(SyscallHandler):
    """``storage.*`` syscalls: write, read, list, delete, history, rollback, search."""

    family: ClassVar[str] = "storage"
    kinds: ClassVar[tuple[str, ...]] = (
        "storage.write", "storage.read", "storage.list", "storage.delete",
        "storage.history", "storage.rollback", "storage.search",
    )

    def __init__(self, services: KernelServices) -> None:
        super().__init__(services)
        self.config = services.config.storage
        self._store: StorageStore | None = None
        self._queue: ResourceQueue | None = None
        self._ops: dict[str, Callable[[SyscallContext, Any], Awaitable[Any]]] = {
            "storage.write": self._write, "storage.read": self._read,
            "storage.list": self._list, "storage.delete": self._delete,
            "storage.history": self._history, "storage.rollback": self._rollback,
            "storage.search": self._search,
        }

    @property
    def store(self) -> StorageStore:
        if self._store is None:
            raise RuntimeError("the storage handler has not started")
        return self._store

    @property
    def resource_name(self) -> str:
        return f"storage:{self.config.store}"

    async def start(self) -> None:
        store = load_store(self.config, self.services.registry, self.services.db)
        await store.start()
        self._store = store
        self._queue = self.services.resource(self.resource_name, self.config.window)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()

    def guard_resource(self, syscall: Any) -> str | None:
        return self.resource_name

    async def call(self, sc: SyscallContext, syscall: Any) -> Any:
        op = self._ops.get(getattr(syscall, "kind", ""))
        if op is None:
            raise InvalidSyscall(f"the storage handler does not serve {syscall!r}",
                                 syscall=syscall)
        return await op(sc, syscall)

    async def _admitted(self, sc: SyscallContext, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work()`` (a store call) in a slot of the storage resource; the coroutine
        is created only once admitted, so a cancelled wait leaves none un-awaited."""
        assert self._queue is not None
        async with sc.admitted(self._queue) as slot:
            t0 = time.perf_counter()
            try:
                return await work()
            finally:
                slot.service = time.perf_counter() - t0

    def _resolve(self, sc: SyscallContext, path: str, *, write: bool = False,
                 allow_empty: bool = False) -> Target:
        return paths.resolve(sc, path, max_bytes=self.config.max_path_bytes,
                             allow_empty=allow_empty, write=write)

    # -- the verbs ------------------------------------------------------------------------

    async def _write(self, sc: SyscallContext, s: StorageWrite) -> FileVersion:
        t = self._resolve(sc, s.path, write=True)
        limit = self.config.max_file_bytes
        if len(s.data) > limit:
            raise QuotaExceeded(f"a write of {len(s.data)} bytes to {t.shown!r} is over the "
                                f"largest file allowed ({limit} bytes)",
                                quota="storage.file_bytes", limit=limit, used=len(s.data))
        fv = await self._admitted(sc, lambda: self.store.write(
            t.namespace, t.path, s.data, if_version=s.if_version, author=sc.name))
        sc.account(storage_bytes=len(s.data))
        return _shown(fv, t)

    async def _read(self, sc: SyscallContext, s: StorageRead) -> bytes:
        t = self._resolve(sc, s.path)
        _, data = await self._admitted(
            sc, lambda: self.store.read(t.namespace, t.path, s.version))
        return bytes(data)

    async def _list(self, sc: SyscallContext, s: StorageList) -> list[FileInfo]:
        t = self._resolve(sc, s.prefix, allow_empty=True)
        infos = await self._admitted(
            sc, lambda: self.store.list(t.namespace, t.path, deleted=s.deleted))
        return [_shown(i, t) for i in infos]

    async def _delete(self, sc: SyscallContext, s: StorageDelete) -> FileVersion:
        t = self._resolve(sc, s.path, write=True)
        fv = await self._admitted(sc, lambda: self.store.delete(
            t.namespace, t.path, if_version=s.if_version, author=sc.name))
        return _shown(fv, t)

    async def _history(self, sc: SyscallContext, s: StorageHistory) -> list[FileVersion]:
        t = self._resolve(sc, s.path)
        versions = await self._admitted(sc, lambda: self.store.history(t.namespace, t.path))
        return [_shown(v, t) for v in versions]

    async def _rollback(self, sc: SyscallContext, s: StorageRollback) -> FileVersion:
        t = self._resolve(sc, s.path, write=True)
        fv = await self._admitted(sc, lambda: self.store.rollback(
            t.namespace, t.path, s.version, if_version=s.if_version, author=sc.name))
        return _shown(fv, t)

    async def _search(self, sc: SyscallContext, s: StorageSearch) -> list[StorageHit]:
        own = paths.own_namespace(sc)
        group = f"{paths.GROUP_PREFIX}{sc.group}" if sc.group else None
        spaces = [ns for ns in (own, group)
                  if ns is not None and paths.may_access(sc, ns, False)]
        hits = await self._admitted(sc, lambda: self.store.search(spaces, s.query, s.k))
        return [h if ns == own else h.model_copy(update={"path": f"{ns}/{h.path}"})
                for ns, h in hits]


def _shown(item: M, target: Target) -> M:
    """A store result with its path as the agent names it (``group:g/...``)."""
    if not target.prefix:
        return item
    return item.model_copy(update={"path": target.prefix + item.path})
