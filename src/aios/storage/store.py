"""The built-in storage store (``sqlite``): versioned files in the kernel's state database.

Layout (schema version 1, tables prefixed ``storage_``)::

    files    (id, ns, path, head, size, sha256, deleted, mtime)   one row per path
    versions (file, version, blob, size, time, author)            blob NULL: a tombstone
    blobs    (sha256, size, chunks)         content-addressed: identical content once;
                                            chunks: its chunks' SHA-256s, concatenated
    chunks   (hash, refs, data)             content-addressed chunks, shared by blobs,
                                            refs counts the blobs' uses of each
    usage    (ns, bytes, files)             live bytes and files per namespace (quotas)
    fts      (path, body)                   FTS5 over the latest text of each live file

Chunks are content-defined at line ends (a cut after a newline whose preceding 64 bytes
hash to 0 mod 16, once a chunk has ``CHUNK_MIN`` bytes; a forced cut at ``CHUNK_MAX``), so
a one-line edit of a large text file stores one new chunk of a few KiB rather than a new
copy: the idea of LBFS's content-defined chunking (Muthitacharoen et al., SOSP 2001),
anchored on newlines instead of a rolling Rabin hash so that Python only looks at line
ends. Binary data without newlines falls back to fixed ``CHUNK_MAX`` pieces.

Atomicity: each operation is one synchronous function run as a single job on the
aiosqlite connection's thread, inside a SAVEPOINT, so no other component's statement
interleaves with it on the shared connection and any error (quota, conflict, disk)
rolls all of it back. A write whose caller is cancelled still completes or fails as a
whole. Reads check the content's SHA-256 and report corruption instead of returning
wrong bytes. Hashing and chunking run on that thread too, never on the event loop.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import sqlite3
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aios.errors import (
    PathInvalid,
    QuotaExceeded,
    StorageConflict,
    StorageError,
    StorageNotFound,
)
from aios.storage.base import StorageStore
from aios.syscalls.storage import FileInfo, FileVersion, StorageHit

if TYPE_CHECKING:
    from aios.config import StorageConfig
    from aios.state import StateDB

__all__ = ["CHUNK_MAX", "CHUNK_MIN", "SCHEMA_VERSION", "SQLiteStore", "split_chunks"]

T = TypeVar("T")

SCHEMA_VERSION = 1
CHUNK_MIN = 2 * 1024
CHUNK_MAX = 64 * 1024
_CUT_MASK = 15  # 1 line end in 16 (past CHUNK_MIN) ends a chunk
_WINDOW = 64
_SAVEPOINT = "aios_storage"

SCHEMA = """
CREATE TABLE IF NOT EXISTS storage_files (
    id      INTEGER PRIMARY KEY,
    ns      TEXT NOT NULL,
    path    TEXT NOT NULL,
    head    INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    sha256  TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    mtime   REAL NOT NULL,
    UNIQUE (ns, path)
);
CREATE TABLE IF NOT EXISTS storage_versions (
    file    INTEGER NOT NULL,
    version INTEGER NOT NULL,
    blob    TEXT,
    size    INTEGER NOT NULL,
    time    REAL NOT NULL,
    author  TEXT NOT NULL,
    PRIMARY KEY (file, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS storage_versions_blob ON storage_versions (blob);
CREATE TABLE IF NOT EXISTS storage_blobs (
    sha256 TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,
    chunks BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS storage_chunks (
    id   INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    refs INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS storage_usage (
    ns    TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    files INTEGER NOT NULL
) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS storage_fts USING fts5(path, body);
"""

# Migrations from version N to N + 1, applied in order at start (none yet).
MIGRATIONS: dict[int, str] = {}


def split_chunks(data: bytes, *, min_size: int = CHUNK_MIN,
                 max_size: int = CHUNK_MAX) -> list[bytes]:
    """Cut ``data`` into content-defined chunks (see the module docstring).

    A cut follows a newline whose preceding ``_WINDOW`` bytes have a CRC-32 that is 0
    modulo 16, once the chunk holds ``min_size`` bytes; at ``max_size`` the chunk is cut
    regardless. Cuts depend only on nearby content, so an edit moves at most the cuts
    around it and the chunks after it are found again.
    """
    chunks: list[bytes] = []
    start, n = 0, len(data)
    while n - start > min_size:
        limit = min(start + max_size, n)
        cut, pos = limit, start + min_size
        while (nl := data.find(b"\n", pos, limit)) >= 0:
            if zlib.crc32(data[max(start, nl - _WINDOW):nl]) & _CUT_MASK == 0:
                cut = nl + 1
                break
            pos = nl + 1
        chunks.append(data[start:cut])
        start = cut
    if start < n or not chunks:
        chunks.append(data[start:])
    return chunks


def _text(data: bytes, limit: int) -> str | None:
    """The content as text if it is indexable: UTF-8, no NUL, at most ``limit`` bytes."""
    if len(data) > limit or b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _fts_query(query: str) -> str | None:
    """Free text as an FTS5 query: every word quoted (no operator injection), any may
    match, BM25 ranks files holding more of them, rarer ones weighing more."""
    words = re.findall(r"\w+", query)
    return " OR ".join(f'"{w}"' for w in words) if words else None


def _when(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class SQLiteStore(StorageStore):
    """Versioned files in the kernel's SQLite state database (see the module docstring).

    ``clock`` gives version times (seconds since the epoch); tests replace it."""

    def __init__(self, config: StorageConfig, db: StateDB, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(config, db)
        self.clock = clock

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, atomic: bool = False) -> T:
        """Run ``fn(conn)`` as one job on the connection's thread (``atomic``: inside a
        savepoint, all or nothing). aiosqlite runs its jobs one at a time, so nothing
        else on the shared connection interleaves with ``fn``."""
        aconn: Any = self.db.conn

        def job() -> T:
            conn: sqlite3.Connection = aconn._conn
            try:
                if not atomic:
                    return fn(conn)
                conn.execute(f"SAVEPOINT {_SAVEPOINT}")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
                    conn.execute(f"RELEASE {_SAVEPOINT}")
                    raise
                conn.execute(f"RELEASE {_SAVEPOINT}")
                return result
            except sqlite3.Error as exc:
                raise StorageError(f"storage database error ({self.db.path}): {exc}") from exc

        # aiosqlite's job queue (Connection._execute) is the only way to run several
        # statements with no other coroutine's statement in between on one connection.
        result: T = await aconn._execute(job)
        return result

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create or migrate the tables; refuse a database of a newer schema or one whose
        storage tables are damaged (``StorageError`` naming the problem)."""
        await self._run(self._start, atomic=True)

    def _start(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_versions "
                     "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_versions WHERE component = 'storage'"
                           ).fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise StorageError(f"the storage tables in {self.db.path} have schema version "
                               f"{version}; this aios knows up to {SCHEMA_VERSION}")
        while 0 < version < SCHEMA_VERSION:
            # statement by statement: executescript would COMMIT the savepoint first
            for stmt in MIGRATIONS[version].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            version += 1
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute("INSERT OR REPLACE INTO schema_versions VALUES ('storage', ?)",
                     (SCHEMA_VERSION,))
        # A table of the right name with the wrong shape (a damaged or foreign database)
        # fails here, at start, rather than at the first write.
        conn.execute("SELECT id, ns, path, head, size, sha256, deleted, mtime "
                     "FROM storage_files LIMIT 0")
        conn.execute("SELECT file, version, blob, size, time, author "
                     "FROM storage_versions LIMIT 0")

    # -- writes ---------------------------------------------------------------------------

    async def write(self, namespace: str, path: str, data: bytes, *,
                    if_version: int | None = None, author: str = "") -> FileVersion:
        def op(conn: sqlite3.Connection) -> FileVersion:
            sha = self._put_blob(conn, data)
            return self._commit_version(conn, namespace, path, sha, len(data), data,
                                        if_version, author)

        return await self._run(op, atomic=True)

    async def delete(self, namespace: str, path: str, *, if_version: int | None = None,
                     author: str = "") -> FileVersion:
        def op(conn: sqlite3.Connection) -> FileVersion:
            row = self._file(conn, namespace, path)
            if row is None or row[4]:
                raise StorageNotFound(f"no file {path!r} to delete"
                                      + (f" (deleted in version {row[1]})" if row else ""))
            return self._commit_version(conn, namespace, path, None, 0, None, if_version,
                                        author)

        return await self._run(op, atomic=True)

    async def rollback(self, namespace: str, path: str, version: int, *,
                       if_version: int | None = None, author: str = "") -> FileVersion:
        def op(conn: sqlite3.Connection) -> FileVersion:
            row = self._file(conn, namespace, path)
            old = None if row is None else conn.execute(
                "SELECT blob, size FROM storage_versions WHERE file = ? AND version = ?",
                (row[0], version)).fetchone()
            if old is None:
                raise StorageNotFound(_missing(path, version, row))
            blob, size = old
            data = None if blob is None else self._assemble(conn, blob)
            return self._commit_version(conn, namespace, path, blob, size, data, if_version,
                                        author)

        return await self._run(op, atomic=True)

    def _put_blob(self, conn: sqlite3.Connection, data: bytes) -> str:
        """Store ``data`` once by content; return its SHA-256 (hex)."""
        sha = hashlib.sha256(data).hexdigest()
        if conn.execute("SELECT 1 FROM storage_blobs WHERE sha256 = ?", (sha,)).fetchone():
            return sha
        digests = []
        for chunk in split_chunks(data):
            digest = hashlib.sha256(chunk).digest()
            conn.execute("INSERT INTO storage_chunks (hash, refs, data) VALUES (?, 1, ?) "
                         "ON CONFLICT (hash) DO UPDATE SET refs = refs + 1", (digest, chunk))
            digests.append(digest)
        conn.execute("INSERT INTO storage_blobs VALUES (?, ?, ?)",
                     (sha, len(data), b"".join(digests)))
        return sha

    def _commit_version(self, conn: sqlite3.Connection, ns: str, path: str, blob: str | None,
                        size: int, data: bytes | None, if_version: int | None,
                        author: str) -> FileVersion:
        """Append the next version of ``path`` (``blob`` None: a tombstone), after the
        ``if_version`` and quota checks; update usage, the search index and retention."""
        now = self.clock()
        row = self._file(conn, ns, path)
        current = row[1] if row else 0
        if if_version is not None and if_version != current:
            raise StorageConflict(f"{path!r} is at version {current}, not {if_version}",
                                  current=current)
        was_live = row is not None and not row[4]
        if blob is not None and not was_live:
            self._check_tree(conn, ns, path)
        self._check_quota(conn, ns, old=row[2] if was_live and row else 0,
                          new=size, files=int(blob is not None) - int(was_live))
        version, deleted = current + 1, blob is None
        if row is None:
            cur = conn.execute(
                "INSERT INTO storage_files (ns, path, head, size, sha256, deleted, mtime) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ns, path, version, size, blob or "", deleted, now))
            assert cur.lastrowid is not None
            file_id = cur.lastrowid
        else:
            file_id = row[0]
            conn.execute("UPDATE storage_files SET head = ?, size = ?, sha256 = ?, "
                         "deleted = ?, mtime = ? WHERE id = ?",
                         (version, size, blob or "", deleted, now, file_id))
        conn.execute("INSERT INTO storage_versions VALUES (?, ?, ?, ?, ?, ?)",
                     (file_id, version, blob, size, now, author))
        conn.execute("DELETE FROM storage_fts WHERE rowid = ?", (file_id,))
        text = None if data is None else _text(data, self.config.index_max_bytes)
        if text is not None:
            conn.execute("INSERT INTO storage_fts (rowid, path, body) VALUES (?, ?, ?)",
                         (file_id, path, text))
        self._retain(conn, file_id, version, now)
        return FileVersion(path=path, version=version, size=size, sha256=blob or "",
                           time=_when(now), deleted=deleted, author=author)

    @staticmethod
    def _check_tree(conn: sqlite3.Connection, ns: str, path: str) -> None:
        """PathInvalid if a live file would be both a file and a directory: a live file
        at a parent directory of ``path`` (``a`` for ``a/b``), or live files under
        ``path/``. A space must stay a tree so that it can be exported to a real one."""
        parents = [path[:i] for i, ch in enumerate(path) if ch == "/"]
        if parents:
            marks = ",".join("?" * len(parents))
            hit = conn.execute(f"SELECT path FROM storage_files WHERE ns = ? AND deleted = 0 "
                               f"AND path IN ({marks}) LIMIT 1", (ns, *parents)).fetchone()
            if hit:
                raise PathInvalid(f"cannot write {path!r}: {hit[0]!r} is a file, so it "
                                  "cannot also be a directory")
        # '0' is the character after '/': the range holds exactly the paths under path/.
        hit = conn.execute("SELECT path FROM storage_files WHERE ns = ? AND deleted = 0 "
                           "AND path >= ? AND path < ? LIMIT 1",
                           (ns, path + "/", path + "0")).fetchone()
        if hit:
            raise PathInvalid(f"cannot write {path!r}: {path!r} is the directory of "
                              f"{hit[0]!r}, so it cannot also be a file")

    def _check_quota(self, conn: sqlite3.Connection, ns: str, *, old: int, new: int,
                     files: int) -> None:
        """Apply a change of live bytes (``old`` -> ``new``) and files (+``files``) to
        ``ns``'s usage; ``QuotaExceeded`` if it grows past a limit (shrinking always
        passes, so a namespace over its quota can still be cleaned up)."""
        row = conn.execute("SELECT bytes, files FROM storage_usage WHERE ns = ?",
                           (ns,)).fetchone()
        used_bytes, used_files = row if row else (0, 0)
        cfg = self.config
        after = used_bytes - old + new
        if cfg.quota_bytes is not None and new > old and after > cfg.quota_bytes:
            raise QuotaExceeded(
                f"space {ns!r} would hold {after} bytes, over its quota of "
                f"{cfg.quota_bytes}", quota="storage.bytes", limit=cfg.quota_bytes,
                used=used_bytes)
        if cfg.quota_files is not None and files > 0 and used_files + files > cfg.quota_files:
            raise QuotaExceeded(
                f"space {ns!r} holds {used_files} files, its quota", quota="storage.files",
                limit=cfg.quota_files, used=used_files)
        conn.execute("INSERT INTO storage_usage VALUES (?, ?, ?) ON CONFLICT (ns) DO UPDATE "
                     "SET bytes = excluded.bytes, files = excluded.files",
                     (ns, after, used_files + files))

    def _retain(self, conn: sqlite3.Connection, file_id: int, head: int, now: float) -> int:
        """Drop the versions of one file that retention no longer keeps, and their blobs
        if nothing else uses them. A version is kept while it is the latest, among the
        ``keep_versions`` newest, or younger than ``keep_days``."""
        n, days = self.config.keep_versions, self.config.keep_days
        if n is None and days is None:
            return 0
        newest_dropped = head - (n if n is not None else 1)
        cutoff = now - days * 86400.0 if days is not None else float("inf")
        doomed = conn.execute(
            "SELECT version, blob FROM storage_versions WHERE file = ? AND version <= ? "
            "AND time < ?", (file_id, newest_dropped, cutoff)).fetchall()
        if not doomed:
            return 0
        conn.executemany("DELETE FROM storage_versions WHERE file = ? AND version = ?",
                         [(file_id, v) for v, _ in doomed])
        self._drop_blobs(conn, {b for _, b in doomed if b is not None})
        return len(doomed)

    def _drop_blobs(self, conn: sqlite3.Connection, blobs: set[str]) -> None:
        """Delete the blobs no version refers to any more, and their unshared chunks."""
        for blob in blobs:
            if conn.execute("SELECT 1 FROM storage_versions WHERE blob = ? LIMIT 1",
                            (blob,)).fetchone():
                continue
            digests = _digests(conn, blob)
            conn.execute("DELETE FROM storage_blobs WHERE sha256 = ?", (blob,))
            conn.executemany("UPDATE storage_chunks SET refs = refs - 1 WHERE hash = ?",
                             [(d,) for d in digests])
            conn.executemany("DELETE FROM storage_chunks WHERE hash = ? AND refs <= 0",
                             [(d,) for d in set(digests)])

    async def prune(self) -> int:
        """Apply retention to every file now (time-based retention needs this: a file
        nobody writes is otherwise never looked at). Returns versions dropped."""
        def op(conn: sqlite3.Connection) -> int:
            now = self.clock()
            files = conn.execute("SELECT id, head FROM storage_files").fetchall()
            return sum(self._retain(conn, f, head, now) for f, head in files)

        return await self._run(op, atomic=True)

    # -- reads ----------------------------------------------------------------------------

    @staticmethod
    def _file(conn: sqlite3.Connection, ns: str, path: str) -> tuple[Any, ...] | None:
        """(id, head, size, sha256, deleted, mtime) of a path, or None."""
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT id, head, size, sha256, deleted, mtime FROM storage_files "
            "WHERE ns = ? AND path = ?", (ns, path)).fetchone()
        return row

    def _assemble(self, conn: sqlite3.Connection, blob: str) -> bytes:
        """A blob's content from its chunks, checked against its SHA-256."""
        digests = _digests(conn, blob)
        found: dict[bytes, bytes] = {}
        unique = list(dict.fromkeys(digests))
        for i in range(0, len(unique), 500):  # under SQLite's bound-parameter limit
            batch = unique[i:i + 500]
            found.update(conn.execute(
                f"SELECT hash, data FROM storage_chunks WHERE hash IN "
                f"({', '.join('?' * len(batch))})", batch).fetchall())
        data = b"".join(found.get(d, b"") for d in digests)
        if len(found) != len(unique) or hashlib.sha256(data).hexdigest() != blob:
            missing = len(unique) - len(found)
            raise StorageError(f"stored content {blob[:12]}... is corrupt ({missing} of "
                               f"{len(unique)} chunks missing, or its SHA-256 does not match)")
        return data

    async def read(self, namespace: str, path: str,
                   version: int | None = None) -> tuple[FileVersion, bytes]:
        def op(conn: sqlite3.Connection) -> tuple[FileVersion, bytes]:
            row = self._file(conn, namespace, path)
            want = version if version is not None else (row[1] if row else 0)
            found = None if row is None else conn.execute(
                "SELECT version, blob, size, time, author FROM storage_versions "
                "WHERE file = ? AND version = ?", (row[0], want)).fetchone()
            if found is None:
                raise StorageNotFound(_missing(path, version, row))
            fv = _version(path, found)
            if fv.deleted:
                raise StorageNotFound(
                    f"{path!r} was deleted in version {fv.version}; rollback(path, "
                    f"{fv.version - 1}) restores the version before")
            return fv, self._assemble(conn, found[1])

        return await self._run(op)

    async def list(self, namespace: str, prefix: str = "", *,
                   deleted: bool = False) -> builtins.list[FileInfo]:
        def op(conn: sqlite3.Connection) -> builtins.list[FileInfo]:
            sql = ("SELECT path, head, size, sha256, mtime, deleted FROM storage_files "
                   "WHERE ns = ?")
            args: builtins.list[Any] = [namespace]
            if prefix:
                # the directory and what is under it: '/' + 1 is '0'
                sql += " AND (path = ? OR (path >= ? AND path < ?))"
                args += [prefix, prefix + "/", prefix + "0"]
            if not deleted:
                sql += " AND deleted = 0"
            rows = conn.execute(sql + " ORDER BY path", args).fetchall()
            return [FileInfo(path=p, version=v, size=s, sha256=h, time=_when(t),
                             deleted=bool(d)) for p, v, s, h, t, d in rows]

        return await self._run(op)

    async def history(self, namespace: str, path: str) -> builtins.list[FileVersion]:
        def op(conn: sqlite3.Connection) -> builtins.list[FileVersion]:
            row = self._file(conn, namespace, path)
            if row is None:
                raise StorageNotFound(f"no file {path!r}")
            rows = conn.execute(
                "SELECT version, blob, size, time, author FROM storage_versions "
                "WHERE file = ? ORDER BY version", (row[0],)).fetchall()
            return [_version(path, r) for r in rows]

        return await self._run(op)

    async def search(self, namespaces: Sequence[str], query: str,
                     k: int = 5) -> builtins.list[tuple[str, StorageHit]]:
        match = _fts_query(query)
        if match is None or not namespaces:
            return []

        def op(conn: sqlite3.Connection) -> builtins.list[tuple[str, StorageHit]]:
            marks = ", ".join("?" * len(namespaces))
            rows = conn.execute(
                "SELECT f.ns, f.path, f.head, bm25(storage_fts), "
                "snippet(storage_fts, -1, '[', ']', '...', 16) "
                "FROM storage_fts JOIN storage_files f ON f.id = storage_fts.rowid "
                f"WHERE storage_fts MATCH ? AND f.ns IN ({marks}) "
                "ORDER BY bm25(storage_fts) LIMIT ?",
                (match, *namespaces, k)).fetchall()
            return [(ns, StorageHit(path=p, version=v, score=-s, snippet=snip))
                    for ns, p, v, s, snip in rows]

        return await self._run(op)

    async def usage(self, namespace: str) -> tuple[int, int]:
        """(live bytes, live files) of a namespace, as the quotas count them."""
        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute("SELECT bytes, files FROM storage_usage WHERE ns = ?",
                               (namespace,)).fetchone()
            return (row[0], row[1]) if row else (0, 0)

        return await self._run(op)


def _digests(conn: sqlite3.Connection, blob: str) -> list[bytes]:
    row = conn.execute("SELECT chunks FROM storage_blobs WHERE sha256 = ?", (blob,)).fetchone()
    if row is None:
        raise StorageError(f"stored content {blob[:12]}... is missing (a damaged database)")
    packed: bytes = row[0]
    return [packed[i:i + 32] for i in range(0, len(packed), 32)]


def _version(path: str, row: tuple[Any, ...]) -> FileVersion:
    version, blob, size, t, author = row
    return FileVersion(path=path, version=version, size=size, sha256=blob or "",
                       time=_when(t), deleted=blob is None, author=author)


def _missing(path: str, version: int | None, row: tuple[Any, ...] | None) -> str:
    if row is None:
        return f"no file {path!r}"
    if version is None:
        return f"{path!r} has no versions left"
    return (f"{path!r} has no version {version} (current: {row[1]}; pruned or never "
            "written)")
