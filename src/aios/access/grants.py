"""The effective access of one process: its capabilities merged over its group's, compiled
once at spawn, and the answers every check needs (tool rule, LLM, memory namespace,
storage path).

Spaces: an agent's own memory namespace (``agent:<name>``) and storage space (its name)
are always read-write; its group's shared spaces (``group:<g>``) follow ``shared``
(default read-write); anything else needs a grant. A process spawned by an agent is
bounded by its parent too: each check must pass for the child and for every ancestor
(its own spaces excepted), so a spawn can narrow what a sub-agent may do, never widen it.

The module-level functions (:func:`access_of`, :func:`may_memory`, :func:`may_storage`,
:func:`tool_rule`) take a syscall context: they are what the memory and storage
managers' ``may_access`` and the tools handler call. A context without access control
(no access manager, a test's fake) gets the default rule: own spaces and own group's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from aios.access.capabilities import Capabilities, Pattern, Quota, Rule, most_specific
from aios.access.quota import Plan, plan

if TYPE_CHECKING:
    from aios.access.guard import AccessManager, GroupUsage

__all__ = [
    "ProcessAccess",
    "access_of",
    "may_memory",
    "may_storage",
    "merge",
    "tool_rule",
]

GROUP = "group:"
AGENT = "agent:"
_LEVEL = {"r": 1, "rw": 2}
_ORDER: tuple[Rule, ...] = ("allow", "ask", "deny")
_RULES: dict[str, Rule] = {r: r for r in _ORDER}


def merge(own: Capabilities | None, base: Capabilities | None) -> Capabilities:
    """``own``'s fields where set, else ``base``'s (the group's)."""
    if own is None:
        return base or Capabilities()
    if base is None:
        return own
    return Capabilities.model_construct(**{
        k: getattr(own, k) if getattr(own, k) is not None else getattr(base, k)
        for k in Capabilities.model_fields})


class ProcessAccess:
    """What one process may do, and the counters its quotas read (the process's own
    ``counters`` dict: one source of truth). Mutable only in ``awaiting`` (the tool a
    pending approval is for) and in its memo of tool rules."""

    __slots__ = ("_llm_ok", "_llms", "_memory", "_plans", "_storage", "_tool_memo",
                 "_tools", "awaiting", "caps", "counters", "default", "group",
                 "group_usage", "manager", "max_priority", "name", "parent", "pid", "quota",
                 "started_at")

    def __init__(self, manager: AccessManager | None, *, pid: int, name: str, group: str,
                 caps: Capabilities, quota: Quota | None, default: Literal["allow", "deny"],
                 counters: dict[str, float], started_at: float,
                 group_usage: GroupUsage | None = None,
                 parent: ProcessAccess | None = None) -> None:
        self.manager = manager
        self.pid = pid
        self.name = name
        self.group = group
        self.caps = caps
        self.quota = quota
        self.default = default
        self.counters = counters
        self.started_at = started_at
        self.group_usage = group_usage
        self.parent = parent
        self.awaiting: str | None = None
        """The tool whose approval this process waits for (``ps`` shows it)."""
        self.max_priority: int | None = _most_urgent(caps.max_priority,
                                         parent.max_priority if parent is not None else None)
        """The most urgent priority it may hold: its own cap and its ancestors'."""
        self._plans: dict[str, Plan] = {}
        self._tools = [(Pattern(p), r) for p, r in (caps.tools or {}).items()]
        self._tool_memo: dict[str, Rule] = {}
        self._llms = [Pattern(p) for p in caps.llms] if caps.llms is not None else None
        self._llm_ok: dict[str, bool] = {}
        self._memory = [(Pattern(k), _LEVEL[v]) for k, v in (caps.memory or {}).items()]
        self._storage = [_storage_grant(k, v) for k, v in (caps.storage or {}).items()]

    # -- tools and LLMs ----------------------------------------------------------------

    def tool_rule(self, name: str) -> Rule:
        """``allow``, ``ask`` or ``deny`` for tool ``name`` (the strictest of this
        process's rule and its ancestors')."""
        memo = self._tool_memo.get(name)
        if memo is not None:
            return memo
        found = most_specific(self._tools, name) if self._tools else None
        rule: Rule = _RULES.get(found or self.default, "deny")
        if self.parent is not None:
            rule = max(rule, self.parent.tool_rule(name), key=_ORDER.index)
        if len(self._tool_memo) < 4096:
            self._tool_memo[name] = rule
        return rule

    def may_llm(self, name: str) -> bool:
        ok = self._llm_ok.get(name)
        if ok is None:
            if self._llms is None:
                ok = self.default == "allow"
            else:
                ok = any(p.match(name) for p in self._llms)
            if ok and self.parent is not None:
                ok = self.parent.may_llm(name)
            if len(self._llm_ok) < 1024:
                self._llm_ok[name] = ok
        return ok

    # -- memory and storage ------------------------------------------------------------

    def _shared_level(self) -> int:
        shared = self.caps.shared or "rw"
        return 0 if shared == "none" else _LEVEL[shared]

    def may_memory(self, namespace: str, write: bool) -> bool:
        """May read (``write``: change) memory ``namespace``."""
        if namespace == f"{AGENT}{self.name}":
            return True
        return self._memory_local(namespace, write)

    def _memory_local(self, namespace: str, write: bool) -> bool:
        need = 2 if write else 1
        ok = (namespace == f"{GROUP}{self.group}" and self._shared_level() >= need) or any(
            level >= need and p.match(namespace) for p, level in self._memory)
        if ok and self.parent is not None:
            ok = self.parent.may_memory(namespace, write)
        return ok

    def may_storage(self, namespace: str, path: str | None, write: bool) -> bool:
        """May read (``write``: change) ``path`` of storage space ``namespace`` (a
        normalised path; ``None``: some part of the space)."""
        if namespace == self.name:
            return not namespace.startswith(GROUP)  # a name cannot pose as a group
        need = 2 if write else 1
        if namespace == f"{GROUP}{self.group}" and self._shared_level() >= need:
            ok = True
        else:
            kind, name = ("group", namespace[len(GROUP):]) if namespace.startswith(GROUP) \
                else ("agent", namespace)
            ok = any(level >= need and k == kind and match(name) and _under(path, d)
                     for k, match, d, level in self._storage)
        if ok and self.parent is not None:
            ok = self.parent.may_storage(namespace, path, write)
        return ok

    def plan(self, kind: str) -> Plan:
        """This process's quota limits that apply to syscalls of ``kind`` (memoised)."""
        found = self._plans.get(kind)
        if found is None:
            found = self._plans[kind] = plan(self.quota, kind)
        return found

    # -- what info() and ps show -------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {"caps": self.caps.model_dump(exclude_none=True),
                "quota": self.quota.limits() if self.quota is not None else {}}


def _most_urgent(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)  # lower runs first: the larger bound is the stricter


def _storage_grant(key: str, level: str) -> tuple[str, Callable[[str], Any], str, int]:
    head, _, path = key.partition("/")
    kind, _, name = head.partition(":")
    return kind, Pattern(name).match, path, _LEVEL[level]


def _under(path: str | None, directory: str) -> bool:
    if path is None or not directory:
        return True
    return path == directory or path.startswith(directory + "/")


# -- what the family handlers call -------------------------------------------------------


def access_of(sc: Any) -> ProcessAccess | None:
    """The access of the process making syscall ``sc`` (None without access control)."""
    access = getattr(getattr(sc, "ctx", None), "access", None)
    return access if isinstance(access, ProcessAccess) else None


def may_memory(sc: Any, namespace: str, write: bool) -> bool:
    """The memory manager's rule: the process's access, or own and own group's."""
    access = access_of(sc)
    if access is not None:
        return access.may_memory(namespace, write)
    return namespace in (f"{AGENT}{sc.name}", f"{GROUP}{sc.group}")


def may_storage(sc: Any, namespace: str, write: bool, path: str | None = None) -> bool:
    """The storage manager's rule: the process's access, or own and own group's."""
    access = access_of(sc)
    if access is not None:
        return access.may_storage(namespace, path, write)
    if namespace == sc.name:
        return not namespace.startswith(GROUP)
    return bool(sc.group) and namespace == f"{GROUP}{sc.group}"


def tool_rule(sc: Any, name: str) -> Rule:
    """The rule for tool ``name`` for this syscall's process (``allow`` without access
    control)."""
    access = access_of(sc)
    return access.tool_rule(name) if access is not None else "allow"
