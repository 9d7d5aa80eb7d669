"""Built-in tools over the calling agent's own memory and storage (issues 12 and 13, item 6).

Offered through the ``aios.tools`` entry points, opt-in per kernel like ``calculator``::

    [tools]
    builtin = ["memory_search", "memory_add", "files_list", "files_read", "files_write"]

Each tool's first parameter is the caller's :class:`aios.Context` (injected by the tools
handler, left out of the schema), and each acts only through that context's
``ctx.memory`` / ``ctx.storage``: a model can reach the space of the agent whose reply
named the tool and nothing else. The tools take no namespace argument, and a path that
names another space (``group:<g>/...``, ``agent:<name>/...``) is refused by argument
validation, so the model gets the usual message naming the field. Under the tool the
memory or storage syscall passes the kernel's door like any other: access control,
quotas, the ``memory:<store>`` / ``storage:<store>`` queue under the caller's priority,
accounting. Failures of that syscall (a missing file, a full namespace) reach the model
as the tool's error.

This module never opens a store itself and keeps no state.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from aios.context import Context
from aios.errors import PathInvalid
from aios.storage.paths import AGENT_PREFIX, GROUP_PREFIX, normalize
from aios.tools.function import tool

__all__ = ["files_list", "files_read", "files_write", "memory_add", "memory_search"]

READ_CHARS = 16_000
"""Most characters ``files_read`` returns at once (the rest by ``offset``), so one read
stays well inside a model's context and ``tools.max_result_chars``."""
MAX_PATH_CHECK = 1 << 16
"""Path length (bytes) checked here; the storage manager enforces its own, smaller limit."""


def _own(path: str, *, allow_empty: bool) -> str:
    """``path`` normalised, if it is a path in the caller's own space (ValueError, which
    pydantic reports under the field's name, otherwise)."""
    if path.startswith((GROUP_PREFIX, AGENT_PREFIX)):
        raise ValueError(f"{path.split('/', 1)[0]!r} names another space; these tools reach "
                         "only the calling agent's own files (use a plain relative path)")
    try:
        return normalize(path, max_bytes=MAX_PATH_CHECK, allow_empty=allow_empty)
    except PathInvalid as exc:
        raise ValueError(str(exc)) from None


def _file(path: str) -> str:
    return _own(path, allow_empty=False)


def _dir(path: str) -> str:
    return _own(path, allow_empty=True)


FilePath = Annotated[str, AfterValidator(_file), Field(
    description="Relative path in your own file space, e.g. 'notes/todo.md'.")]
DirPath = Annotated[str, AfterValidator(_dir), Field(
    description="Directory in your own file space ('' for all files).")]


# -- memory ---------------------------------------------------------------------------


@tool
async def memory_search(
    ctx: Context,
    query: Annotated[str, Field(min_length=1, max_length=1000)],
    k: Annotated[int, Field(ge=1, le=20)] = 5,
) -> list[dict[str, Any]]:
    """Search your long-term memory; returns the best matches first.

    Args:
        query: Words to look for (plain words; no query syntax).
        k: How many memories to return, 1-20.
    """
    hits = await ctx.memory.search(query, k=k)
    return [{"id": h.id, "text": h.text, "score": round(h.score, 4), "metadata": h.metadata}
            for h in hits]


@tool
async def memory_add(
    ctx: Context,
    text: Annotated[str, Field(min_length=1)],
    tags: list[str] | None = None,
) -> dict[str, str]:
    """Remember a piece of text in your long-term memory; returns its id.

    Args:
        text: What to remember, as a self-contained sentence.
        tags: Optional labels, kept as the memory's metadata.
    """
    metadata = {"source": "tool", **({"tags": tags} if tags else {})}
    return {"id": await ctx.memory.add(text, metadata=metadata)}


# -- storage --------------------------------------------------------------------------


@tool
async def files_list(ctx: Context, prefix: DirPath = "") -> list[dict[str, Any]]:
    """List the files in your own file space (under a directory, if given).

    Args:
        prefix: Directory to list ('' lists every file).
    """
    return [{"path": f.path, "version": f.version, "size": f.size,
             "modified": f.time.isoformat(timespec="seconds")}
            for f in await ctx.storage.list(prefix)]


@tool
async def files_read(
    ctx: Context,
    path: FilePath,
    offset: Annotated[int, Field(ge=0)] = 0,
    version: Annotated[int | None, Field(ge=1)] = None,
) -> str:
    """Read a text file from your own file space.

    Returns at most 16,000 characters from ``offset``; a note at the end says how to
    read on when there is more.

    Args:
        path: The file to read.
        offset: Character to start at (0: the beginning).
        version: An earlier version to read (default: the current one).
    """
    data = await ctx.storage.read(path, version=version)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path!r} is not a text file ({len(data)} bytes of binary data)"
                         ) from None
    chunk = text[offset:offset + READ_CHARS]
    rest = len(text) - offset - len(chunk)
    if rest > 0:
        chunk += (f"\n[... {rest} more characters; call files_read with "
                  f"offset={offset + len(chunk)} to read on]")
    return chunk


@tool
async def files_write(ctx: Context, path: FilePath, content: str) -> dict[str, Any]:
    """Write a text file in your own file space (a new version; earlier ones are kept).

    Args:
        path: The file to write; directories are created as needed.
        content: The file's full new text.
    """
    v = await ctx.storage.write(path, content)
    return {"path": v.path, "version": v.version, "size": v.size}
