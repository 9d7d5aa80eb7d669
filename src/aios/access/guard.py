"""The access manager: capabilities and quotas enforced at the door, for every family.

One :class:`AccessManager` per kernel. At spawn it resolves a process's effective access
(its own caps over its group's, bounded by the spawning agent's) into a
:class:`~aios.access.grants.ProcessAccess`; its :meth:`AccessManager.guard` runs at the
door, synchronously, before a syscall is queued, so a refused syscall uses no capacity.
Refusals are :class:`~aios.errors.PermissionDenied` (naming the process, the resource
and the capability it lacks) or :class:`~aios.errors.QuotaExceeded`, and are written to
the audit log, since the door tells instruments only of syscalls that passed.

What is checked where: the LLM resource, the tool's rule and the quotas here, for every
syscall; memory namespaces named by ``memory.add``/``memory.search`` and every storage
path here; memories reached by id (``get``/``update``/``delete``) in the memory manager,
which answers "not found" for one out of reach, so ids cannot be probed. The memory and
storage managers' ``may_access`` consult the same :class:`ProcessAccess` (one rule).
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aios.access.capabilities import GroupPolicy, Quota, bad_caps
from aios.access.grants import GROUP, ProcessAccess, access_of, merge
from aios.access.quota import Plan, check_quotas, plan
from aios.errors import ConfigError, PathInvalid, PermissionDenied, ProcessError, QuotaExceeded
from aios.storage.paths import normalize

if TYPE_CHECKING:
    from aios.access.audit import AuditLog
    from aios.config import AccessConfig

__all__ = ["AccessManager", "GroupUsage"]

_STORAGE_WRITES = frozenset({"storage.write", "storage.delete", "storage.rollback"})


class GroupUsage:
    """The processes of one group with a group quota: their counters, summed on demand."""

    __slots__ = ("_plans", "members", "quota", "started_at")

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self.members: list[dict[str, float]] = []
        self.started_at = time.time()
        self._plans: dict[str, Plan] = {}

    def plan(self, kind: str) -> Plan:
        found = self._plans.get(kind)
        if found is None:
            found = self._plans[kind] = plan(self.quota, kind)
        return found

    def used(self, keys: tuple[str, ...]) -> float:
        return sum(c.get(k, 0.0) for c in self.members for k in keys)


class AccessManager:
    """Capabilities, privilege groups and quotas of one kernel (``kernel.access``)."""

    def __init__(self, config: AccessConfig, *, audit: AuditLog | None = None) -> None:
        self.config = config
        self.audit = audit
        self._groups: dict[str, GroupUsage] = {}
        self._checks: dict[str, Callable[[ProcessAccess, Any, Any], None]] = {
            "llm": self._check_llm, "tools": self._check_tools,
            "memory": self._check_memory, "storage": self._check_storage,
        }

    # -- spawn and process control -----------------------------------------------------

    def attach(self, proc: Any, *, caps: Any = None, quota: Any = None,
               parent: ProcessAccess | None = None, group_given: bool = False
               ) -> ProcessAccess:
        """The access of a process about to start (``proc``: its pid, name, group,
        priority and counters are set). Raises :class:`ConfigError` for caps or a quota
        of the wrong type, :class:`ProcessError` for an unknown group,
        :class:`PermissionDenied` for a spawn or a priority beyond what is allowed."""
        err = bad_caps(caps)
        if err is not None:
            raise err
        if quota is not None and not isinstance(quota, Quota):
            raise ConfigError(f"quota must be an aios.Quota, got {type(quota).__name__}")
        groups = self.config.groups
        if group_given and groups and proc.group not in groups:
            raise ProcessError(f"unknown group {proc.group!r}: the config defines "
                               f"{', '.join(sorted(groups))} ([access.groups.<name>])")
        policy: GroupPolicy | None = groups.get(proc.group)
        who = f"process {proc.pid} ({proc.name})"
        if parent is not None:
            if not self._may(parent.caps.spawn, parent):
                raise PermissionDenied(f"{parent.name!r} (pid {parent.pid}) may not spawn "
                                       "processes: it lacks the capability spawn=True")
            if proc.group != parent.group:
                raise PermissionDenied(f"{parent.name!r} (pid {parent.pid}) may spawn only "
                                       f"into its own group {parent.group!r}, not "
                                       f"{proc.group!r}")
        effective = merge(caps, policy.caps() if policy is not None else None)
        usage = None
        if policy is not None and policy.quota is not None:
            usage = self._groups.get(proc.group)
            if usage is None:
                usage = self._groups[proc.group] = GroupUsage(policy.quota)
        access = ProcessAccess(
            self, pid=proc.pid, name=proc.name, group=proc.group, caps=effective,
            quota=quota if quota is not None else (policy.process_quota if policy else None),
            default=self.config.default, counters=proc.counters,
            started_at=proc.started_at, group_usage=usage, parent=parent)
        self._check_priority(access, proc.priority, f"spawn {who} at")
        if usage is not None:
            usage.members.append(proc.counters)
        return access

    def check_control(self, caller: ProcessAccess | None, target: Any, what: str,
                      priority: int | None = None) -> None:
        """Refuse ``what`` (``kill``, ``suspend``, ``resume``, ``set_priority``) on
        ``target`` when a priority passes its cap or ``caller`` (the agent whose code
        asks; None: the embedding app) lacks the capability ``signal``, or the target
        is of another group."""
        access: ProcessAccess | None = getattr(target, "access", None)
        if priority is not None and access is not None:
            self._check_priority(access, priority, f"set process {target.pid} "
                                 f"({target.name}) to")
        if caller is None or caller.pid == target.pid:
            return
        if not self._may(caller.caps.signal, caller):
            raise PermissionDenied(f"{caller.name!r} (pid {caller.pid}) may not {what} "
                                   f"process {target.pid} ({target.name}): it lacks the "
                                   "capability signal=True")
        if caller.group != target.group:
            raise PermissionDenied(f"{caller.name!r} (pid {caller.pid}) may not {what} "
                                   f"process {target.pid} ({target.name}): another group "
                                   f"({target.group!r})")

    def _may(self, flag: bool | None, access: ProcessAccess) -> bool:
        return flag if flag is not None else access.default == "allow"

    @staticmethod
    def _check_priority(access: ProcessAccess, priority: int, what: str) -> None:
        cap = access.max_priority
        if cap is not None and priority < cap:
            raise PermissionDenied(f"may not {what} priority {priority}: its capability "
                                   f"max_priority is {cap} (lower runs first)")

    # -- the guard -----------------------------------------------------------------------

    def guard(self, sc: Any, syscall: Any) -> None:
        """The door's guard: refuse ``syscall`` before it is queued, or return."""
        access = access_of(sc)
        if access is None:
            return  # spawned before access control was switched on: the defaults
        kind: str = syscall.kind
        try:
            check = self._checks.get(kind.partition(".")[0])
            if check is not None:
                check(access, sc, syscall)
            elif access.default == "deny":
                raise PermissionDenied(f"{_who(access)} may not make {kind} syscalls: "
                                       "access.default is 'deny' and no capability grants "
                                       "that family")
            if access.quota is not None or access.group_usage is not None:
                check_quotas(access, kind, syscall)
        except (PermissionDenied, QuotaExceeded) as exc:
            exc.syscall = syscall
            if self.audit is not None:
                self.audit.refused(sc, syscall, exc)
            raise

    def _check_llm(self, access: ProcessAccess, sc: Any, syscall: Any) -> None:
        name = getattr(syscall, "llm", "default")
        if not access.may_llm(name):
            granted = ", ".join(access.caps.llms or ()) or "none"
            raise PermissionDenied(f"{_who(access)} may not use LLM {name!r} (resource "
                                   f"llm:{name}): missing capability llms ~ {name!r} "
                                   f"(granted: {granted})")

    def _check_tools(self, access: ProcessAccess, sc: Any, syscall: Any) -> None:
        if syscall.kind == "tools.call":
            names: tuple[str, ...] = (syscall.name,)
        else:
            names = getattr(syscall, "names", None) or ()
        for name in names:
            if access.tool_rule(name) == "deny":
                raise PermissionDenied(f"{_who(access)} may not call tool {name!r} "
                                       f"(resource tools:{name}): missing capability "
                                       f"tools ~ {name!r}")

    def _check_memory(self, access: ProcessAccess, sc: Any, syscall: Any) -> None:
        kind = syscall.kind
        if kind not in ("memory.add", "memory.search"):
            return  # by id: the memory manager checks the memory's namespace
        ns = syscall.namespace or f"agent:{access.name}"
        write = kind == "memory.add"
        if not access.may_memory(ns, write):
            level = "rw" if write else "r"
            raise PermissionDenied(f"{_who(access)} may not {'write' if write else 'read'} "
                                   f"memory namespace {ns!r} (resource "
                                   f"{getattr(syscall, 'resource', 'memory')}): missing "
                                   f"capability memory[{ns!r}] = {level!r}")

    def _check_storage(self, access: ProcessAccess, sc: Any, syscall: Any) -> None:
        kind = syscall.kind
        raw = getattr(syscall, "path", None)
        if raw is None:
            raw = getattr(syscall, "prefix", None)
        if raw is None:
            return  # search: the storage manager keeps to the spaces in reach
        try:
            namespace, path, shown = _split(access.name, raw)
        except PathInvalid:
            return  # the storage manager refuses it, naming the problem
        write = kind in _STORAGE_WRITES
        if not access.may_storage(namespace, path, write):
            level = "rw" if write else "r"
            raise PermissionDenied(f"{_who(access)} may not {'write' if write else 'read'} "
                                   f"{shown!r} (resource storage): missing capability "
                                   f"storage[{shown!r}] = {level!r}")


def _who(access: ProcessAccess) -> str:
    return f"process {access.pid} ({access.name}, group {access.group})"


def _split(own: str, raw: str) -> tuple[str, str, str]:
    """(storage namespace, normalised path, the space and path as a grant names them) of
    a path as an agent gives it; the storage manager's own parsing, without its checks."""
    for marker, kind in ((GROUP, "group"), ("agent:", "agent")):
        if raw.startswith(marker):
            head, _, rest = raw.partition("/")
            name = unicodedata.normalize("NFC", head[len(marker):])
            if not name:
                raise PathInvalid(f"{marker} needs a name")
            path = normalize(rest, max_bytes=1 << 20, allow_empty=True)
            ns = f"{GROUP}{name}" if kind == "group" else name
            return ns, path, f"{kind}:{name}/{path}"
    path = normalize(raw, max_bytes=1 << 20, allow_empty=True)
    return own, path, f"agent:{own}/{path}"
