"""Quota checks at the door: read the kernel's own accounting, never keep a copy.

A process's use is its ``Process.counters`` (what the handlers account: ``tokens_in``,
``tokens_out``, ``llm_calls``, ``tool_calls``, ``tool_s``, ``storage_bytes``), a group's
is the sum over its processes: one source of truth, so ``info()``, ``ps`` and the quota
can never disagree. A quota is checked before a syscall it concerns is queued; the
syscall that goes over it is allowed to finish (a generation is not cut mid-token), the
next one is refused with :class:`~aios.errors.QuotaExceeded` naming the quota, the
limit and the use.

Which syscalls a quota stops: token and LLM-call quotas stop ``llm.*``; tool quotas stop
``tools.call``; ``storage_bytes`` stops storage writes and rollbacks; ``wall_s`` stops
everything. An agent over its token budget can still save its work.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aios.errors import QuotaExceeded

if TYPE_CHECKING:
    from aios.access.capabilities import Quota
    from aios.access.grants import ProcessAccess

__all__ = ["Plan", "check_quotas", "plan"]

COUNTERS: dict[str, tuple[str, ...]] = {
    "tokens": ("tokens_in", "tokens_out"),
    "tokens_in": ("tokens_in",),
    "tokens_out": ("tokens_out",),
    "llm_calls": ("llm_calls",),
    "tool_calls": ("tool_calls",),
    "tool_s": ("tool_s",),
    "storage_bytes": ("storage_bytes",),
    "wall_s": (),
}
_BY_KIND: dict[str, tuple[str, ...]] = {
    "llm": ("tokens", "tokens_in", "tokens_out", "llm_calls"),
    "tools.call": ("tool_calls", "tool_s"),
    "storage.write": ("storage_bytes",),
    "storage.rollback": ("storage_bytes",),
}
_UNITS = {"tool_s": "s", "wall_s": "s", "storage_bytes": "bytes", "tool_calls": "calls",
          "llm_calls": "calls"}

Plan = tuple[tuple[str, float, tuple[str, ...]], ...]
"""(quota name, limit, counters summed) for each quota that applies to a kind."""


def plan(quota: Quota | None, kind: str) -> Plan:
    """The limits of ``quota`` that a syscall of ``kind`` must respect."""
    if quota is None:
        return ()
    names = ("wall_s", *_BY_KIND.get(kind, _BY_KIND.get(kind.partition(".")[0], ())))
    limits = quota.limits()
    return tuple((n, float(limits[n]), COUNTERS[n]) for n in names if n in limits)


def check_quotas(access: ProcessAccess, kind: str, syscall: Any) -> None:
    """Raise :class:`QuotaExceeded` if the process or its group has used up a quota that
    ``kind`` concerns."""
    for name, limit, keys in access.plan(kind):
        if keys:
            c = access.counters
            used = sum(c.get(k, 0.0) for k in keys)
        else:
            used = time.time() - access.started_at
        if used >= limit:
            raise _exceeded(f"process {access.pid} ({access.name})", name, limit, used,
                            syscall)
    usage = access.group_usage
    if usage is None:
        return
    for name, limit, keys in usage.plan(kind):
        used = usage.used(keys) if keys else time.time() - usage.started_at
        if used >= limit:
            raise _exceeded(f"group {access.group!r}", name, limit, used, syscall,
                            prefix="group.")


def _exceeded(who: str, name: str, limit: float, used: float, syscall: Any, *,
              prefix: str = "") -> QuotaExceeded:
    unit = _UNITS.get(name, "tokens")
    shown = f"{used:.3g}" if isinstance(used, float) and not used.is_integer() else f"{used:g}"
    return QuotaExceeded(
        f"{who} used up its {prefix}{name} quota: {shown} of {limit:g} {unit} "
        f"(refusing {getattr(syscall, 'kind', 'syscall')})",
        syscall=syscall, quota=f"{prefix}{name}", limit=limit, used=used)
