"""The byte format of a KV snapshot handed to the kernel by ``save_kv``.

Layout (little-endian)::

    b"AIOSLKV1" | u32 header_len | u32 n_tokens | u64 state_len
    | header (JSON, utf-8) | n_tokens x i32 token ids | llama.cpp state bytes

The header identifies the model and the evaluation schedule the KV was computed with and
carries a CRC-32 of the state bytes (a flipped or truncated state is refused rather than
restored: llama.cpp cannot tell corrupt KV values from good ones); the token ids are
exactly the sequence held in the KV cache. Nothing is pickled: a snapshot is
data, never code. This module must never call llama.cpp.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Snapshot", "pack", "unpack"]

MAGIC = b"AIOSLKV1"
_FIXED = struct.Struct("<IIQ")


@dataclass(frozen=True, slots=True)
class Snapshot:
    header: dict[str, Any]
    tokens: tuple[int, ...]
    state: bytes


def pack(header: dict[str, Any], tokens: tuple[int, ...] | list[int], state: bytes) -> bytes:
    header = dict(header, state_crc32=zlib.crc32(state))
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    ids = struct.pack(f"<{len(tokens)}i", *tokens)
    return b"".join((MAGIC, _FIXED.pack(len(head), len(tokens), len(state)), head, ids, state))


def unpack(blob: bytes) -> Snapshot:
    """Parse a snapshot; ``ValueError`` if it is not one or is truncated."""
    if not blob.startswith(MAGIC):
        raise ValueError("not an aios-llamacpp KV snapshot (bad magic)")
    off = len(MAGIC)
    if len(blob) < off + _FIXED.size:
        raise ValueError("truncated KV snapshot")
    n_head, n_tok, n_state = _FIXED.unpack_from(blob, off)
    off += _FIXED.size
    if len(blob) != off + n_head + 4 * n_tok + n_state:
        raise ValueError("KV snapshot length does not match its header")
    try:
        header = json.loads(blob[off : off + n_head])
    except ValueError as exc:
        raise ValueError(f"KV snapshot header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("KV snapshot header is not an object")
    off += n_head
    tokens = struct.unpack_from(f"<{n_tok}i", blob, off)
    off += 4 * n_tok
    state = blob[off:]
    if header.get("state_crc32") != zlib.crc32(state):
        raise ValueError("KV snapshot state is corrupt (CRC-32 mismatch)")
    return Snapshot(header=header, tokens=tuple(tokens), state=state)
