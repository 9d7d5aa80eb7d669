"""``VecMemoryStore`` (entry point ``vec`` in ``aios.memory``): hybrid BM25 + vector search.

The built-in store (:class:`aios.memory.store.SQLiteMemoryStore`) keeps the items and the
BM25 index in the kernel's state database, which stays the source of truth. This store
adds one unit vector per memory (:mod:`aios_memory_vec.embed`), partitioned by
namespace (the index ``(nsid, rid)``), so a k-nearest-neighbour search reads its
namespace's vectors only; ``sqlite-vec`` checks each vector as it is stored
(``vec_f32``) and computes the exact distances (``vec_distance_cosine``).

Where the vectors live: a file next to the state file (``<state_path>.vec``; in memory
for ``state_path=":memory:"``), through its own aiosqlite connection on ``sqlean`` (a
SQLite build that may load extensions; Python's stdlib ``sqlite3`` here cannot). Not the
state file itself: a second connection writing it would contend for its one write lock
with the kernel's connection, and a transaction could not span both connections anyway.
So a write commits the items first, then the vectors; a crash in between leaves vectors
missing or stale, and :meth:`VecMemoryStore.start` repairs that by comparing the two
(vectors are derived data: embedding again gives the same ones). Searches skip vectors
whose memory is gone.

Why not ``sqlite-vec``'s ``vec0`` table: its k-NN is a brute-force scan costing about
1 us per row whatever the width (80-150 ms for one partition of 100k vectors on this
2-core machine, measured), and reading one vector back by rowid loads its whole chunk
of 1,024 vectors (400 such reads: 16 ms at 10k memories). So nearest neighbours come in
two steps: numpy, on one thread, scans a RAM copy of the searched partition's
64-dimension prefixes (WordLlama is trained as a Matryoshka model: a prefix,
renormalised, is itself an embedding; 256 bytes per memory, read from the partition at
its first search and kept in step with writes), and its best ``RESCORE x n`` are ranked
by the exact 256-dimension cosine, computed by ``sqlite-vec`` on the stored rows.

Ranking: reciprocal-rank fusion (Cormack, Clarke and Buettcher, "Reciprocal rank fusion
outperforms Condorcet and individual rank learning methods", SIGIR 2009): each memory
scores ``sum(1 / (60 + rank))`` over the BM25 and the vector rankings (ranks from 1,
the best ``max(2 k, 20)`` of each); ties go to the better single rank, then the id.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite
import anyio
import numpy as np
import sqlean
import sqlite_vec

from aios.errors import MemoryStoreError
from aios.memory.store import SQLiteMemoryStore, fetch_in, filter_sql
from aios.syscalls.memory import MemoryHit, MemoryItem
from aios_memory_vec.embed import Embedder, load_embedder

__all__ = ["CANDIDATES", "RRF_K", "VecMemoryStore", "vec_path"]

RRF_K = 60
"""The constant of reciprocal-rank fusion (the paper's value)."""
CANDIDATES = 20
"""Memories taken from each ranking (at least 2 k): past rank 20 a memory adds at most
1/81 to a fused score, less than a rank-1 memory's lead."""
REPAIR_BATCH = 512
COARSE_DIM = 64
"""Width of the prefixes scanned in RAM (a WordLlama Matryoshka size)."""
RESCORE = 4
"""Coarse candidates per wanted neighbour, ranked again by the exact cosine."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vec_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vec_items (
    rid       INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: RAM copies key on it
    nsid      INTEGER NOT NULL,
    id        TEXT NOT NULL UNIQUE,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS vec_items_partition ON vec_items (nsid, rid);
"""


def vec_path(state_path: str) -> str:
    """The vector file for a state file: ``<state_path>.vec`` (":memory:" stays)."""
    return state_path if state_path == ":memory:" else f"{state_path}.vec"


_ERRORS = (sqlite3.Error, sqlean.Error)
"""The stdlib's and sqlean's (a separate build of the same module) database errors."""


def _connect(path: str) -> sqlite3.Connection:
    conn: sqlite3.Connection = sqlean.connect(path, isolation_level=None)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _prefix(vectors: np.ndarray) -> np.ndarray:
    """The unit ``COARSE_DIM`` prefixes of ``vectors`` (rows)."""
    head = np.ascontiguousarray(vectors[:, :COARSE_DIM], dtype=np.float32)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(head, norms, out=np.zeros_like(head), where=norms > 0)
    return unit


def _coarse(rids: np.ndarray, matrix: np.ndarray, vector: np.ndarray, m: int) -> list[int]:
    """The ``m`` rids whose prefixes are nearest to ``vector``'s (any order)."""
    scores = matrix @ _prefix(vector[None, :])[0]
    if m < len(rids):
        return [int(r) for r in rids[np.argpartition(-scores, m - 1)[:m]]]
    return [int(r) for r in rids]


class _Partition:
    """The RAM copy of one namespace's vector prefixes: rows of ``matrix`` and their
    ``rids``. Changes are queued and applied at the next :meth:`arrays`."""

    def __init__(self, rids: np.ndarray, matrix: np.ndarray) -> None:
        self.rids, self.matrix = rids, matrix
        self._added: list[tuple[int, np.ndarray]] = []
        self._removed: set[int] = set()

    def add(self, rid: int, prefix: np.ndarray) -> None:
        self._added.append((rid, prefix))

    def remove(self, rid: int) -> None:
        self._removed.add(rid)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._removed:
            keep = ~np.isin(self.rids, np.fromiter(self._removed, dtype=np.int64))
            self.rids, self.matrix = self.rids[keep], self.matrix[keep]
            self._added = [(r, v) for r, v in self._added if r not in self._removed]
            self._removed.clear()
        if self._added:
            self.rids = np.concatenate([self.rids, [r for r, _ in self._added]])
            self.matrix = np.vstack([self.matrix, np.stack([v for _, v in self._added])])
            self._added.clear()
        return self.rids, self.matrix


class VecMemoryStore(SQLiteMemoryStore):
    """The SQLite store plus vectors: search fuses BM25 and cosine rankings."""

    embedder: Embedder
    _vec: aiosqlite.Connection
    _parts: dict[int, _Partition]

    async def start(self) -> None:
        await super().start()
        self._parts = {}
        self.embedder = await anyio.to_thread.run_sync(load_embedder)
        path = vec_path(str(self.services.db.path))
        try:
            self._vec = await aiosqlite.Connection(lambda: _connect(path), 64)
            await self._vec.executescript(_SCHEMA.format(dim=self.embedder.dim))
            await self._repair()
        except _ERRORS as exc:
            raise MemoryStoreError(f"memory store 'vec': cannot open the vectors in {path}: "
                                   f"{exc}") from None

    async def close(self) -> None:
        vec = getattr(self, "_vec", None)
        if vec is not None:
            await vec.close()
        await super().close()

    async def _embed(self, texts: list[str]) -> np.ndarray:
        return await anyio.to_thread.run_sync(self.embedder, texts)

    # -- writes -----------------------------------------------------------------------

    async def write(self, items: Sequence[MemoryItem], deleted: Sequence[str] = ()) -> None:
        await super().write(items, deleted)  # the source of truth first
        vectors = await self._embed([i.text for i in items]) if items else None
        try:
            await self._put([(i.id, self._nsids[i.namespace]) for i in items], vectors,
                            deleted)
        except _ERRORS as exc:
            # the items are written; the handler keeps them dirty and writes them again
            raise MemoryStoreError(f"memory store 'vec': vectors not written ({exc}); "
                                   "the next write or start repairs them") from None

    async def _put(self, keys: list[tuple[str, int]], vectors: np.ndarray | None,
                   deleted: Sequence[str]) -> None:
        """Replace the vectors of ``keys`` (id, nsid) and drop those of ``deleted``, in one
        transaction of the vector file."""
        gone = [*deleted, *(id for id, _ in keys)]

        def tx(db: sqlite3.Connection) -> tuple[list[tuple[int, int]], list[int]]:
            db.execute("BEGIN")
            try:
                old = fetch_in(db, "SELECT rid, nsid FROM vec_items WHERE id IN ({})", gone)
                db.executemany("DELETE FROM vec_items WHERE rid = ?", [(r,) for r, _ in old])
                new: list[int] = []
                for (id, nsid), v in zip(keys, vectors if vectors is not None else [],
                                         strict=True):
                    rid = db.execute("INSERT INTO vec_items (nsid, id, embedding) "
                                     "VALUES (?, ?, vec_f32(?))", (nsid, id, v.tobytes())
                                     ).lastrowid
                    new.append(int(rid or 0))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return old, new

        old, new = await self._vec._execute(tx, self._vec._conn)  # type: ignore[no-untyped-call]
        # the committed change, in the RAM copies of loaded partitions
        for rid, nsid in old:
            if nsid in self._parts:
                self._parts[nsid].remove(rid)
        if vectors is not None and new:
            prefixes = _prefix(vectors)
            for (_, nsid), rid, p in zip(keys, new, prefixes, strict=True):
                if nsid in self._parts:
                    self._parts[nsid].add(rid, p)

    async def _repair(self) -> None:
        """Make the vectors match the items: embed missing ones, drop stale ones (and all
        of them when the model changed)."""
        async with self._vec.execute("SELECT value FROM vec_meta WHERE key = 'model'") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != self.embedder.name:
            await self._vec.execute("DELETE FROM vec_items")
            await self._vec.execute("INSERT OR REPLACE INTO vec_meta VALUES ('model', ?)",
                                    (self.embedder.name,))
        async with self._vec.execute("SELECT id FROM vec_items") as cur:
            have = {r[0] for r in await cur.fetchall()}
        async with self._conn.execute(
                "SELECT m.id, m.text, n.nsid FROM memory_items m JOIN memory_namespaces n "
                "ON n.name = m.namespace") as cur:
            items = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
        stale = sorted(have - items.keys())
        missing = sorted(items.keys() - have)
        if stale:
            await self._put([], None, stale)
        for i in range(0, len(missing), REPAIR_BATCH):
            ids = missing[i:i + REPAIR_BATCH]
            vectors = await self._embed([items[id][0] for id in ids])
            await self._put([(id, items[id][1]) for id in ids], vectors, ())

    # -- search -----------------------------------------------------------------------

    async def search(self, namespace: str, query: str, k: int,
                     filter: Mapping[str, Any] | None = None) -> list[MemoryHit]:
        nsid = self._nsids.get(namespace)
        if nsid is None:
            return []
        n = max(2 * k, CANDIDATES)
        lexical = await super().search(namespace, query, n, filter)
        semantic = await self._nearest(nsid, query, n, filter)
        ranks: dict[str, list[int]] = {}
        for ranking in ([h.id for h in lexical], semantic):
            for rank, id in enumerate(ranking, 1):
                ranks.setdefault(id, []).append(rank)
        fused = sorted(ranks, key=lambda id: (-sum(1 / (RRF_K + r) for r in ranks[id]),
                                              min(ranks[id]), id))[:k]
        known = {h.id: (h.text, h.metadata) for h in lexical}
        need = [id for id in fused if id not in known]
        for id, text, meta in await self._rows(need):
            known[id] = (text, json.loads(meta))
        return [MemoryHit(id=id, text=known[id][0], metadata=known[id][1],
                          score=sum(1 / (RRF_K + r) for r in ranks[id]), namespace=namespace)
                for id in fused if id in known]

    async def _nearest(self, nsid: int, query: str, n: int,
                       filter: Mapping[str, Any] | None) -> list[str]:
        """Ids of the ``n`` memories of ``nsid`` nearest to ``query`` (cosine), passing
        ``filter``, nearest first (ties by id). A memory orthogonal or opposite to the
        query (cosine <= 0) is no match."""
        vector = (await self._embed([query]))[0]
        if not vector.any():
            return []  # a query of no known token is near nothing
        want = n * 4 if filter else n
        try:
            rids, matrix = await self._partition(nsid)
            if not len(rids):
                return []
            m = min(len(rids), RESCORE * want)
            top = await anyio.to_thread.run_sync(_coarse, rids, matrix, vector, m)
            async with self._vec.execute(
                    "SELECT id, vec_distance_cosine(embedding, ?) FROM vec_items "
                    f"WHERE rid IN ({', '.join('?' * len(top))})",
                    (vector.tobytes(), *top)) as cur:
                near: dict[str, float] = {r[0]: r[1] for r in await cur.fetchall()}
            rows = sorted(near.items(), key=lambda x: (x[1], x[0]))[:want]
        except _ERRORS as exc:
            raise MemoryStoreError(f"memory store 'vec': vector search failed: {exc}"
                                   ) from None
        ids: list[str] = [id for id, distance in rows if distance < 1.0]  # cosine > 0
        if filter:
            where, args = filter_sql(filter)
            keep = {r[0] for r in await self._select(
                f"SELECT m.id FROM memory_items m WHERE m.id IN ({{}}){where}", ids, args)}
            ids = [id for id in ids if id in keep]
        return ids[:n]

    async def _partition(self, nsid: int) -> tuple[np.ndarray, np.ndarray]:
        """The RAM copy of ``nsid``'s prefixes (read from its partition the first time)."""
        part = self._parts.get(nsid)
        if part is None:
            async with self._vec.execute("SELECT rid, embedding FROM vec_items "
                                         "WHERE nsid = ? ORDER BY rid", (nsid,)) as cur:
                rows = list(await cur.fetchall())
            dim = self.embedder.dim
            full = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                    .reshape(len(rows), dim))
            part = self._parts[nsid] = _Partition(
                np.array([r[0] for r in rows], dtype=np.int64), _prefix(full))
        return part.arrays()

    async def _rows(self, ids: list[str]) -> list[Any]:
        return await self._select(
            "SELECT id, text, metadata FROM memory_items WHERE id IN ({})", ids, [])

    async def _select(self, sql: str, ids: list[str], tail: list[Any]) -> list[Any]:
        if not ids:
            return []
        out: list[Any] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            async with self._conn.execute(sql.format(", ".join("?" * len(chunk))),
                                          (*chunk, *tail)) as cur:
                out += await cur.fetchall()
        return out
