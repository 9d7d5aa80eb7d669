"""The storage sandbox: what a path may be, and which space it names.

Every path an agent gives is normalised here before a store sees it, so a store only
ever holds canonical, relative, ``/``-separated paths:

* Unicode NFC (two spellings of one name are one file: ``"e\\u0301"`` is ``"\\u00e9"``);
* no absolute paths, no ``..`` component (rejected, not resolved: a path that needs
  ``..`` is a mistake worth naming), no backslashes, no control characters (NUL
  included), no lone surrogates, no empty path; ``.`` components and repeated ``/`` are
  dropped; a trailing ``/`` is refused in a file's path (it names a directory) and
  dropped in a listing's prefix;
* at most ``max_path_bytes`` UTF-8 bytes in all and 255 per component.

Spaces (namespaces): a plain path is in the caller's own space, keyed by its agent
name; ``group:<g>/rest`` is group ``g``'s shared space and ``agent:<name>/rest`` another
agent's (reachable only through :func:`may_access`, which the access-control manager
may replace). There are no symlinks: a path names a file and nothing else.

This module does no I/O and never raises anything but :class:`~aios.errors.PathInvalid`
and :class:`~aios.errors.PermissionDenied`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aios.errors import PathInvalid, PermissionDenied

if TYPE_CHECKING:
    from aios.abc import SyscallContext

__all__ = [
    "GROUP_PREFIX",
    "Target",
    "may_access",
    "normalize",
    "own_namespace",
    "resolve",
]

GROUP_PREFIX = "group:"
AGENT_PREFIX = "agent:"
MAX_COMPONENT_BYTES = 255


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved path: the space (``namespace``) and the path inside it; ``shown`` is
    how results name it back to the agent (with its ``group:``/``agent:`` prefix)."""

    namespace: str
    path: str
    prefix: str = ""

    @property
    def shown(self) -> str:
        return f"{self.prefix}{self.path}" if self.prefix else self.path


def normalize(path: str, *, max_bytes: int = 1024, allow_empty: bool = False) -> str:
    """The canonical form of a relative path, or :class:`PathInvalid` naming why not."""
    if not isinstance(path, str):
        raise PathInvalid(f"a path must be a string, got {type(path).__name__}")
    path = unicodedata.normalize("NFC", path)
    for ch in path:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            raise PathInvalid(f"path {_short(path)} holds a control character "
                              f"(U+{ord(ch):04X})")
        if cat == "Cs":
            raise PathInvalid(f"path {_short(path)} holds a lone surrogate (U+{ord(ch):04X}): "
                              "not valid Unicode, so not storable as UTF-8")
    if "\\" in path:
        raise PathInvalid(f"path {_short(path)} holds a backslash: use '/' to separate")
    if path.startswith("/"):
        raise PathInvalid(f"path {_short(path)} is absolute: paths are relative to the "
                          "agent's own space")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathInvalid(f"path {_short(path)} holds '..': paths cannot leave their space")
    for part in parts:
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise PathInvalid(f"path component {_short(part)} is longer than "
                              f"{MAX_COMPONENT_BYTES} bytes")
    if parts and parts[0].startswith((GROUP_PREFIX, AGENT_PREFIX)):
        # './agent:bob/x' would be stored as 'agent:bob/x' in the caller's own space and
        # then read back as bob's: a space prefix only counts at the very start.
        raise PathInvalid(f"path {_short(path)}: {parts[0].split(':')[0]}: may only begin a "
                          "path (agent:<name>/... or group:<g>/...), not follow './'")
    out = "/".join(parts)
    if not out and not allow_empty:
        raise PathInvalid(f"path {path!r} is empty")
    if path.endswith("/") and not allow_empty:
        raise PathInvalid(f"path {_short(path)} ends with '/': it names a directory, not a "
                          "file")
    size = len(out.encode())
    if size > max_bytes:
        raise PathInvalid(f"path {_short(out)} is {size} bytes long (at most {max_bytes})")
    return out


def own_namespace(sc: SyscallContext) -> str:
    """The caller's own space: its agent name."""
    return sc.name


def resolve(sc: SyscallContext, path: str, *, max_bytes: int = 1024,
            allow_empty: bool = False, write: bool = False) -> Target:
    """Split ``path`` into its space and normalised path, and check the caller may
    reach that space (:func:`may_access`)."""
    prefix = ""
    namespace = own_namespace(sc)
    if isinstance(path, str):
        for marker in (GROUP_PREFIX, AGENT_PREFIX):
            if path.startswith(marker):
                head, _, rest = path.partition("/")
                name = unicodedata.normalize("NFC", head[len(marker):])
                if not name or any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
                    raise PathInvalid(f"path {_short(path)}: {marker} needs a name, as "
                                      f"'{marker}<name>/file'")
                if not rest and not allow_empty:
                    raise PathInvalid(f"path {_short(path)} names no file: expected "
                                      f"'{marker}<name>/<file>'")
                prefix = f"{marker}{name}/"
                namespace = f"{GROUP_PREFIX}{name}" if marker == GROUP_PREFIX else name
                path = rest
                break
    target = Target(namespace, normalize(path, max_bytes=max_bytes, allow_empty=allow_empty),
                    prefix)
    if not may_access(sc, target.namespace, write):
        what = "write to" if write else "read"
        raise PermissionDenied(f"agent {sc.name!r} may not {what} the space of "
                               f"{target.prefix.rstrip('/') or target.namespace!r}")
    return target


def may_access(sc: SyscallContext, namespace: str, write: bool) -> bool:
    """Whether the caller may reach ``namespace`` (``write``: to change it).

    Its own space, its group's shared space (as its group allows) and what its
    capabilities grant (:mod:`aios.access.grants`; the door checked the path within).
    """
    from aios.access import grants  # late: aios.access imports this module

    return grants.may_storage(sc, namespace, write)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
