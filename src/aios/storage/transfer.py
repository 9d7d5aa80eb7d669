"""Export a storage space to a real directory, and import a directory into one.

Used by ``aios storage export NAMESPACE DIR`` and ``aios storage import DIR NAMESPACE``.
Both go through a :class:`~aios.storage.base.StorageStore`'s public methods, so they
work for any store. Export writes the latest version of each live file; import writes
each regular file as a new version (author ``"import"``). Every name is checked before
anything is written: an export never writes outside ``DIR`` and an import refuses a name
the sandbox refuses (``PathInvalid``) or a symlink (the store has none). Each file is its
own transaction: an import that fails midway (a quota) keeps the files before it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from aios.errors import PathInvalid, QuotaExceeded, StorageError
from aios.storage.base import StorageStore
from aios.storage.paths import normalize

__all__ = ["Transfer", "export_space", "import_directory"]


@dataclass(frozen=True, slots=True)
class Transfer:
    """What an export or import did: ``files`` written, ``bytes`` in all."""

    files: int
    bytes: int


async def export_space(store: StorageStore, namespace: str, directory: str | os.PathLike[str],
                       ) -> Transfer:
    """Write the live files of ``namespace`` under ``directory`` (created if missing;
    existing files of the same names are overwritten)."""
    root = await anyio.Path(directory).resolve()
    infos = await store.list(namespace)
    names = {i.path for i in infos}
    for name in names:
        parent = name.rpartition("/")[0]
        while parent:
            if parent in names:
                raise StorageError(f"cannot export {namespace!r}: {parent!r} is both a file "
                                   f"and the directory of {name!r}")
            parent = parent.rpartition("/")[0]
    total = 0
    for info in infos:
        target = await (root / info.path).resolve()
        if not target.is_relative_to(root):  # paths are normalised; this is a backstop
            raise PathInvalid(f"{info.path!r} would leave {root}")
        _, data = await store.read(namespace, info.path)
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_bytes(data)
        total += len(data)
    return Transfer(len(infos), total)


async def import_directory(store: StorageStore, directory: str | os.PathLike[str],
                           namespace: str, *, max_path_bytes: int = 1024) -> Transfer:
    """Write every regular file under ``directory`` into ``namespace`` as a new version
    of the same relative path."""
    files = await anyio.to_thread.run_sync(_scan, Path(directory), max_path_bytes)
    total = 0
    for name, p in files:
        data = await anyio.Path(p).read_bytes()
        if len(data) > store.config.max_file_bytes:
            raise QuotaExceeded(f"{name!r} is {len(data)} bytes, over the largest file "
                                f"allowed ({store.config.max_file_bytes} bytes)",
                                quota="storage.file_bytes", limit=store.config.max_file_bytes,
                                used=len(data))
        await store.write(namespace, name, data, author="import")
        total += len(data)
    return Transfer(len(files), total)


def _scan(root: Path, max_path_bytes: int) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (normalised store path, file), sorted; a
    symlink, a device or a name the sandbox refuses stops the import before it starts."""
    if not root.is_dir():
        raise StorageError(f"not a directory: {root}")
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            p = Path(dirpath) / fname
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() or not p.is_file():
                raise PathInvalid(f"{rel!r} is not a regular file (symlinks and devices "
                                  "cannot be imported)")
            files.append((normalize(rel, max_bytes=max_path_bytes), p))
        for dname in dirnames:
            if (Path(dirpath) / dname).is_symlink():
                rel = (Path(dirpath) / dname).relative_to(root).as_posix()
                raise PathInvalid(f"{rel!r} is a symlink (symlinks cannot be imported)")
    return files
