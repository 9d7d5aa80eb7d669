"""The built-in memory store: SQLite tables in the kernel's state database, BM25 search.

Tables (schema ``memory`` version 2 in ``schema_versions``):

* ``memory_namespaces(nsid, name, nbytes, items, ntokens)``: one row per namespace;
  ``nbytes`` and ``items`` are kept by triggers in the same transaction as the items, so
  the namespace cap is read in O(1) and can never drift; ``ntokens`` (the namespace's
  indexed tokens, for the mean document length) is kept by :meth:`write`;
* ``memory_items(seq, id, namespace, nskey, text, metadata, nbytes, created, updated)``;
* ``memory_postings(nsid, term, seq, tf, dl)``: the inverted index, partitioned by
  namespace (``nsid`` is the first key column, so a search reads its namespace's
  postings only); ``tf`` is the term's count in the memory, ``dl`` the memory's length
  in tokens;
* ``memory_impacts(nsid, term, tf, dl, n)``: per namespace and term, how many memories
  hold it with each ``(tf, dl)`` (its document frequency is the sum of ``n``). A term's
  weight in a memory depends on ``(tf, dl)`` only, so these few rows order the term's
  postings by weight, and the index ``(nsid, term, tf, dl, seq)`` reads each weight's
  postings in ``seq`` order: impact-ordered lists without storing a weight that the
  mean length would make stale.

Version 1 ranked with FTS5's ``bm25()`` over one FTS5 table, which scores every
matching row and counts each term's documents by walking its whole doclist on every
query: ~30 ms per search at 100k memories (benchmarks/RESULTS.md). Version 2 keeps the
index itself and stops reading as soon as the top k is known (:func:`_top_k`, the
threshold algorithm), so a search reads the heads of its terms' lists, not the lists.

Scoring: BM25 (Robertson and Zaragoza, "The probabilistic relevance framework",
2009) with k1 = 1.2, b = 0.75 and Lucene's non-negative IDF ``ln(1 + (N - df + 0.5) /
(df + 0.5))``, with N, df and the mean length taken over the searched namespace (a
partition's statistics, not the whole database's). Scores are rounded to 9 decimals so
equal memories tie exactly, and ties are broken by insertion order (``seq``).

Words are cut by the FTS5 tokenizer ``porter unicode61 remove_diacritics 2`` (English
stemming, accents folded) run on a temp FTS5 table, for stored texts and queries alike.
A user's query is never parsed as syntax: its word terms are matched (any of them);
``"AND OR ("`` searches for the words "and" and "or".

Every write is one transaction run in one step on the aiosqlite thread (a savepoint, so
it also nests safely inside a transaction another component left open), and is rolled
back as a whole on any error. This module never caches memories: the RAM tier is the
handler's.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from typing import Any, TypeVar

import aiosqlite

from aios.errors import MemoryStoreError
from aios.memory.base import MemoryStore
from aios.syscalls.memory import MemoryHit, MemoryItem

__all__ = ["SCHEMA_VERSION", "SQLiteMemoryStore", "check_utf8", "fetch_in", "filter_sql",
           "fts_query", "metadata_json", "query_words"]

SCHEMA_VERSION = 2
COMPONENT = "memory"
MAX_QUERY_TERMS = 32
K1 = 1.2
B = 0.75

_TABLES = """
CREATE TABLE IF NOT EXISTS memory_namespaces (
    nsid    INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    nbytes  INTEGER NOT NULL DEFAULT 0,
    items   INTEGER NOT NULL DEFAULT 0,
    ntokens INTEGER NOT NULL DEFAULT 0
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
"""

_INDEX = """
CREATE TABLE IF NOT EXISTS memory_postings (
    nsid INTEGER NOT NULL,
    term TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    tf   INTEGER NOT NULL,
    dl   INTEGER NOT NULL,
    PRIMARY KEY (nsid, term, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memory_postings_impact ON memory_postings (nsid, term, tf, dl);
CREATE TABLE IF NOT EXISTS memory_impacts (
    nsid INTEGER NOT NULL,
    term TEXT NOT NULL,
    tf   INTEGER NOT NULL,
    dl   INTEGER NOT NULL,
    n    INTEGER NOT NULL,
    PRIMARY KEY (nsid, term, tf, dl)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS memory_items_ai AFTER INSERT ON memory_items BEGIN
    UPDATE memory_namespaces SET nbytes = nbytes + new.nbytes, items = items + 1
        WHERE name = new.namespace;
END;
CREATE TRIGGER IF NOT EXISTS memory_items_ad AFTER DELETE ON memory_items BEGIN
    UPDATE memory_namespaces SET nbytes = nbytes - old.nbytes, items = items - 1
        WHERE name = old.namespace;
END;
CREATE TRIGGER IF NOT EXISTS memory_items_au_bytes AFTER UPDATE OF nbytes ON memory_items BEGIN
    UPDATE memory_namespaces SET nbytes = nbytes - old.nbytes + new.nbytes
        WHERE name = new.namespace;
END;
"""

# Version 1 kept an FTS5 table by triggers; version 2 drops it (and the triggers that
# fed it), adds ``ntokens`` and rebuilds the postings from the items (_upgrade_1).
_DROP_V1 = """
DROP TRIGGER IF EXISTS memory_items_ai;
DROP TRIGGER IF EXISTS memory_items_ad;
DROP TRIGGER IF EXISTS memory_items_au_text;
DROP TABLE IF EXISTS memory_vocab;
DROP TABLE IF EXISTS memory_fts;
"""

# Columns each table must have (a damaged or foreign table is refused, never written).
_COLUMNS = {
    "memory_namespaces": {"nsid", "name", "nbytes", "items"},
    "memory_items": {"seq", "id", "namespace", "nskey", "text", "metadata", "nbytes",
                     "created", "updated"},
}

_UPSERT = """
INSERT INTO memory_items (id, namespace, nskey, text, metadata, nbytes, created, updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata,
    nbytes = excluded.nbytes, updated = excluded.updated
"""


_TEMP = """
CREATE VIRTUAL TABLE IF NOT EXISTS temp.memory_qtok USING fts5(
    q, content='', tokenize='porter unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS temp.memory_qtok_v USING fts5vocab(temp, memory_qtok,
    'instance');
CREATE TABLE IF NOT EXISTS temp.memory_batch (doc INTEGER PRIMARY KEY, seq INTEGER, nsid INTEGER);
CREATE TABLE IF NOT EXISTS temp.memory_tok (doc INTEGER, term TEXT, tf INTEGER, dl INTEGER);
DELETE FROM temp.memory_tok;
DELETE FROM temp.memory_batch;
"""

# Tokenize the texts of temp.memory_qtok (rowid = doc) into temp.memory_tok (doc, term, tf,
# dl) for the memories of temp.memory_batch (doc -> seq, nsid).
_TOKENIZE = (
    "INSERT INTO temp.memory_tok (doc, term, tf, dl) SELECT doc, term, count(*), "
    "sum(count(*)) OVER (PARTITION BY doc) FROM temp.memory_qtok_v GROUP BY doc, term")
_BATCH = ("temp.memory_tok t JOIN temp.memory_batch b ON b.doc = t.doc")
_INDEX_ADD = [
    "INSERT INTO memory_postings (nsid, term, seq, tf, dl) "
    f"SELECT b.nsid, t.term, b.seq, t.tf, t.dl FROM {_BATCH}",
    "INSERT INTO memory_impacts (nsid, term, tf, dl, n) SELECT b.nsid, t.term, t.tf, t.dl, "
    f"count(*) FROM {_BATCH} WHERE true GROUP BY b.nsid, t.term, t.tf, t.dl "
    "ON CONFLICT (nsid, term, tf, dl) DO UPDATE SET n = n + excluded.n",
    "UPDATE memory_namespaces SET ntokens = ntokens + n.tokens FROM (SELECT b.nsid, "
    f"sum(t.tf) AS tokens FROM {_BATCH} GROUP BY b.nsid) n "
    "WHERE n.nsid = memory_namespaces.nsid",
]
_INDEX_REMOVE = [
    "DELETE FROM memory_postings WHERE (nsid, term, seq) IN "
    f"(SELECT b.nsid, t.term, b.seq FROM {_BATCH})",
    "UPDATE memory_impacts SET n = memory_impacts.n - x.n FROM (SELECT b.nsid, t.term, t.tf, t.dl, "
    f"count(*) AS n FROM {_BATCH} GROUP BY b.nsid, t.term, t.tf, t.dl) x "
    "WHERE x.nsid = memory_impacts.nsid AND x.term = memory_impacts.term "
    "AND x.tf = memory_impacts.tf AND x.dl = memory_impacts.dl",
    "DELETE FROM memory_impacts WHERE n <= 0 AND (nsid, term, tf, dl) IN "
    f"(SELECT b.nsid, t.term, t.tf, t.dl FROM {_BATCH})",
    "UPDATE memory_namespaces SET ntokens = ntokens - n.tokens FROM (SELECT b.nsid, "
    f"sum(t.tf) AS tokens FROM {_BATCH} GROUP BY b.nsid) n "
    "WHERE n.nsid = memory_namespaces.nsid",
]
# A contentless table emptied with 'delete-all' (a DELETE would leave tombstones that
# every later tokenization would read through).
_QTOK_CLEAR = "INSERT INTO temp.memory_qtok (memory_qtok) VALUES ('delete-all')"
_CLEAR = ["DELETE FROM temp.memory_tok", "DELETE FROM temp.memory_batch",
          _QTOK_CLEAR]



def _score_sql(avgdl: float) -> str:
    """A memory's BM25 score in SQL over the joined ``q`` (term, IDF ``w``) and ``p``
    (postings) rows. Rounded so that memories with equal statistics get equal scores
    whatever the order of summation (then ``seq`` breaks the tie). ``avgdl`` is a float
    this module computed, inlined exactly (repr round-trips)."""
    return (f"round(sum(q.w * p.tf * {K1 + 1!r} / (p.tf + {K1!r} * ({1 - B!r} + {B!r} * "
            f"p.dl / {avgdl!r}))), 9)")

_WORD = re.compile(r"\w+", re.UNICODE)

COMMON = 0.2
"""A query word found in more than this fraction of a namespace's memories is dropped
when the query has rarer words (and the namespace holds at least ``PRUNE_MIN``)."""
PRUNE_MIN = 1000

FIRST_BATCH = 16
"""Postings first read from each term's list per round (doubling each round, to 1024)."""

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
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MemoryStoreError(f"{what} is not JSON: {exc}") from None
    return check_utf8(text, what)


def check_utf8(text: str, what: str) -> str:
    """``text`` if it can be stored as UTF-8; MemoryStoreError naming the first lone
    surrogate (a ``\\ud800``-style code point that no UTF-8 text can hold) if not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MemoryStoreError(
            f"{what} holds a lone surrogate {text[exc.start]!r} (U+{ord(text[exc.start]):04X})"
            f" at index {exc.start}: not valid Unicode text") from None
    return text


def filter_sql(filter: Mapping[str, Any]) -> tuple[str, list[Any]]:
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


def tf_weight(tf: int, dl: int, avgdl: float) -> float:
    """BM25's term-frequency part, below k1 + 1: rises with ``tf``, falls with ``dl``."""
    return tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / avgdl))


_Group = tuple[float, int, list[tuple[int, int]]]


class _Query:
    """One search's terms with their IDF and impact groups, and the mean length."""

    def __init__(self, terms: list[str], idf: dict[str, float],
                 combos: dict[str, list[tuple[int, int, int]]], avgdl: float) -> None:
        self.terms = terms
        self.idf = idf
        self.avgdl = avgdl
        # per term: (weight, postings, [(tf, dl), ...]) best first; equal weights share
        # a group
        self.groups: dict[str, list[_Group]] = {}
        for t in terms:
            by_w: dict[float, _Group] = {}
            for tf, dl, n in combos[t]:
                w = round(idf[t] * tf_weight(tf, dl, avgdl), 12)
                g = by_w.setdefault(w, (w, 0, []))
                by_w[w] = (w, g[1] + n, [*g[2], (tf, dl)])
            self.groups[t] = sorted(by_w.values(), reverse=True)

    def values(self) -> tuple[str, list[Any]]:
        """``WITH q(term, w)`` rows for the terms and their arguments."""
        args: list[Any] = []
        for t in self.terms:
            args += [t, self.idf[t]]
        rows = ", ".join("(?, ?)" for _ in self.terms)
        return f"WITH q(term, w) AS (VALUES {rows}) ", args


class SQLiteMemoryStore(MemoryStore):
    """Memories in the kernel's state database (``services.db.conn``)."""

    _nsids: dict[str, int]

    async def start(self) -> None:
        self._nsids = {}
        conn = self._conn
        self._stems: dict[str, str] = {}
        try:
            await self._conn.executescript(_TEMP)
            await self._run(self._create_or_migrate)
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
                for s in _statements(_TABLES + _INDEX):
                    db.execute(s)
            if version == 1:
                self._upgrade_1(db)
            db.execute("INSERT OR REPLACE INTO schema_versions (component, version) "
                       "VALUES (?, ?)", (COMPONENT, SCHEMA_VERSION))

    def _upgrade_1(self, db: sqlite3.Connection) -> None:
        """Version 1 -> 2: drop the FTS5 index and its triggers, build the postings."""
        for s in _statements(_DROP_V1):
            db.execute(s)
        if "ntokens" not in {str(r[1]) for r in db.execute(
                "PRAGMA table_info(memory_namespaces)")}:
            db.execute("ALTER TABLE memory_namespaces ADD COLUMN ntokens INTEGER NOT NULL "
                       "DEFAULT 0")
        for s in _statements(_INDEX):
            db.execute(s)
        db.execute("DELETE FROM memory_postings")
        db.execute("DELETE FROM memory_impacts")
        db.execute("UPDATE memory_namespaces SET ntokens = 0")
        nsids = dict(db.execute("SELECT name, nsid FROM memory_namespaces").fetchall())
        last = 0
        while True:
            rows = db.execute("SELECT seq, namespace, text FROM memory_items WHERE seq > ? "
                              "ORDER BY seq LIMIT 1000", (last,)).fetchall()
            if not rows:
                break
            self._index(db, [(seq, int(nsids[ns]), text) for seq, ns, text in rows])
            last = rows[-1][0]

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
                    gone = fetch_in(db, "SELECT m.seq, n.nsid, m.text FROM memory_items m "
                                     "JOIN memory_namespaces n ON n.name = m.namespace "
                                     "WHERE m.id IN ({})", deleted)
                    self._index(db, gone, remove=True)
                    db.executemany("DELETE FROM memory_items WHERE id = ?",
                                   [(d,) for d in deleted])
                old = {id: (seq, text) for id, seq, text in fetch_in(
                    db, "SELECT id, seq, text FROM memory_items WHERE id IN ({})",
                    [i.id for i, _ in rows])}
                # a changed text is indexed again; a metadata-only update keeps its postings
                changed = [i for i, _ in rows if old.get(i.id, (0, None))[1] != i.text]
                self._index(db, [(old[i.id][0], known[i.namespace], old[i.id][1])
                                 for i in changed if i.id in old], remove=True)
                db.executemany(_UPSERT, [
                    (i.id, i.namespace, f"n{known[i.namespace]}", i.text, meta,
                     len(i.text.encode("utf-8")) + (len(meta.encode("utf-8"))
                                                    if meta != "{}" else 0),
                     i.created, i.updated)
                    for i, meta in rows])
                seqs = dict(fetch_in(db, "SELECT id, seq FROM memory_items WHERE id IN ({})",
                                      [i.id for i in changed]))
                self._index(db, [(seqs[i.id], known[i.namespace], i.text) for i in changed])
            return nsids

        try:
            self._nsids.update(await self._run(tx))
        except sqlite3.Error as exc:
            raise MemoryStoreError(f"memory store: write failed and was rolled back: {exc}"
                                   ) from None

    def _tokens(self, db: sqlite3.Connection, texts: Sequence[str]) -> list[Counter[str]]:
        """Each text's terms (as the tokenizer stems them) with their counts."""
        out: list[Counter[str]] = [Counter() for _ in texts]
        db.executemany("INSERT INTO temp.memory_qtok (rowid, q) VALUES (?, ?)",
                       list(enumerate(texts)))
        for doc, term in db.execute("SELECT doc, term FROM temp.memory_qtok_v"):
            out[doc][term] += 1
        db.execute(_QTOK_CLEAR)
        return out

    def _index(self, db: sqlite3.Connection, docs: Sequence[tuple[int, int, str]],
               *, remove: bool = False) -> None:
        """Add (or ``remove``) the postings of the memories ``(seq, nsid, text)``, inside
        the caller's transaction. The texts go through the temp FTS5 table (the same
        tokenizer as queries); counting and writing stay in SQL. Removal tokenizes the
        stored text again, which gives the same terms."""
        if not docs:
            return
        db.executemany("INSERT INTO temp.memory_qtok (rowid, q) VALUES (?, ?)",
                       [(i, text) for i, (_, _, text) in enumerate(docs)])
        db.executemany("INSERT INTO temp.memory_batch (doc, seq, nsid) VALUES (?, ?, ?)",
                       [(i, seq, nsid) for i, (seq, nsid, _) in enumerate(docs)])
        try:
            db.execute(_TOKENIZE)
            for s in _INDEX_REMOVE if remove else _INDEX_ADD:
                db.execute(s)
        finally:
            for s in _CLEAR:
                db.execute(s)

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
        where, args = filter_sql(filter or {})

        def run(db: sqlite3.Connection) -> list[Any]:
            q = self._query(db, nsid, words)
            if q is None:
                return []
            top = _top_k(db, nsid, q, k, where, args)
            rows = {r[0]: r for r in fetch_in(
                db, "SELECT seq, id, text, metadata FROM memory_items WHERE seq IN ({})",
                [seq for seq, _ in top])}
            return [(*rows[seq][1:], score) for seq, score in top]

        try:
            rows = await self._run(run)
        except sqlite3.Error as exc:
            raise MemoryStoreError(f"memory store: search failed: {exc}") from None
        return [MemoryHit(id=r[0], text=r[1], metadata=json.loads(r[2]), score=r[3],
                          namespace=namespace) for r in rows]

    def _query(self, db: sqlite3.Connection, nsid: int, words: list[str]) -> _Query | None:
        """The query's terms found in the namespace, with IDF and bounds; words found in
        more than :data:`COMMON` of the namespace's memories are dropped when rarer ones
        remain (their IDF is near 0, yet their postings are most of the index), unless
        the namespace is small. None when no term occurs."""
        n, ntokens = db.execute("SELECT items, ntokens FROM memory_namespaces WHERE nsid = ?",
                                (nsid,)).fetchone()
        if not n or not ntokens:
            return None
        stems = list(dict.fromkeys(self._stem(db, words).values()))
        combos: dict[str, list[tuple[int, int, int]]] = {}
        df: dict[str, int] = {}
        for t, tf, dl, count in fetch_in(
                db, "SELECT term, tf, dl, n FROM memory_impacts WHERE nsid = ? AND "
                "term IN ({})", stems, nsid):
            combos.setdefault(t, []).append((tf, dl, count))
            df[t] = df.get(t, 0) + count
        terms = [t for t in stems if t in df]
        if not terms:
            return None
        if len(terms) > 1 and n >= PRUNE_MIN:
            terms = ([t for t in terms if df[t] <= COMMON * n]
                     or [min(terms, key=lambda t: (df[t], t))])
        idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in terms}
        return _Query(terms, idf, combos, ntokens / n)

    def _stem(self, db: sqlite3.Connection, words: list[str]) -> dict[str, str]:
        new = [w for w in words if w not in self._stems]
        if new:
            with _transaction(db):
                for w, tfs in zip(new, self._tokens(db, new), strict=True):
                    for term in tfs:
                        self._stems[w] = term
            if len(self._stems) > 100_000:
                self._stems.clear()
        return {w: self._stems[w] for w in words if w in self._stems}

    async def usage(self, namespace: str) -> int:
        async with self._conn.execute(
            "SELECT nbytes FROM memory_namespaces WHERE name = ?", (namespace,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def _top_k(db: sqlite3.Connection, nsid: int, q: _Query, k: int, where: str,
           args: list[Any]) -> list[tuple[int, float]]:
    """The ``k`` best ``(seq, score)`` for ``q`` in namespace ``nsid``, best first, ties
    by ``seq``: Fagin's threshold algorithm (Fagin, Lotem and Naor, "Optimal aggregation
    algorithms for middleware", PODS 2001) over impact-ordered postings.

    Each term's postings are read best weight first (a weight is fixed by ``(tf, dl)``,
    so the index on (nsid, term, tf, dl, seq) serves each weight's postings in ``seq``
    order); every memory met is scored completely at once (point lookups of the other
    terms). A memory not met yet scores at most S, the sum of the weights at the read
    positions; once the k-th best score is above S, or equal to it with a smaller
    ``seq`` than any unread posting of those weights, the top k is final. Exhausted
    lists end the loop too, so the result is always the exhaustive ranking's."""
    cursors = [_Cursor(nsid, t, q.groups[t]) for t in q.terms]
    seen: set[int] = set()
    done: dict[int, float] = {}
    batch = FIRST_BATCH
    while True:
        # read where the bound falls soonest: the list whose current weight group has
        # the fewest postings left (the others' heads still count through `after`)
        c = min((c for c in cursors if not c.exhausted), key=lambda c: c.left)
        new = [s for s in c.read(db, min(batch, c.left + 1)) if s not in seen]
        seen.update(new)
        _complete(db, nsid, q, new, done, where, args)
        best = sorted(done.items(), key=lambda x: (-x[1], x[0]))[:k]
        live = [c for c in cursors if not c.exhausted]
        if not live:
            return best
        if len(best) == k:
            theta, tseq = best[-1][1], best[-1][0]
            bound = sum(c.weight for c in live)
            if theta > bound + 1e-8:
                return best
            if theta >= bound - 1e-8 and tseq <= max(c.after for c in live):
                return best  # a memory scoring the bound would lose the tie
        batch = min(2 * batch, 4096)


class _Cursor:
    """Sorted access to one term's postings: weight groups best first, each in seq
    order. ``weight`` and ``after`` (the last seq read in the group) give the bound."""

    def __init__(self, nsid: int, term: str, groups: list[_Group]) -> None:
        self.nsid, self.term, self.groups = nsid, term, groups
        self.group = 0
        self.after = -1
        self.taken = 0   # postings read in the current group

    @property
    def exhausted(self) -> bool:
        return self.group >= len(self.groups)

    @property
    def weight(self) -> float:
        return 0.0 if self.exhausted else self.groups[self.group][0]

    @property
    def left(self) -> int:
        """Postings not read yet in the current group."""
        return 0 if self.exhausted else self.groups[self.group][1] - self.taken

    def read(self, db: sqlite3.Connection, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n and not self.exhausted:
            combos = self.groups[self.group][2]
            want = n - len(out)
            # one indexed range per (tf, dl), merged by seq (an IN over row values would
            # not use the index)
            rows = list(islice(heapq.merge(*(db.execute(
                "SELECT seq FROM memory_postings WHERE nsid = ? AND term = ? AND tf = ? "
                "AND dl = ? AND seq > ? ORDER BY seq LIMIT ?",
                (self.nsid, self.term, tf, dl, self.after, want)).fetchall()
                for tf, dl in combos)), want))
            out += [r[0] for r in rows]
            self.taken += len(rows)
            if len(rows) < want:
                self.group += 1
                self.after = -1
                self.taken = 0
            else:
                self.after = rows[-1][0]
        return out


def _complete(db: sqlite3.Connection, nsid: int, q: _Query, seqs: list[int],
              done: dict[int, float], where: str, args: list[Any]) -> None:
    """Add to ``done`` the complete scores of the memories ``seqs`` that pass the
    metadata filter (point lookups: the key is (nsid, term, seq))."""
    join = " JOIN memory_items m ON m.seq = p.seq" if where else ""
    with_q, qargs = q.values()
    for i in range(0, len(seqs), 500):
        chunk = seqs[i:i + 500]
        done.update(db.execute(
            f"{with_q}SELECT p.seq, {_score_sql(q.avgdl)} FROM q JOIN memory_postings p "
            f"ON p.nsid = ? AND p.term = q.term AND p.seq IN ({', '.join('?' * len(chunk))})"
            f"{join} WHERE 1{where} GROUP BY p.seq", (*qargs, nsid, *chunk, *args)
        ).fetchall())


def fetch_in(db: sqlite3.Connection, sql: str, values: Sequence[Any], *head: Any
              ) -> list[Any]:
    """Rows of ``sql`` whose ``IN ({})`` gets ``values`` (in chunks of 500)."""
    out: list[Any] = []
    for i in range(0, len(values), 500):
        chunk = values[i:i + 500]
        out += db.execute(sql.format(", ".join("?" * len(chunk))), (*head, *chunk)).fetchall()
    return out


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
