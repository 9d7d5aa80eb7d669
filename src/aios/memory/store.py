"""The built-in memory store: SQLite tables in the kernel's state database, FTS5 + BM25.

Tables (schema ``memory`` version 1 in ``schema_versions``):

* ``memory_namespaces(nsid, name, nbytes, items)``: one row per namespace; ``nbytes``
  and ``items`` are kept by triggers in the same transaction as the items, so the
  namespace cap is read in O(1) and can never drift;
* ``memory_items(seq, id, namespace, nskey, text, metadata, nbytes, created, updated)``;
* ``memory_fts``: an external-content FTS5 index of ``text`` and ``nskey`` (``n<nsid>``),
  kept by triggers. A search matches ``nskey`` AND the query's terms, so it walks only
  its namespace's postings (FTS5 intersects doclists by rowid seeks), and ranks with
  ``bm25`` weighting ``nskey`` 0.

A user's query is never passed to FTS5 as syntax: it is cut into word terms, each quoted
as a string, joined by OR (``"AND OR ("`` searches for the words "and" and "or").
Tokenizer: ``porter unicode61 remove_diacritics 2`` (English stemming, accents folded).
Ties in score are broken by insertion order (``seq``), so results are deterministic.

Every write is one transaction run in one step on the aiosqlite thread (a savepoint, so
it also nests safely inside a transaction another component left open), and is rolled
back as a whole on any error. This module never caches: the RAM tier is the handler's.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiosqlite

from aios.errors import MemoryStoreError
from aios.memory.base import MemoryStore
from aios.syscalls.memory import MemoryHit, MemoryItem

__all__ = ["SCHEMA_VERSION", "SQLiteMemoryStore", "fts_query", "metadata_json"]

SCHEMA_VERSION = 1
COMPONENT = "memory"
MAX_QUERY_TERMS = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memory_namespaces (
    nsid   INTEGER PRIMARY KEY,
    name   TEXT NOT NULL UNIQUE,
    nbytes INTEGER NOT NULL DEFAULT 0,
    items  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS memory_items (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    nskey     TEXT NOT NULL,
    text      TEXT NOT NULL,
    metadata  TEXT NOT NULL,
    nbytes    INTEGER NOT NULL,
    created   REAL NOT NULL,
    updated   REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts USING fts5(
    text, nskey, content='memory_items', content_rowid='seq',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE VIRTUAL TABLE IF NOT EXISTS memory_vocab USING fts5vocab(memory_fts, 'row');
CREATE TRIGGER IF NOT EXISTS memory_items_ai AFTER INSERT ON memory_items BEGIN
    INSERT INTO memory_fts(rowid, text, nskey) VALUES (new.seq, new.text, new.nskey);
    UPDATE memory_namespaces SET nbytes = nbytes + new.nbytes, items = items + 1
        WHERE name = new.namespace;
END;
CREATE TRIGGER IF NOT EXISTS memory_items_ad AFTER DELETE ON memory_items BEGIN
    INSERT INTO memory_fts(memory_fts, rowid, text, nskey)
        VALUES ('delete', old.seq, old.text, old.nskey);
    UPDATE memory_namespaces SET nbytes = nbytes - old.nbytes, items = items - 1
        WHERE name = old.namespace;
END;
CREATE TRIGGER IF NOT EXISTS memory_items_au_text AFTER UPDATE OF text ON memory_items BEGIN
    INSERT INTO memory_fts(memory_fts, rowid, text, nskey)
        VALUES ('delete', old.seq, old.text, old.nskey);
    INSERT INTO memory_fts(rowid, text, nskey) VALUES (new.seq, new.text, new.nskey);
END;
CREATE TRIGGER IF NOT EXISTS memory_items_au_bytes AFTER UPDATE OF nbytes ON memory_items BEGIN
    UPDATE memory_namespaces SET nbytes = nbytes - old.nbytes + new.nbytes
        WHERE name = new.namespace;
END;
"""

# Columns each table must have (a damaged or foreign table is refused, never written).
_COLUMNS = {
    "memory_namespaces": {"nsid", "name", "nbytes", "items"},
    "memory_items": {"seq", "id", "namespace", "nskey", "text", "metadata", "nbytes",
                     "created", "updated"},
}

# Later versions add steps here: {from_version: sql}; start() runs them in order.
_MIGRATIONS: dict[int, str] = {}

_UPSERT = """
INSERT INTO memory_items (id, namespace, nskey, text, metadata, nbytes, created, updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata,
    nbytes = excluded.nbytes, updated = excluded.updated
"""

_TEMP = """
CREATE VIRTUAL TABLE IF NOT EXISTS temp.memory_qtok USING fts5(
    q, tokenize='porter unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS temp.memory_qtok_v USING fts5vocab(temp, memory_qtok,
    'instance');
"""

_WORD = re.compile(r"\w+", re.UNICODE)

COMMON = 0.2
"""A query word found in more than this fraction of all memories is dropped when the
query has rarer words (and the store holds at least ``PRUNE_MIN`` memories)."""
PRUNE_MIN = 1000

T = TypeVar("T")


def query_words(text: str) -> list[str]:
    """The distinct words of ``text``, lowercased, in order (at most 32)."""
    terms: dict[str, None] = {}
    for w in _WORD.findall(text):
        terms.setdefault(w.lower(), None)
        if len(terms) >= MAX_QUERY_TERMS:
            break
    return list(terms)


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any word of ``text`` (each quoted: no FTS5 syntax from the
    user survives), or None when ``text`` has no word. At most 32 distinct terms."""
    words = query_words(text)
    return " OR ".join(f'"{t}"' for t in words) if words else None


def metadata_json(metadata: Mapping[str, Any] | None, what: str = "metadata") -> str:
    """Compact JSON of ``metadata`` ("{}" for none); MemoryStoreError if it is not JSON."""
    if not metadata:
        return "{}"
    try:
        return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MemoryStoreError(f"{what} is not JSON: {exc}") from None


def _filter_sql(filter: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL conditions for metadata equality: the JSON type must match too (True is not 1)."""
    sql: list[str] = []
    args: list[Any] = []
    for key, value in filter.items():
        if not isinstance(key, str) or not key or '"' in key or "\\" in key:
            raise MemoryStoreError(f"filter key {key!r}: must be a non-empty string "
                                   "without quotes or backslashes")
        path = f'$."{key}"'
        if value is None:
            sql.append("json_type(m.metadata, ?) = 'null'")
            args.append(path)
        elif isinstance(value, bool):
            sql.append("json_type(m.metadata, ?) = ?")
            args += [path, "true" if value else "false"]
        elif isinstance(value, (int, float)):
            sql.append("json_type(m.metadata, ?) IN ('integer', 'real') "
                       "AND json_extract(m.metadata, ?) = ?")
            args += [path, path, value]
        elif isinstance(value, str):
            sql.append("json_type(m.metadata, ?) = 'text' AND json_extract(m.metadata, ?) = ?")
            args += [path, path, value]
        else:
            raise MemoryStoreError(f"filter key {key!r}: the value must be a string, number, "
                                   f"bool or None, got {type(value).__name__}")
    return "".join(f" AND {s}" for s in sql), args


class SQLiteMemoryStore(MemoryStore):
    """Memories in the kernel's state database (``services.db.conn``)."""

    _nsids: dict[str, int]

    async def start(self) -> None:
        self._nsids = {}
        conn = self._conn
        self._stems: dict[str, str] = {}
        try:
            await self._run(self._create_or_migrate)
            await self._conn.executescript(_TEMP)
        except sqlite3.Error as exc:
            raise MemoryStoreError(f"memory store in {self.services.db.path}: cannot open "
                                   f"its tables ({exc}); the file was left as it was") from None
        async with conn.execute("SELECT nsid, name FROM memory_namespaces") as cur:
            for nsid, name in await cur.fetchall():
                self._nsids[str(name)] = int(nsid)

    @property
    def _conn(self) -> aiosqlite.Connection:
        return self.services.db.conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection's own thread in one step: no other statement of
        any component can interleave with it."""
        conn = self._conn

        def step() -> T:
            return fn(conn._conn)

        result: T = await conn._execute(step)  # type: ignore[no-untyped-call]
        return result

    def _create_or_migrate(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_versions "
                   "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_versions WHERE component = ?",
                         (COMPONENT,)).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise MemoryStoreError(
                f"memory store in {self.services.db.path}: schema version {version} was "
                f"written by a newer aios (this one knows {SCHEMA_VERSION}); refusing to "
                "touch it")
        for table, want in _COLUMNS.items():
            have = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}
            if have and not want <= have:
                raise MemoryStoreError(
                    f"memory store in {self.services.db.path}: table {table} lacks "
                    f"{', '.join(sorted(want - have))}; refusing to touch it")
        with _transaction(db):
            if version == 0:
                for s in _statements(_SCHEMA):
                    db.execute(s)
            for v in range(max(version, 1), SCHEMA_VERSION):
                for s in _statements(_MIGRATIONS[v]):
                    db.execute(s)
            db.execute("INSERT OR REPLACE INTO schema_versions (component, version) "
                       "VALUES (?, ?)", (COMPONENT, SCHEMA_VERSION))

    # -- writes -----------------------------------------------------------------------

    async def write(self, items: Sequence[MemoryItem], deleted: Sequence[str] = ()) -> None:
        if not items and not deleted:
            return
        new_ns = sorted({i.namespace for i in items} - self._nsids.keys())
        rows = [(i, metadata_json(i.metadata)) for i in items]

        def tx(db: sqlite3.Connection) -> dict[str, int]:
            nsids: dict[str, int] = {}
            with _transaction(db):
                for name in new_ns:
                    db.execute("INSERT OR IGNORE INTO memory_namespaces (name) VALUES (?)",
                               (name,))
                    nsids[name] = int(db.execute(
                        "SELECT nsid FROM memory_namespaces WHERE name = ?", (name,)
                    ).fetchone()[0])
                known = {**self._nsids, **nsids}
                if deleted:
                    db.executemany("DELETE FROM memory_items WHERE id = ?",
                                   [(d,) for d in deleted])
                db.executemany(_UPSERT, [
                    (i.id, i.namespace, f"n{known[i.namespace]}", i.text, meta,
                     len(i.text.encode("utf-8")) + (len(meta.encode("utf-8"))
                                                    if meta != "{}" else 0),
                     i.created, i.updated)
                    for i, meta in rows])
            return nsids

        try:
            self._nsids.update(await self._run(tx))
        except sqlite3.Error as exc:
            raise MemoryStoreError(f"memory store: write failed and was rolled back: {exc}"
                                   ) from None

    # -- reads ------------------------------------------------------------------------

    async def load(self, id: str) -> MemoryItem | None:
        try:
            async with self._conn.execute(
                "SELECT id, namespace, text, metadata, created, updated FROM memory_items "
                "WHERE id = ?", (id,)
            ) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise MemoryStoreError(f"memory store: read failed: {exc}") from None
        if row is None:
            return None
        return MemoryItem(id=row[0], namespace=row[1], text=row[2],
                          metadata=json.loads(row[3]), created=row[4], updated=row[5])

    async def search(self, namespace: str, query: str, k: int,
                     filter: Mapping[str, Any] | None = None) -> list[MemoryHit]:
        words = query_words(query)
        nsid = self._nsids.get(namespace)
        if not words or nsid is None:
            return []
        where, args = _filter_sql(filter or {})

        def run(db: sqlite3.Connection) -> list[Any]:
            kept = self._prune(db, words)
            terms = " OR ".join(f'"{w}"' for w in kept)
            match = f'nskey : "n{nsid}" AND text : ({terms})'
            if where:  # metadata conditions need the item rows before the LIMIT
                sql = ("SELECT m.id, m.text, m.metadata, -bm25(memory_fts, 1.0, 0.0) "
                       "FROM memory_fts JOIN memory_items m ON m.seq = memory_fts.rowid "
                       f"WHERE memory_fts MATCH ?{where} "
                       "ORDER BY bm25(memory_fts, 1.0, 0.0), m.seq LIMIT ?")
            else:  # rank in the index alone, then read only the k winning rows
                sql = ("SELECT m.id, m.text, m.metadata, -t.b FROM (SELECT rowid AS r, "
                       "bm25(memory_fts, 1.0, 0.0) AS b FROM memory_fts WHERE memory_fts "
                       "MATCH ? ORDER BY b, rowid LIMIT ?) t JOIN memory_items m "
                       "ON m.seq = t.r ORDER BY t.b, t.r")
            return db.execute(sql, (match, *args, k)).fetchall()

        try:
            rows = await self._run(run)
        except sqlite3.Error as exc:
            raise MemoryStoreError(f"memory store: search failed: {exc}") from None
        return [MemoryHit(id=r[0], text=r[1], metadata=json.loads(r[2]), score=r[3],
                          namespace=namespace) for r in rows]

    def _prune(self, db: sqlite3.Connection, words: list[str]) -> list[str]:
        """``words`` without those found in more than :data:`COMMON` of all memories,
        unless none would be left (then the rarest one). Such words weigh little in BM25
        (their IDF is near 0), yet scoring them reads most of the index: at 100k memories
        a search of three common words costs ~100 ms instead of ~1 ms. Document counts
        are global (all namespaces), from the FTS5 vocabulary; words are stemmed by the
        index's own tokenizer (a temp FTS5 table), cached."""
        if len(words) < 2:
            return words
        total = db.execute("SELECT coalesce(sum(items), 0) FROM memory_namespaces").fetchone()[0]
        if total < PRUNE_MIN:
            return words
        stems = self._stem(db, words)
        df = {w: (db.execute("SELECT doc FROM memory_vocab WHERE term = ?", (stems[w],))
                  .fetchone() or (0,))[0] for w in words if w in stems}
        kept = [w for w in words if df.get(w, 0) <= COMMON * total]
        return kept or [min(words, key=lambda w: df.get(w, 0))]

    def _stem(self, db: sqlite3.Connection, words: list[str]) -> dict[str, str]:
        new = [w for w in words if w not in self._stems]
        if new:
            with _transaction(db):
                db.executemany("INSERT INTO temp.memory_qtok (rowid, q) VALUES (?, ?)",
                               list(enumerate(new)))
                for doc, term in db.execute("SELECT doc, term FROM temp.memory_qtok_v"):
                    self._stems[new[doc]] = term
                db.execute("DELETE FROM temp.memory_qtok")
            if len(self._stems) > 100_000:
                self._stems.clear()
        return {w: self._stems[w] for w in words if w in self._stems}

    async def usage(self, namespace: str) -> int:
        async with self._conn.execute(
            "SELECT nbytes FROM memory_namespaces WHERE name = ?", (namespace,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (trigger bodies keep their inner ';')."""
    out: list[str] = []
    buf = ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return out


class _transaction:
    """``with _transaction(db):`` a savepoint released on success (committing when it is
    the outermost transaction) and rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.outer = self.db.in_transaction
        self.db.execute("SAVEPOINT memory_tx")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: object) -> None:
        if et is None:
            self.db.execute("RELEASE memory_tx")
            if not self.outer and self.db.in_transaction:
                self.db.commit()
        else:
            self.db.execute("ROLLBACK TO memory_tx")
            self.db.execute("RELEASE memory_tx")
