"""The memory manager: the ``memory.*`` syscalls behind the kernel's door.

Two tiers, as the AIOS paper's memory manager: a RAM tier per namespace (an agent's own
``agent:<name>``, and each ``group:<g>``), at most ``memory.ram_bytes_per_agent`` bytes,
evicting with LRU-K (:mod:`aios.memory.ram`) into a persistent store (the SQLite store
by default, :mod:`aios.memory.store`).

The RAM tier is write-back: an ``add`` or ``update`` lands in RAM, marked dirty, and
reaches the store when it is evicted (its write completes before it leaves RAM: nothing
is lost), before any search of its namespace (so search sees both tiers, ranked by one
BM25 over one index), or when the kernel stops (:meth:`MemoryHandler.close`). A crash of
the process loses the dirty entries; ``memory.write_back = false`` writes every change
through at once instead. ``get`` finds a memory in RAM or loads it from the store and
caches it.

Every memory syscall is scheduled on the resource ``memory:<store>`` (window
``memory.window``) and runs under one lock, so the tiers never see two operations
interleave: the store has one writer connection anyway, and which syscall goes next is
the kernel's policy's choice, not arrival order. A failed operation changes nothing.

Access: :func:`may_access` is the one rule (own namespace and own group's) until the
access manager replaces it; a memory outside reach is reported as not found, so ids of
other agents' memories cannot be probed.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from aios.abc import KernelServices, SyscallContext, SyscallHandler
from aios.access import grants
from aios.config import MemoryConfig
from aios.errors import (
    ConfigError,
    InvalidSyscall,
    MemoryNotFound,
    MemoryStoreError,
    PermissionDenied,
    PluginError,
    QuotaExceeded,
)
from aios.memory.base import MemoryStore
from aios.memory.ram import LRUK, Cached, RamTier
from aios.memory.store import SQLiteMemoryStore, check_utf8, metadata_json
from aios.scheduler.queue import ResourceQueue
from aios.syscalls.memory import (
    MemoryAdd,
    MemoryDelete,
    MemoryGet,
    MemoryHit,
    MemoryItem,
    MemorySearch,
    MemoryUpdate,
)

__all__ = ["MemoryHandler", "may_access", "own_namespace"]

FLUSH_BATCH = 512
"""Most dirty memories an eviction writes along with its victims, in one transaction."""


def own_namespace(sc: SyscallContext) -> str:
    """The caller's own namespace, keyed by its name so it outlives the process."""
    return f"agent:{sc.name}"


def may_access(sc: SyscallContext, namespace: str, write: bool) -> bool:
    """Whether the caller may read (or ``write``) ``namespace``: its own, its group's
    (as its group allows) and what its capabilities grant (:mod:`aios.access.grants`)."""
    return grants.may_memory(sc, namespace, write)


class MemoryHandler(SyscallHandler):
    """``memory.add``, ``memory.search``, ``memory.get``, ``memory.update``,
    ``memory.delete``."""

    family = "memory"
    kinds = ("memory.add", "memory.search", "memory.get", "memory.update", "memory.delete")

    def __init__(self, services: KernelServices) -> None:
        super().__init__(services)
        self.config: MemoryConfig = services.config.memory
        self.store: MemoryStore | None = None
        self._queue: ResourceQueue | None = None
        self._tiers: dict[str, RamTier] = {}
        self._where: dict[str, RamTier] = {}   # id -> the tier caching it
        self._used: dict[str, int] = {}       # namespace -> bytes (store + dirty RAM)
        self._lock = anyio.Lock()
        self._ops: dict[str, Callable[[SyscallContext, Any], Awaitable[Any]]] = {
            "memory.add": self._add, "memory.search": self._search, "memory.get": self._get,
            "memory.update": self._update, "memory.delete": self._delete,
        }
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        name = self.config.store
        try:
            cls = self.services.registry.get("aios.memory", name)
        except ConfigError:
            if name != "sqlite":
                raise
            cls = SQLiteMemoryStore  # the built-in store, also with autoloading off
        if not (isinstance(cls, type) and issubclass(cls, MemoryStore)):
            raise PluginError(name, f"a memory store must subclass aios.abc.MemoryStore, "
                              f"got {cls!r}")
        store = cls(self.services)
        await store.start()
        self.store = store
        self._queue = self.services.resource(f"memory:{name}", self.config.window)

    async def close(self) -> None:
        """Write every dirty memory to the store, then close it."""
        if self.store is None:
            return
        with anyio.CancelScope(shield=True):
            async with self._lock:
                for tier in self._tiers.values():
                    await self._flush(tier)
            await self.store.close()

    # -- the door ---------------------------------------------------------------------

    async def call(self, sc: SyscallContext, syscall: Any) -> Any:
        op = self._ops.get(syscall.kind)
        if op is None or self._queue is None:
            raise InvalidSyscall(f"memory handler cannot serve {syscall.kind!r}",
                                 syscall=syscall)
        async with sc.admitted(self._queue) as slot:
            t0 = time.perf_counter()
            try:
                async with self._lock:
                    result = await op(sc, syscall)
            finally:
                slot.service = time.perf_counter() - t0
        sc.account(memory_calls=1)
        return result

    def guard_resource(self, syscall: Any) -> str | None:
        return f"memory:{self.config.store}"

    # -- the operations (each under the lock) -----------------------------------------

    async def _add(self, sc: SyscallContext, call: MemoryAdd) -> str:
        ns = self._namespace(sc, call.namespace, write=True)
        text = self._check_text(call.text)
        meta = dict(call.metadata or {})
        size = _size(text, meta)
        await self._reserve(ns, size)
        now = time.time()
        item = MemoryItem(id=secrets.token_hex(8), namespace=ns, text=text, metadata=meta,
                          created=now, updated=now)
        await self._cache(Cached(item, size, dirty=True, persisted=False))
        self._used[ns] += size
        return item.id

    async def _get(self, sc: SyscallContext, call: MemoryGet) -> MemoryItem:
        cached = await self._find(sc, call.id, write=False)
        if call.id not in self._where:
            with contextlib.suppress(MemoryStoreError):
                await self._cache(cached)  # no room could be made: serve it uncached
        return cached.item

    async def _update(self, sc: SyscallContext, call: MemoryUpdate) -> MemoryItem:
        cached = await self._find(sc, call.id, write=True)
        old = cached.item
        text = old.text if call.text is None else self._check_text(call.text)
        meta = old.metadata if call.metadata is None else dict(call.metadata)
        size = _size(text, meta)
        ns = old.namespace
        await self._reserve(ns, size - cached.size)
        item = old.model_copy(update={"text": text, "metadata": meta, "updated": time.time()})
        await self._cache(Cached(item, size, dirty=True, persisted=cached.persisted))
        self._used[ns] += size - cached.size
        return item

    async def _delete(self, sc: SyscallContext, call: MemoryDelete) -> None:
        cached = await self._find(sc, call.id, write=True)
        assert self.store is not None
        if cached.persisted:
            await self.store.write((), deleted=(call.id,))
        tier = self._where.pop(call.id, None)
        if tier is not None:
            tier.remove(call.id)
        ns = cached.item.namespace
        if ns in self._used:
            self._used[ns] -= cached.size

    async def _search(self, sc: SyscallContext, call: MemorySearch) -> list[MemoryHit]:
        ns = self._namespace(sc, call.namespace, write=False)
        if not call.query.strip():
            raise MemoryStoreError("memory.search: the query is empty", syscall=call)
        check_utf8(call.query, "memory.search: the query")
        if call.filter is not None:
            metadata_json(call.filter, "filter")  # JSON values only; the store checks their types
        tier = self._tiers.get(ns)
        if tier is not None:
            await self._flush(tier)  # search sees the RAM tier too
        assert self.store is not None
        hits = await self.store.search(ns, call.query, call.k, call.filter)
        if tier is not None:
            for hit in hits:
                tier.get(hit.id)  # a hit is a reference (cached ones only)
        return hits

    # -- helpers ----------------------------------------------------------------------

    def _namespace(self, sc: SyscallContext, namespace: str | None, *, write: bool) -> str:
        ns = own_namespace(sc) if namespace is None else namespace
        if not may_access(sc, ns, write):
            raise PermissionDenied(
                f"agent {sc.name!r} may not {'write' if write else 'read'} memory namespace "
                f"{ns!r} (its own is {own_namespace(sc)!r}, its group's 'group:{sc.group}')")
        return ns

    def _check_text(self, text: str) -> str:
        if not text.strip():
            raise MemoryStoreError("memory text is empty")
        check_utf8(text, "memory text")
        n = len(text.encode("utf-8"))
        if n > self.config.max_text_bytes:
            raise MemoryStoreError(f"memory text is {n} bytes, more than memory.max_text_bytes "
                                   f"({self.config.max_text_bytes})")
        return text

    async def _reserve(self, ns: str, extra: int) -> None:
        """QuotaExceeded unless ``extra`` more bytes fit the namespace's cap."""
        if ns not in self._used:
            assert self.store is not None
            self._used[ns] = await self.store.usage(ns)
        used = self._used[ns]
        cap = self.config.max_bytes_per_namespace
        if extra > 0 and used + extra > cap:
            raise QuotaExceeded(
                f"memory namespace {ns!r} would hold {used + extra} bytes, more than "
                f"memory.max_bytes_per_namespace ({cap}); delete memories to make room",
                quota="memory.namespace_bytes", limit=cap, used=used)

    def _tier(self, ns: str) -> RamTier:
        tier = self._tiers.get(ns)
        if tier is None:
            cfg = self.config
            tier = self._tiers[ns] = RamTier(cfg.ram_bytes_per_agent, LRUK(
                cfg.lru_k, correlated_period=cfg.lru_k_correlated_period,
                retained_period=cfg.lru_k_retained_period))
        return tier

    async def _find(self, sc: SyscallContext, id: str, *, write: bool) -> Cached:
        """The memory ``id`` from RAM or the store, if the caller may reach it."""
        tier = self._where.get(id)
        cached = tier.get(id) if tier is not None else None
        if cached is not None:
            self.hits += 1
        else:
            self.misses += 1
            assert self.store is not None
            item = await self.store.load(id)
            if item is not None:
                cached = Cached(item, _size(item.text, item.metadata), dirty=False,
                                persisted=True)
        if cached is None or not may_access(sc, cached.item.namespace, write):
            raise MemoryNotFound(f"no memory with id {id!r} in reach of agent {sc.name!r}")
        return cached

    async def _cache(self, c: Cached) -> None:
        """Put ``c`` in its namespace's RAM tier, first evicting (and writing) what must go
        to make room. Write-through mode, or an item larger than the whole tier, goes to
        the store at once. On any failure nothing has changed."""
        assert self.store is not None
        tier = self._tier(c.item.namespace)
        if c.dirty and (not self.config.write_back or not tier.fits(c.cost)):
            await self.store.write((c.item,))
            c.dirty, c.persisted = False, True
        if not tier.fits(c.cost):
            old = self._where.pop(c.item.id, None)
            if old is not None:
                old.remove(c.item.id)
            return
        victims = tier.victims(c.cost, spare=c.item.id)
        if any(v.dirty for v in victims):
            # One transaction for the victims and the tier's other dirty entries (they
            # stay cached, now clean): later evictions are then free, and a write costs
            # one commit per batch instead of one per memory.
            others = [d for d in tier.dirty() if d.item.id != c.item.id][:FLUSH_BATCH]
            batch = {d.item.id: d for d in [*victims, *others] if d.dirty}
            try:
                await self.store.write([d.item for d in batch.values()])
            except BaseException:
                tier.keep(victims)
                raise
            for d in batch.values():
                d.dirty, d.persisted = False, True
        tier.drop(victims)
        for v in victims:
            self._where.pop(v.item.id, None)
            v.dirty, v.persisted = False, True
        self.evictions += len(victims)
        tier.put(c)
        self._where[c.item.id] = tier

    async def _flush(self, tier: RamTier) -> None:
        dirty = list(tier.dirty())
        if not dirty:
            return
        assert self.store is not None
        await self.store.write([c.item for c in dirty])
        for c in dirty:
            c.dirty, c.persisted = False, True

    def stats(self) -> dict[str, Any]:
        """RAM-tier counters: hits and misses of ``get``/``update``/``delete`` lookups,
        evictions, cached entries and bytes."""
        return {
            "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
            "cached": sum(len(t) for t in self._tiers.values()),
            "cached_bytes": sum(t.bytes for t in self._tiers.values()),
            "dirty": sum(1 for t in self._tiers.values() for _ in t.dirty()),
        }


def _size(text: str, metadata: dict[str, Any]) -> int:
    """Bytes a memory counts against its namespace's cap: UTF-8 text + compact JSON
    metadata (MemoryStoreError if the metadata is not JSON)."""
    meta = metadata_json(metadata)
    return len(text.encode("utf-8")) + (len(meta.encode("utf-8")) if meta != "{}" else 0)

