"""The kernel's state database: one SQLite file (or memory), one writer connection, one owner.

WAL mode and a busy timeout so readers in other processes (``aios ps``) never see
"database is locked"; every write goes through the single aiosqlite connection, which
serializes them. Tables are created here; the stores that use them (checkpoints, later
memory, storage, the audit log) own their SQL. Never store a whole conversation per step:
rows hold deltas and content hashes.

Opening is careful, because ``state_path`` is user input:

* The file is checked before SQLite touches it: a directory, a special file, a read-only
  file, a file that does not start with SQLite's magic header or that is shorter than its
  header says (truncated) is refused with a :class:`ConfigError` naming ``state_path``, the
  file and the problem. Then ``PRAGMA quick_check`` and a read of the schema run before
  anything is written (the file is never changed when it is refused), and side files
  (``-wal``, ``-shm``) that the refused open created are removed again.
* Every failure path closes the aiosqlite connection: its worker thread is not a daemon
  and would otherwise keep the process alive after the error.
* One kernel owns a state file at a time: an advisory ``flock`` on ``<state>.lock`` (the
  resolved path, so two spellings of one file share the lock), held until :meth:`close`.
  The lock file records the holder (pid, host, kernel id, start time) and so does the
  ``kernel_owner`` row, so a second kernel's error names who holds the file. A holder
  that died released its lock with its process, so a stale owner row is simply taken
  over. ``flock`` is not honoured by every network filesystem: there the lock is skipped
  (the filesystem says so with ``ENOLCK``/``EOPNOTSUPP``) and exclusivity is the user's.

``quick_check`` reads the whole file once: O(file size); 0.09 s for a 310 MB state file
in the page cache on the 2-core reference machine, more from a cold disk. The KV blob cap
(``checkpoint_kv_cap_bytes``) bounds the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import sqlite3
import stat
import time
from pathlib import Path

import aiosqlite
import anyio

from aios.errors import ConfigError

__all__ = ["StateDB"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    syscall_id TEXT PRIMARY KEY,
    pid        INTEGER NOT NULL,
    body       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    kv_hash    TEXT,
    created    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv_blobs (
    hash      TEXT PRIMARY KEY,
    data      BLOB NOT NULL,
    size      INTEGER NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kernel_owner (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    kernel_id TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    host      TEXT NOT NULL,
    started   REAL NOT NULL
);
"""

# Columns a table of that name must have for the file to be an aios state database (a
# foreign database with a ``checkpoints`` table of its own must not be written into).
_COLUMNS = {
    "checkpoints": {"syscall_id", "pid", "body", "checksum", "kv_hash", "created"},
    "kv_blobs": {"hash", "data", "size", "last_used"},
    "kernel_owner": {"id", "kernel_id", "pid", "host", "started"},
}

_MAGIC = b"SQLite format 3\x00"
_HEADER = 100  # bytes of the SQLite file header (https://sqlite.org/fileformat.html)


def _problem(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}", key="state_path")


def _absent(*paths: str) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def _remove(paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)


def _check_file(path: str) -> None:
    """Refuse what SQLite must not open, reading at most the 100-byte header; create
    the directory of a new file.

    A missing or empty file is fine (a new database). The truncation check follows the
    file format: the header's page size (offset 16) and in-header page count (offset 28,
    valid when the change counter at 24 equals the version-valid-for number at 92).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _problem(path, f"cannot create its directory: {exc.strerror or exc}"
                           ) from None
        if not os.access(parent, os.W_OK):
            raise _problem(path, f"cannot create it: directory {parent} is not writable") from None
        return
    except OSError as exc:
        raise _problem(path, f"cannot read it: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _problem(path, "is a directory, not a database file")
    if not stat.S_ISREG(st.st_mode):
        raise _problem(path, "is not a regular file")
    # Mode bits, not only access(): root may write anything, but a file its owner marked
    # read-only is not the kernel's to write.
    if not st.st_mode & 0o222 or not os.access(path, os.R_OK | os.W_OK):
        raise _problem(path, "is read-only (the kernel writes its state there)")
    parent = Path(path).parent
    if not os.access(parent, os.W_OK):
        raise _problem(path, f"directory {parent} is not writable (WAL needs its side files)")
    if st.st_size == 0:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER)
    except OSError as exc:
        raise _problem(path, f"cannot read it: {exc.strerror or exc}") from None
    if not head.startswith(_MAGIC):
        raise _problem(path, "is not an SQLite database (no SQLite header); "
                       "point state_path to a new file or an aios state file")
    if len(head) < _HEADER:
        raise _problem(path, f"is truncated ({st.st_size} bytes, shorter than the header)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    valid = head[24:28] == head[92:96]
    if page_size < 512 or page_size & (page_size - 1):
        raise _problem(path, f"has a damaged header (page size {page_size})")
    if valid and pages and st.st_size < pages * page_size:
        raise _problem(path, f"is truncated ({st.st_size} bytes; its header says "
                       f"{pages} pages of {page_size} bytes)")


class _OwnerLock:
    """An exclusive advisory lock on ``<resolved state path>.lock`` naming its holder."""

    def __init__(self, path: str) -> None:
        self.path = str(Path(path).resolve()) + ".lock"
        self._fd: int | None = None

    def acquire(self, state_path: str, holder: dict[str, object]) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _problem(state_path, f"cannot create the lock file {self.path}: "
                           f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _describe(_read_holder(fd))
            os.close(fd)
            raise _problem(state_path, f"is in use by another kernel ({other}); one kernel "
                           "owns a state file: give this kernel its own state_path") from None
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                os.close(fd)  # the filesystem has no locks: nothing to hold
                return
            os.close(fd)
            raise _problem(state_path, f"cannot lock {self.path}: {exc.strerror}") from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing the last descriptor releases the flock


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "holder unknown"
    started = holder.get("started")
    since = (time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
             if isinstance(started, (int, float)) else "")
    return (f"kernel {holder.get('kernel_id', '?')}, pid {holder.get('pid', '?')} "
            f"on {holder.get('host', '?')}{since}")


class StateDB:
    """The state database of one kernel.

    ``kernel_id`` is a short random id (8 hex digits), fixed at construction, that the
    kernel uses to make its keys (checkpoints) unique across kernels that used the file.
    ``exclusive=False`` opens without becoming the owner (no lock, no owner row), for
    tools that read a file a kernel may be running on (``aios storage export``); the file
    is validated all the same.
    """

    def __init__(self, path: str | None, *, exclusive: bool = True) -> None:
        self.path = path or ":memory:"
        self.exclusive = exclusive
        self.kernel_id = secrets.token_hex(4)
        self._conn: aiosqlite.Connection | None = None
        self._lock: _OwnerLock | None = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("state database is not open")
        return self._conn

    @property
    def holder(self) -> dict[str, object]:
        """Who this kernel is, as recorded in the lock file and the ``kernel_owner`` row."""
        return {"kernel_id": self.kernel_id, "pid": os.getpid(), "host": socket.gethostname()}

    async def open(self) -> None:
        """Validate, lock and open the database. On any failure nothing stays open, locked
        or changed, and the error is a :class:`ConfigError` with ``key == "state_path"``."""
        if self._conn is not None:
            raise RuntimeError("state database is already open")
        if self.path == ":memory:":
            self._conn = await self._connect_and_check()
            return
        # Small, bounded file-system calls (a stat, a 100-byte read, a lock): not worth
        # a thread hop.
        _check_file(self.path)
        lock = _OwnerLock(self.path)
        if self.exclusive:
            lock.acquire(self.path, {**self.holder, "started": time.time()})
        new_side_files = _absent(f"{self.path}-wal", f"{self.path}-shm")
        try:
            self._conn = await self._connect_and_check()
        except BaseException:
            _remove(new_side_files)  # what the refused open created, never older files
            lock.release()
            raise
        self._lock = lock

    async def _connect_and_check(self) -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(self.path, timeout=5.0)
        except sqlite3.Error as exc:
            raise _problem(self.path, f"cannot open it: {exc}") from None
        try:
            await self._check(conn)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.executescript(SCHEMA)
            if self.exclusive:
                await conn.execute(
                    "INSERT OR REPLACE INTO kernel_owner (id, kernel_id, pid, host, started) "
                    "VALUES (1, ?, ?, ?, ?)",
                    (self.kernel_id, os.getpid(), socket.gethostname(), time.time()),
                )
            await conn.commit()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await _close_quietly(conn)
            if isinstance(exc, sqlite3.Error):
                raise _problem(self.path, _sqlite_problem(exc)) from None
            raise
        return conn

    async def _check(self, conn: aiosqlite.Connection) -> None:
        """Read-only checks: the file is a sound SQLite database whose aios tables, if
        any, have aios's columns."""
        async with conn.execute("PRAGMA quick_check") as cur:
            rows = [str(r[0]) for r in await cur.fetchall()]
        if rows != ["ok"]:
            raise _problem(self.path, "is a damaged SQLite database (quick_check: "
                           f"{'; '.join(rows[:3])})")
        for table, want in _COLUMNS.items():
            async with conn.execute(f"PRAGMA table_info({table})") as cur:
                have = {str(r[1]) for r in await cur.fetchall()}
            if have and not want <= have:
                raise _problem(self.path, f"is not an aios state database (its table {table!r} "
                               f"lacks {', '.join(sorted(want - have))})")

    async def close(self) -> None:
        """Close the connection, drop the owner row and release the lock (idempotent)."""
        conn, self._conn = self._conn, None
        lock, self._lock = self._lock, None
        try:
            if conn is not None:
                try:
                    # The row is informational; the lock below is what counts.
                    with contextlib.suppress(sqlite3.Error):
                        await conn.execute("DELETE FROM kernel_owner WHERE kernel_id = ?",
                                           (self.kernel_id,))
                        await conn.commit()
                finally:
                    await conn.close()
        finally:
            if lock is not None:
                lock.release()


def _sqlite_problem(exc: sqlite3.Error) -> str:
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text
    ):
        return f"is a damaged or truncated SQLite database ({text})"
    if "readonly" in text or "read-only" in text:
        return f"cannot be written ({text})"
    if "locked" in text:
        return f"is locked by another process ({text})"
    return f"cannot be used as the state database ({type(exc).__name__}: {text})"


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    """Close even a connection whose database is broken: aiosqlite stops its worker
    thread in ``close``'s ``finally``, whatever ``sqlite3.Connection.close`` raised."""
    with contextlib.suppress(sqlite3.Error):
        await conn.close()
