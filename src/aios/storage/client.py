"""``ctx.storage``: the agent's versioned file space, through the kernel's door.

Each verb builds one ``storage.*`` syscall and hands it to the door; nothing here touches
a store. Paths are relative to the agent's own space (keyed by its name); ``group:<g>/``
paths reach its group's shared space. Errors: ``PathInvalid``, ``PermissionDenied``,
``StorageNotFound``, ``StorageConflict``, ``QuotaExceeded`` (all ``aios.AIOSError``).
"""

from __future__ import annotations

import builtins
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from aios.errors import InvalidSyscall, StorageError
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

__all__ = ["StorageClient"]


class _Door(Protocol):
    async def call(self, proc: Any, syscall: Any) -> Any: ...


class StorageClient:
    """``ctx.storage``: write, read, list, delete, history, rollback, search."""

    __slots__ = ("_door", "_proc")

    def __init__(self, door: _Door, proc: Any) -> None:
        self._door = door
        self._proc = proc

    async def _call(self, model: type[BaseModel], **fields: Any) -> Any:
        try:
            syscall = model(**fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "<syscall>"
            raise InvalidSyscall(f"{model.__name__}.{field}: {err['msg']}") from None
        return await self._door.call(self._proc, syscall)

    async def write(self, path: str, data: str | bytes, *,
                    if_version: int | None = None) -> FileVersion:
        """Write ``data`` (text is stored as UTF-8) as a new version of ``path``.
        ``if_version``: fail with ``StorageConflict`` unless the current version is this
        one (0: the path was never written)."""
        raw = _utf8(data) if isinstance(data, str) else data
        result: FileVersion = await self._call(StorageWrite, path=path, data=raw,
                                               if_version=if_version)
        return result

    async def read(self, path: str, *, version: int | None = None) -> bytes:
        """The content of ``path`` (latest version, or ``version``)."""
        result: bytes = await self._call(StorageRead, path=path, version=version)
        return result

    async def read_text(self, path: str, *, version: int | None = None) -> str:
        """:meth:`read`, decoded as UTF-8 (``StorageError`` naming the path if the file
        is not UTF-8 text: read it with :meth:`read`)."""
        data = await self.read(path, version=version)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(f"{path!r} is not UTF-8 text (byte {exc.start}: "
                               f"{data[exc.start:exc.start + 1]!r}); read it as bytes with "
                               "ctx.storage.read") from None

    async def list(self, prefix: str = "", *, deleted: bool = False) -> builtins.list[FileInfo]:
        """Files under the directory ``prefix``, sorted by path (``deleted``: include
        deleted ones)."""
        result: builtins.list[FileInfo] = await self._call(StorageList, prefix=prefix,
                                                  deleted=deleted)
        return result

    async def delete(self, path: str, *, if_version: int | None = None) -> FileVersion:
        """Delete ``path``; its versions stay restorable with :meth:`rollback`."""
        result: FileVersion = await self._call(StorageDelete, path=path,
                                               if_version=if_version)
        return result

    async def history(self, path: str) -> builtins.list[FileVersion]:
        """Every retained version of ``path``, oldest first."""
        result: builtins.list[FileVersion] = await self._call(StorageHistory, path=path)
        return result

    async def rollback(self, path: str, version: int, *,
                       if_version: int | None = None) -> FileVersion:
        """Make ``version`` current again: a new version equal to it."""
        result: FileVersion = await self._call(StorageRollback, path=path, version=version,
                                               if_version=if_version)
        return result

    async def search(self, query: str, *, k: int = 5) -> builtins.list[StorageHit]:
        """The ``k`` text files (own and group space) that best match ``query``."""
        result: builtins.list[StorageHit] = await self._call(StorageSearch, query=query, k=k)
        return result


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; InvalidSyscall naming a lone surrogate, which UTF-8 cannot hold."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidSyscall(
            f"StorageWrite.data: the text holds a lone surrogate (U+{ord(text[exc.start]):04X})"
            f" at index {exc.start}, which UTF-8 cannot store; pass bytes for binary data"
        ) from None
