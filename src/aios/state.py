"""The kernel's state database: one SQLite file (or memory), one writer connection.

WAL mode and a busy timeout so readers in other processes (``aios ps``) never see
"database is locked"; every write goes through the single aiosqlite connection, which
serializes them. Tables are created here; the stores that use them (checkpoints, later
memory, storage, the audit log) own their SQL. Never store a whole conversation per step:
rows hold deltas and content hashes.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

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
"""


class StateDB:
    def __init__(self, path: str | None) -> None:
        self.path = path or ":memory:"
        self._conn: aiosqlite.Connection | None = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("state database is not open")
        return self._conn

    async def open(self) -> None:
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the state directory: {exc}",
                                  key="state_path") from None
        try:
            conn = await aiosqlite.connect(self.path, timeout=5.0)
        except Exception as exc:
            raise ConfigError(f"cannot open the state database {self.path}: {exc}",
                              key="state_path") from None
        self._conn = conn
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.executescript(SCHEMA)
        await conn.commit()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
