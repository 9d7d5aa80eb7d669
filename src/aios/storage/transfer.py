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

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from aios.config import KernelConfig
from aios.errors import (
    ConfigError,
    PathInvalid,
    QuotaExceeded,
    StorageError,
    StorageNotFound,
)
from aios.plugins import PluginRegistry
from aios.state import StateDB
from aios.storage.base import StorageStore
from aios.storage.paths import normalize

__all__ = ["Transfer", "add_storage_arguments", "export_space", "import_directory",
           "run_storage_command"]


@dataclass(frozen=True, slots=True)
class Transfer:
    """What an export or import did: ``files`` written, ``bytes`` in all."""

    files: int
    bytes: int


async def export_space(store: StorageStore, namespace: str, directory: str | os.PathLike[str],
                       ) -> Transfer:
    """Write the live files of ``namespace`` under ``directory`` (created if missing;
    existing files of the same names are overwritten). ``StorageNotFound`` if no file
    was ever written in ``namespace`` (most likely a misspelt name)."""
    root = await anyio.Path(directory).resolve()
    infos = await store.list(namespace)
    if not infos and not await store.list(namespace, deleted=True):
        raise StorageNotFound(f"no storage space {namespace!r}: no file was ever written "
                              "there (a space is an agent's name, or group:<g>)")
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
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise PathInvalid(f"{os.fsencode(rel)!r}: the file name is not valid UTF-8 "
                                  "(rename it to import it)") from None
            if p.is_symlink() or not p.is_file():
                raise PathInvalid(f"{rel!r} is not a regular file (symlinks and devices "
                                  "cannot be imported)")
            files.append((normalize(rel, max_bytes=max_path_bytes), p))
        for dname in dirnames:
            if (Path(dirpath) / dname).is_symlink():
                rel = (Path(dirpath) / dname).relative_to(root).as_posix()
                raise PathInvalid(f"{rel!r} is a symlink (symlinks cannot be imported)")
    return files


# -- the ``aios storage`` command ----------------------------------------------------------


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """``aios storage export NAMESPACE DIR`` and ``aios storage import DIR NAMESPACE``."""
    sub = parser.add_subparsers(dest="storage_command", required=True)
    exp = sub.add_parser("export", help="write the latest version of each file of a space "
                         "to a directory")
    exp.add_argument("namespace", help="an agent's name, or group:<g>")
    exp.add_argument("directory")
    imp = sub.add_parser("import", help="write every file of a directory into a space, "
                         "each as a new version")
    imp.add_argument("directory")
    imp.add_argument("namespace", help="an agent's name, or group:<g>")
    for p in (exp, imp):
        p.add_argument("--config", help="TOML config file (default: $AIOS_CONFIG)")
        p.add_argument("--state", help="state database (default: state_path of the config)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")


def run_storage_command(args: argparse.Namespace) -> int:
    """Open the state database named by ``--state`` or the config, run the transfer, and
    say what it did. A kernel may run on the same database meanwhile (WAL)."""
    path = args.config or os.environ.get("AIOS_CONFIG")
    cfg = KernelConfig.from_toml(path) if path else KernelConfig()
    state = args.state or cfg.state_path
    if not state:
        raise ConfigError("aios storage needs a state database: --state PATH, or "
                          "state_path in the config", key="state_path")
    if args.storage_command == "export" and not Path(state).is_file():
        raise ConfigError(f"no state database at {state}", key="state_path")
    # Checked before the state database is opened, which would create it (and its lock).
    if args.storage_command == "import" and not Path(args.directory).is_dir():
        raise StorageError(f"not a directory: {args.directory}")
    namespace = args.namespace
    if not namespace or "/" in namespace:
        raise ConfigError(f"a namespace is an agent's name or group:<g>, got {namespace!r}")
    done = anyio.run(_transfer, cfg, state, args)
    verb, where = (("exported", f"from {namespace!r} to {args.directory}")
                   if args.storage_command == "export"
                   else ("imported", f"from {args.directory} into {namespace!r}"))
    print(f"{verb} {done.files} files ({done.bytes} bytes) {where}")
    return 0


async def _transfer(cfg: KernelConfig, state: str, args: argparse.Namespace) -> Transfer:
    from aios.storage.handler import load_store

    # Export only reads: it may run beside a kernel holding the file. Import writes: it
    # must own the file like a kernel does.
    db = StateDB(state, exclusive=args.storage_command == "import")
    await db.open()
    try:
        store = load_store(cfg.storage, PluginRegistry(autoload=cfg.autoload_plugins), db)
        await store.start()
        try:
            if args.storage_command == "export":
                return await export_space(store, args.namespace, args.directory)
            return await import_directory(store, args.directory, args.namespace,
                                          max_path_bytes=cfg.storage.max_path_bytes)
        finally:
            await store.close()
    finally:
        await db.close()
