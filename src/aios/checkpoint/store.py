"""Checkpoints: what a preempted generation needs to resume exactly, kept in SQLite.

A checkpoint row holds the request, the text and token ids produced so far and the
sampling state, with a checksum over all of it; the KV snapshot, when the backend gives
one, lives in ``kv_blobs`` under its content hash. Rows are replaced (not appended) at
each switch of the same syscall, so a syscall's checkpoint is O(its output), and both the
row and its blob are deleted when the syscall completes. A cap on blob bytes evicts the
least recently used blobs; a checkpoint whose blob is gone resumes from its text.

Loading verifies everything: a bad checksum, a missing row or a blob whose hash does not
match is reported as such (never a wrong continuation); the kernel then falls back.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from aios.state import StateDB
from aios.syscalls import LLMChat

__all__ = ["Checkpoint", "CheckpointStore", "ContextSwitch", "Restored"]


class Checkpoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    pid: int
    syscall_id: str
    request: LLMChat
    text: str
    token_ids: list[int]
    completion_tokens: int
    sampling: dict[str, Any]
    backend: str
    model: str
    kv_hash: str | None = None
    kv_bytes: int = 0
    created_at: float

    def body(self) -> str:
        return self.model_dump_json()


class ContextSwitch(BaseModel):
    """One preemption and its resume, as recorded per process."""

    model_config = ConfigDict(frozen=True)

    syscall_id: str
    tokens: int
    save_s: float
    save_bytes: int
    restore_s: float = 0.0
    restore_bytes: int = 0
    restored: Literal["kv", "text", "recompute", "pending"] = "pending"
    reprefill_tokens: int = 0
    """Tokens the resume had to prefill again (estimated: the prompt, plus the output so
    far when continuing from text; 0 from a KV snapshot): the switch's recompute cost."""


@dataclass(frozen=True, slots=True)
class Restored:
    """The outcome of loading a checkpoint."""

    checkpoint: Checkpoint | None
    kv: bytes | None
    mode: Literal["kv", "text", "recompute"]
    reason: str = ""
    nbytes: int = 0


def _sha(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


class CheckpointStore:
    def __init__(self, db: StateDB, *, kv_cap_bytes: int) -> None:
        self.db = db
        self.kv_cap_bytes = kv_cap_bytes
        self.kv_total = 0
        self.evictions = 0

    async def save(self, ckpt: Checkpoint, kv: bytes | None) -> int:
        """Store (replacing) the checkpoint of ``ckpt.syscall_id``; returns bytes written."""
        conn = self.db.conn
        kv_hash = None
        written = 0
        if kv is not None and len(kv) <= self.kv_cap_bytes:
            kv_hash = _sha(kv)
            cur = await conn.execute("SELECT 1 FROM kv_blobs WHERE hash = ?", (kv_hash,))
            if await cur.fetchone() is None:
                await self._make_room(len(kv))
                await conn.execute(
                    "INSERT INTO kv_blobs (hash, data, size, last_used) VALUES (?, ?, ?, ?)",
                    (kv_hash, kv, len(kv), time.monotonic()))
                self.kv_total += len(kv)
                written += len(kv)
        old = await self._kv_hash_of(ckpt.syscall_id)
        ckpt = ckpt.model_copy(update={"kv_hash": kv_hash, "kv_bytes": len(kv or b"")})
        body = ckpt.body()
        await conn.execute(
            "INSERT OR REPLACE INTO checkpoints (syscall_id, pid, body, checksum, kv_hash, "
            "created) VALUES (?, ?, ?, ?, ?, ?)",
            (ckpt.syscall_id, ckpt.pid, body, _sha(body), kv_hash, ckpt.created_at))
        if old is not None and old != kv_hash:
            await self._drop_blob(old)
        await conn.commit()
        return written + len(body)

    async def load(self, syscall_id: str) -> Restored:
        conn = self.db.conn
        cur = await conn.execute(
            "SELECT body, checksum, kv_hash FROM checkpoints WHERE syscall_id = ?", (syscall_id,))
        row = await cur.fetchone()
        if row is None:
            return Restored(None, None, "recompute", "checkpoint row missing")
        body, checksum, kv_hash = row
        if _sha(body) != checksum:
            return Restored(None, None, "recompute", "checkpoint checksum mismatch")
        try:
            ckpt = Checkpoint.model_validate_json(body)
        except ValidationError as exc:
            return Restored(None, None, "recompute", f"checkpoint unreadable: {exc}")
        if ckpt.syscall_id != syscall_id or ckpt.kv_hash != kv_hash:
            return Restored(None, None, "recompute", "checkpoint does not match its row")
        n = len(body)
        if kv_hash is None:
            return Restored(ckpt, None, "text", "no KV snapshot", n)
        cur = await conn.execute("SELECT data FROM kv_blobs WHERE hash = ?", (kv_hash,))
        blob = await cur.fetchone()
        if blob is None:
            return Restored(ckpt, None, "text", "KV snapshot evicted or missing", n)
        data = bytes(blob[0])
        if len(data) != ckpt.kv_bytes or _sha(data) != kv_hash:
            return Restored(ckpt, None, "text", "KV snapshot corrupt (hash mismatch)", n)
        await conn.execute("UPDATE kv_blobs SET last_used = ? WHERE hash = ?",
                           (time.monotonic(), kv_hash))
        return Restored(ckpt, data, "kv", "", n + len(data))

    async def delete(self, syscall_id: str) -> None:
        """The syscall completed (or was abandoned): drop its row and its blob."""
        conn = self.db.conn
        kv_hash = await self._kv_hash_of(syscall_id)
        await conn.execute("DELETE FROM checkpoints WHERE syscall_id = ?", (syscall_id,))
        if kv_hash is not None:
            await self._drop_blob(kv_hash)
        await conn.commit()

    async def _kv_hash_of(self, syscall_id: str) -> str | None:
        cur = await self.db.conn.execute(
            "SELECT kv_hash FROM checkpoints WHERE syscall_id = ?", (syscall_id,))
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def _drop_blob(self, kv_hash: str) -> None:
        conn = self.db.conn
        cur = await conn.execute("SELECT COUNT(*) FROM checkpoints WHERE kv_hash = ?", (kv_hash,))
        row = await cur.fetchone()
        if row is not None and row[0] == 0:
            cur = await conn.execute("SELECT size FROM kv_blobs WHERE hash = ?", (kv_hash,))
            size = await cur.fetchone()
            if size is not None:
                await conn.execute("DELETE FROM kv_blobs WHERE hash = ?", (kv_hash,))
                self.kv_total -= size[0]

    async def _make_room(self, need: int) -> None:
        conn = self.db.conn
        while self.kv_total + need > self.kv_cap_bytes:
            cur = await conn.execute(
                "SELECT hash, size FROM kv_blobs ORDER BY last_used LIMIT 1")
            row = await cur.fetchone()
            if row is None:
                return
            await conn.execute("DELETE FROM kv_blobs WHERE hash = ?", (row[0],))
            self.kv_total -= row[1]
            self.evictions += 1

    async def stats(self) -> dict[str, int]:
        cur = await self.db.conn.execute("SELECT COUNT(*) FROM checkpoints")
        rows = await cur.fetchone()
        cur = await self.db.conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM kv_blobs")
        blobs = await cur.fetchone()
        assert rows is not None and blobs is not None
        return {"checkpoints": rows[0], "kv_blobs": blobs[0], "kv_bytes": blobs[1],
                "kv_evictions": self.evictions}
