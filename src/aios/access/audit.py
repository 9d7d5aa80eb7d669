"""The audit log: one append-only row per syscall in the state database.

:class:`AuditLog` is a door instrument (and the guard's witness for refusals, which never
reach the instruments). The door's path only appends a tuple to a list; a writer task
(group commit, as databases do it) wakes at the first row, lingers up to
``access.audit_linger_s`` or until ``access.audit_batch`` rows gathered, then turns them
into SQL, hashing and truncating each syscall's arguments on the database's thread, and
inserts the batch in one transaction. The linger bounds how stale the log is, never an
agent's latency; it makes batches large, so a row costs a few microseconds of CPU.
Triggers refuse any UPDATE or DELETE of the table.

A row: time (Unix seconds), kernel id, syscall id, pid, agent name, group, kind,
resource, the SHA-256 of the syscall's JSON and (unless ``access.audit_redact``) its
first ``access.audit_args_chars`` characters, the decision (``allowed``, ``denied``,
``quota``, ``approved by <who>``, ``approval denied``), the outcome (``ok``, ``error``,
``cancelled``, ``refused``), the error, and the duration in seconds.

Rows still in memory when the process dies are lost (at most one batch); the kernel
writes the rest when it stops. This module never raises into the door.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict

from aios.errors import ApprovalDenied, InvalidSyscall, QuotaExceeded

if TYPE_CHECKING:
    from aios.config import AccessConfig
    from aios.state import StateDB

__all__ = ["AuditLog", "AuditRecord", "query_sql"]

COMPONENT = "audit"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kernel TEXT NOT NULL,
    sid TEXT NOT NULL,
    pid INTEGER NOT NULL,
    agent TEXT NOT NULL,
    grp TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource TEXT,
    args_sha256 TEXT NOT NULL,
    args TEXT,
    decision TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    duration_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_agent ON audit_log (agent, time);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
_INSERT = ("INSERT INTO audit_log (time, kernel, sid, pid, agent, grp, kind, resource, "
           "args_sha256, args, decision, outcome, error, duration_s) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
DENIED = ("denied", "quota", "approval denied")
"""The decisions ``--denied`` selects."""


class AuditRecord(BaseModel):
    """One row of the audit log (see the module docstring for the fields)."""

    model_config = ConfigDict(frozen=True)

    id: int
    time: float
    kernel: str
    sid: str
    pid: int
    agent: str
    group: str
    kind: str
    resource: str | None
    args_sha256: str
    args: str | None
    decision: str
    outcome: str
    error: str | None
    duration_s: float


class AuditLog:
    """The audit instrument of one kernel. ``note(sid, decision)`` records a decision
    taken during a syscall (an approval) for its row."""

    def __init__(self, db: StateDB, config: AccessConfig, kernel_id: str, log: Any) -> None:
        self._db = db
        self._kernel = kernel_id
        self._log = log
        self._redact = config.audit_redact
        self._chars = config.audit_args_chars
        self._rows: list[tuple[Any, ...]] = []
        self._wake = anyio.Event()
        self._full = anyio.Event()
        self._batch = config.audit_batch
        self._linger_s = config.audit_linger_s
        self._decisions: dict[str, str] = {}
        self.written = 0

    async def start(self) -> None:
        """Create the table (schema version row in ``schema_versions``)."""
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_versions "
                         "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_versions WHERE component = ?",
                               (COMPONENT,)).fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"audit log schema version {row[0]} is newer "
                                            f"than this aios knows ({SCHEMA_VERSION})")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR REPLACE INTO schema_versions (component, version) "
                         "VALUES (?, ?)", (COMPONENT, SCHEMA_VERSION))
            conn.commit()

        await self._run(job)

    # -- the instrument (on the door's path: append only) --------------------------------

    def note(self, sid: str, decision: str) -> None:
        self._decisions[sid] = decision

    def syscall_started(self, sc: Any, syscall: Any) -> None:
        pass

    def syscall_ended(self, sc: Any, syscall: Any, result: Any, error: BaseException | None,
                      duration_s: float) -> None:
        decision = self._decisions.pop(sc.sid, "allowed") if self._decisions else "allowed"
        if error is None:
            outcome, err = "ok", None
        elif isinstance(error, anyio.get_cancelled_exc_class()):
            outcome, err = "cancelled", None
        else:
            outcome, err = "error", f"{type(error).__name__}: {error}"[:1000]
            if isinstance(error, ApprovalDenied) and decision == "allowed":
                decision = "approval denied"
        self._append((time.time(), sc.sid, sc.pid, sc.name, sc.group, syscall.kind,
                      getattr(syscall, "resource", None), syscall, decision, outcome, err,
                      duration_s))

    def refused(self, sc: Any, syscall: Any, error: BaseException) -> None:
        """A syscall the guard refused (it never reached the instruments)."""
        decision = "quota" if isinstance(error, QuotaExceeded) else "denied"
        self._append((time.time(), sc.sid, sc.pid, sc.name, sc.group, syscall.kind,
                      getattr(syscall, "resource", None), syscall, decision, "refused",
                      f"{type(error).__name__}: {error}"[:1000], 0.0))

    def _append(self, row: tuple[Any, ...]) -> None:
        rows = self._rows
        rows.append(row)
        if len(rows) == 1:
            self._wake.set()
        elif len(rows) == self._batch:
            self._full.set()

    # -- the writer ------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches as they gather, until cancelled (then :meth:`flush` once more)."""
        while True:
            await self._wake.wait()
            with anyio.move_on_after(self._linger_s):
                await self._full.wait()
            self._wake = anyio.Event()
            self._full = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write every row gathered so far, in one transaction. On a database error the
        rows are kept for the next attempt and the error is logged."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        kernel, redact, chars = self._kernel, self._redact, self._chars

        def job(conn: sqlite3.Connection) -> None:
            out = []
            for t, sid, pid, agent, grp, kind, res, syscall, decision, outcome, err, dur in rows:
                data = _json(syscall)
                out.append((t, kernel, sid, pid, agent, grp, kind, res,
                            hashlib.sha256(data).hexdigest(),
                            None if redact else _prefix(data, chars), decision, outcome,
                            err, dur))
            conn.execute("SAVEPOINT aios_audit")
            try:
                conn.executemany(_INSERT, out)
            except BaseException:
                conn.execute("ROLLBACK TO aios_audit")
                conn.execute("RELEASE aios_audit")
                raise
            conn.execute("RELEASE aios_audit")  # commits, unless nested in another's

        try:
            await self._run(job)
        except (sqlite3.Error, ValueError) as exc:
            self._rows[:0] = rows
            self._log.error("audit.write_failed", rows=len(rows), error=str(exc))
            return
        self.written += len(rows)

    async def _run(self, fn: Any) -> None:
        aconn: Any = self._db.conn

        def job() -> None:
            fn(aconn._conn)

        # aiosqlite runs its jobs one at a time: nothing interleaves with this one.
        await aconn._execute(job)

    async def query(self, **filters: Any) -> list[AuditRecord]:
        """Rows matching ``filters`` (see :func:`query_sql`), after writing pending ones."""
        await self.flush()
        return await query(self._db, **filters)


def _json(syscall: Any) -> bytes:
    """The syscall as JSON bytes (pydantic's serializer, as ``model_dump_json``)."""
    serializer = getattr(syscall, "__pydantic_serializer__", None)
    if serializer is not None:
        try:
            return bytes(serializer.to_json(syscall))
        except Exception:  # a value pydantic cannot serialise: still audit something
            pass
    return repr(syscall).encode("utf-8", "replace")


def _prefix(data: bytes, chars: int) -> str:
    """The first ``chars`` characters of UTF-8 ``data`` (at most 4 bytes each)."""
    return data[: chars * 4].decode("utf-8", "replace")[:chars]


def query_sql(*, agent: str | None = None, denied: bool = False, since: float | None = None,
              kind: str | None = None, limit: int | None = None) -> tuple[str, list[Any]]:
    """The SELECT for the audit rows of ``agent``, only refusals (``denied``), from
    ``since`` (Unix seconds), of ``kind``; oldest first, the last ``limit`` rows."""
    where: list[str] = []
    params: list[Any] = []
    if agent is not None:
        where.append("agent = ?")
        params.append(agent)
    if denied:
        where.append(f"decision IN ({', '.join('?' * len(DENIED))})")
        params.extend(DENIED)
    if since is not None:
        if isinstance(since, bool) or not isinstance(since, (int, float)):
            raise InvalidSyscall(f"audit: since must be Unix seconds (a number), got "
                                 f"{since!r}")
        where.append("time >= ?")
        params.append(float(since))
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    sql = ("SELECT id, time, kernel, sid, pid, agent, grp, kind, resource, args_sha256, "
           "args, decision, outcome, error, duration_s FROM audit_log")
    if where:
        sql += " WHERE " + " AND ".join(where)
    if limit is not None:
        sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)}) ORDER BY id"
    else:
        sql += " ORDER BY id"
    return sql, params


def records(rows: Sequence[Sequence[Any]]) -> list[AuditRecord]:
    names = list(AuditRecord.model_fields)
    return [AuditRecord(**dict(zip(names, r, strict=True))) for r in rows]


async def query(db: StateDB, **filters: Any) -> list[AuditRecord]:
    """Audit rows of the state database ``db`` (none if it has no audit log)."""
    sql, params = query_sql(**filters)
    try:
        async with db.conn.execute(sql, params) as cur:
            rows = await cur.fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    return records(list(rows))
