"""The storage-store interface (entry-point group ``aios.storage``).

A store keeps versioned files per namespace. It receives canonical paths only (the
handler normalises and access-checks them with :mod:`aios.storage.paths`), and owns
everything about persistence: versions, tombstones, retention, quotas, search. The
kernel's built-in store is :class:`aios.storage.store.SQLiteStore` (``sqlite``).

Contract, checked by ``tests/test_storage.py`` for the built-in store:

* every ``write``/``delete``/``rollback`` is atomic: it happens entirely or not at all
  (on any error, cancellation included, nothing of it is visible);
* versions of a path are numbered 1, 2, 3... and concurrent writers never lose one;
* ``if_version`` (the version the caller saw as current, 0 for "never written")
  raises ``StorageConflict(current=...)`` when stale, writing nothing;
* a delete is a tombstone version; earlier versions stay readable and restorable;
* quotas (bytes and files of live files per namespace) raise ``QuotaExceeded``.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aios.config import StorageConfig
    from aios.state import StateDB
    from aios.syscalls.storage import FileInfo, FileVersion, StorageHit

__all__ = ["StorageStore"]


class StorageStore(ABC):
    """Versioned files per namespace. Constructed as ``cls(config, db)``: the storage
    config section and the kernel's state database (a store keeping its data elsewhere
    may ignore ``db``). ``author`` is the writing agent's name, kept with each version."""

    def __init__(self, config: StorageConfig, db: StateDB) -> None:
        self.config = config
        self.db = db

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Create tables, migrate, check integrity. Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired. Default: nothing."""

    @abstractmethod
    async def write(self, namespace: str, path: str, data: bytes, *,
                    if_version: int | None = None, author: str = "") -> FileVersion:
        """Store ``data`` as the next version of ``path``."""

    @abstractmethod
    async def read(self, namespace: str, path: str,
                   version: int | None = None) -> tuple[FileVersion, bytes]:
        """A version (the latest by default) and its content; ``StorageNotFound`` for a
        missing path or version, or a deleted one."""

    @abstractmethod
    async def list(self, namespace: str, prefix: str = "", *,
                   deleted: bool = False) -> builtins.list[FileInfo]:
        """Files under the directory ``prefix`` (``""``: all), sorted by path."""

    @abstractmethod
    async def delete(self, namespace: str, path: str, *, if_version: int | None = None,
                     author: str = "") -> FileVersion:
        """Add a tombstone version; ``StorageNotFound`` if the path is not live."""

    @abstractmethod
    async def history(self, namespace: str, path: str) -> builtins.list[FileVersion]:
        """Retained versions, oldest first; ``StorageNotFound`` if there are none."""

    @abstractmethod
    async def rollback(self, namespace: str, path: str, version: int, *,
                       if_version: int | None = None, author: str = "") -> FileVersion:
        """A new version equal to ``version`` (a tombstone's rollback deletes)."""

    @abstractmethod
    async def search(self, namespaces: Sequence[str], query: str,
                     k: int = 5) -> builtins.list[tuple[str, StorageHit]]:
        """The ``k`` best text files by content in ``namespaces``, each with its
        namespace, best first."""

    async def prune(self) -> int:
        """Apply retention now; return how many versions were dropped. Default: 0."""
        return 0
