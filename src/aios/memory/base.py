"""The memory-store interface (entry-point group ``aios.memory``): the persistent tier.

The memory manager (:mod:`aios.memory.handler`) keeps each namespace's hot memories in
its RAM tier and hands a store whole items to persist, ids to delete, and queries. A
store never sees an agent: namespaces are already resolved and access already checked.
mem0-, Letta- or Qdrant-backed stores implement this class in their own distribution
and register it under ``aios.memory``; ``memory.store`` in the config picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aios.syscalls.memory import MemoryHit, MemoryItem

if TYPE_CHECKING:
    from aios.abc import KernelServices

__all__ = ["MemoryStore"]


class MemoryStore(ABC):
    """A persistent memory tier, constructed as ``cls(services)``.

    Every method may raise :class:`~aios.errors.MemoryStoreError` (naming the problem);
    a failed :meth:`write` must leave the store as it was (one transaction).
    """

    def __init__(self, services: KernelServices) -> None:
        self.services = services

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Create or check tables, open clients. Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired. Default: nothing."""

    @abstractmethod
    async def write(self, items: Sequence[MemoryItem], deleted: Sequence[str] = ()) -> None:
        """Insert or replace ``items`` (by id) and delete the ids in ``deleted``,
        atomically."""

    @abstractmethod
    async def load(self, id: str) -> MemoryItem | None:
        """The item with this id in any namespace, or None."""

    @abstractmethod
    async def search(self, namespace: str, query: str, k: int,
                     filter: Mapping[str, Any] | None = None) -> list[MemoryHit]:
        """The best ``k`` items of ``namespace`` for ``query``, best first, ties broken
        deterministically. ``filter``: metadata key -> value equality (already checked
        to hold only str, number, bool or None values); a missing key does not match.
        Query syntax of the backing engine in ``query`` must never raise."""

    @abstractmethod
    async def usage(self, namespace: str) -> int:
        """Bytes stored in ``namespace``: UTF-8 text plus compact JSON metadata."""
