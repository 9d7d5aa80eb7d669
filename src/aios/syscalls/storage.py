"""Storage syscalls: a versioned, sandboxed file space per agent; and their results.

Paths are relative to the caller's own space; ``group:<g>/...`` names its group's shared
space. They are normalised and checked by the storage handler (:mod:`aios.storage.paths`),
not here: a syscall carries exactly what the agent asked for, so the journal and the
audit log show it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FileInfo",
    "FileVersion",
    "StorageDelete",
    "StorageHistory",
    "StorageHit",
    "StorageList",
    "StorageRead",
    "StorageRollback",
    "StorageSearch",
    "StorageWrite",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64",
                              val_json_bytes="base64")


class _StorageSyscall(_Frozen):
    @property
    def resource(self) -> str:
        # The family's one resource; the handler queues it as ``storage:<store>``.
        return "storage"


class StorageWrite(_StorageSyscall):
    """Write ``data`` as the new version of ``path``.

    ``if_version``: the version the writer last saw as current (0: the path was never
    written); a stale one raises ``StorageConflict`` and writes nothing.
    """

    kind: Literal["storage.write"] = "storage.write"
    path: str
    data: bytes
    if_version: int | None = Field(default=None, ge=0)


class StorageRead(_StorageSyscall):
    """Read the latest version of ``path`` (or ``version``)."""

    kind: Literal["storage.read"] = "storage.read"
    path: str
    version: int | None = Field(default=None, ge=1)


class StorageList(_StorageSyscall):
    """List the files under ``prefix`` (a directory: ``"reports"`` lists
    ``reports/...``; ``""`` lists the whole space). ``deleted`` includes deleted files
    (restorable with ``rollback``)."""

    kind: Literal["storage.list"] = "storage.list"
    prefix: str = ""
    deleted: bool = False


class StorageDelete(_StorageSyscall):
    """Delete ``path``: a new version that is a tombstone, so earlier ones stay
    restorable with ``rollback``."""

    kind: Literal["storage.delete"] = "storage.delete"
    path: str
    if_version: int | None = Field(default=None, ge=0)


class StorageHistory(_StorageSyscall):
    """Every retained version of ``path``, oldest first (tombstones included)."""

    kind: Literal["storage.history"] = "storage.history"
    path: str


class StorageRollback(_StorageSyscall):
    """Make ``version`` of ``path`` current again, as a new version equal to it."""

    kind: Literal["storage.rollback"] = "storage.rollback"
    path: str
    version: int = Field(ge=1)
    if_version: int | None = Field(default=None, ge=0)


class StorageSearch(_StorageSyscall):
    """The ``k`` text files of the caller's space and its group's space that best match
    ``query`` by content (SQLite FTS5, BM25 ranking)."""

    kind: Literal["storage.search"] = "storage.search"
    query: str = Field(min_length=1, max_length=1000)
    k: int = Field(default=5, ge=1, le=100)


class FileVersion(_Frozen):
    """One version of a file. ``size`` in bytes; ``sha256`` of the content (hex; empty
    for a tombstone); ``time`` when it was written (UTC); ``deleted``: a tombstone."""

    path: str
    version: int
    size: int
    sha256: str
    time: datetime
    deleted: bool = False
    author: str = ""
    """The agent (by name) that wrote it."""


class FileInfo(_Frozen):
    """A file as ``list`` shows it: its current version."""

    path: str
    version: int
    size: int
    sha256: str
    time: datetime
    deleted: bool = False


class StorageHit(_Frozen):
    """A search result: the file, its current version, the BM25 ``score`` (higher is
    better) and a ``snippet`` of the matching text with matches in ``[...]``."""

    path: str
    version: int
    score: float
    snippet: str
