"""What a process may do (:class:`Capabilities`) and how much (:class:`Quota`): data only.

Both are frozen pydantic models, given per process (``kernel.spawn(..., caps=, quota=)``)
or per privilege group in the config (``[access.groups.<name>]``, a :class:`GroupPolicy`).
Every field of :class:`Capabilities` is ``None`` by default, meaning "as the group says,
else as ``access.default`` says": a process's own caps replace its group's field by field.

Patterns are shell globs (``*``, ``?``, ``[...]``, matched case-sensitively with
:func:`fnmatch.fnmatchcase`), checked when the model is built: a malformed pattern is an
error naming the field, never a pattern that silently matches nothing. The most specific
matching pattern decides (a pattern without wildcards beats one with; then the longer
one), so ``{"files.*": "allow", "files.delete_*": "ask"}`` reads as it is meant.

This module imports nothing of the kernel (the config imports it) and does no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator

from aios._strict import StrictModel
from aios.errors import ConfigError, PathInvalid
from aios.storage.paths import normalize

__all__ = ["Capabilities", "GroupPolicy", "Level", "Pattern", "Quota", "Rule"]

Rule = Literal["allow", "ask", "deny"]
"""A tool rule: run it, run it once a human approves, or refuse it."""
Level = Literal["r", "rw"]
"""A grant on a memory namespace or storage prefix: read, or read and write."""

_GLOB_CHARS = re.compile(r"^[A-Za-z0-9_.:*?\[\]!-]+$")
_SEVERITY = {"allow": 0, "ask": 1, "deny": 2}


class Pattern:
    """One compiled glob: ``match(name)``, and its specificity for tie-breaking."""

    __slots__ = ("literal", "match", "specificity", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.literal = not any(c in text for c in "*?[")
        self.specificity = (1 if self.literal else 0, len(text.rstrip("*")))
        self.match = re.compile(fnmatch.translate(text)).fullmatch


def check_glob(text: Any, what: str, *, charset: re.Pattern[str] | None = _GLOB_CHARS) -> str:
    """``text`` if it is a well-formed glob; ValueError naming the problem otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what}: a pattern must be a non-empty string, got {text!r}")
    if charset is not None and not charset.match(text):
        bad = sorted({c for c in text if not charset.match(c)})
        raise ValueError(f"{what}: pattern {text!r} holds characters not allowed in a name "
                         f"({''.join(bad)!r}; use letters, digits, _ . : - and * ? [...])")
    elif charset is None and not text.isprintable():
        raise ValueError(f"{what}: pattern {text!r} holds a control character")
    depth = 0
    for c in text:  # fnmatch would take an unclosed '[' literally: refuse it instead
        if c == "[":
            if depth:
                raise ValueError(f"{what}: pattern {text!r} nests '[' inside '[...]'")
            depth = 1
        elif c == "]" and depth:
            depth = 0
    if depth or "[]" in text:
        raise ValueError(f"{what}: pattern {text!r} has an unclosed or empty '[...]'")
    return text




class Capabilities(StrictModel):
    """What one process (or every process of a group) may use. ``None``: inherit.

    * ``tools``: a list of tool-name patterns (an allowlist: anything else is denied),
      or rules ``{pattern: "allow" | "ask" | "deny"}`` (a tool no pattern matches follows
      ``access.default``). ``"ask"`` needs approval, as ``irreversible=True`` tools do.
    * ``llms``: patterns of LLM resource names (``"default"``, ``"gpt-*"``).
    * ``memory``: extra namespaces ``{"agent:bob": "r", "group:lab": "rw"}`` (globs in
      the name); ``storage``: extra path prefixes ``{"agent:bob/reports": "r"}`` (a
      directory: it covers ``reports/...``, never ``reports2``). An agent's own spaces
      are always read-write; another agent's are reachable only through these.
    * ``shared``: the process's own group's shared memory and storage space.
    * ``max_priority``: the most urgent priority it may hold (lower runs first).
    * ``spawn`` / ``signal``: whether its code may spawn processes, and kill, suspend,
      resume or re-prioritise other processes of its group.
    """

    tools: dict[str, Rule] | None = None
    llms: tuple[str, ...] | None = None
    memory: dict[str, Level] | None = None
    storage: dict[str, Level] | None = None
    shared: Literal["rw", "r", "none"] | None = None
    max_priority: int | None = None
    spawn: bool | None = None
    signal: bool | None = None

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("must be a list of patterns or a table {pattern = rule}, "
                             f"not one string ({value!r}): write [{value!r}]")
        if isinstance(value, list | tuple | set | frozenset):
            rules: dict[str, str] = {str(p) if isinstance(p, str) else p: "allow"
                                     for p in value}
            rules.setdefault("*", "deny")  # a list is an allowlist
            return rules
        return value

    @field_validator("tools")
    @classmethod
    def _tool_patterns(cls, value: dict[str, Rule] | None) -> dict[str, Rule] | None:
        for pattern in value or {}:
            check_glob(pattern, "tools")
        return value

    @field_validator("llms", mode="before")
    @classmethod
    def _llm_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f"must be a list of patterns, not one string: write [{value!r}]")
        return value

    @field_validator("llms")
    @classmethod
    def _llm_patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            check_glob(pattern, "llms")
        return value

    @field_validator("memory")
    @classmethod
    def _namespaces(cls, value: dict[str, Level] | None) -> dict[str, Level] | None:
        for key in value or {}:
            kind, sep, name = key.partition(":")
            if not sep or kind not in ("agent", "group"):
                raise ValueError(f"memory: unknown namespace {key!r}: write 'agent:<name>' "
                                 "or 'group:<group>'")
            check_glob(name, f"memory: {key!r}", charset=None)
        return value

    @field_validator("storage")
    @classmethod
    def _prefixes(cls, value: dict[str, Level] | None) -> dict[str, Level] | None:
        if value is None:
            return None
        out: dict[str, Level] = {}
        for key, level in value.items():
            head, _, rest = key.partition("/")
            kind, sep, name = head.partition(":")
            if not sep or kind not in ("agent", "group"):
                raise ValueError(f"storage: unknown space in {key!r}: write "
                                 "'agent:<name>/<dir>' or 'group:<group>/<dir>'")
            check_glob(name, f"storage: {key!r}", charset=None)
            try:
                path = normalize(rest, max_bytes=1 << 20, allow_empty=True)
            except PathInvalid as exc:
                raise ValueError(f"storage: {key!r}: {exc}") from None
            out[f"{head}/{path}" if path else head] = level
        return out


class Quota(StrictModel):
    """Limits on one process (or, as a group's ``quota``, on all of its processes
    together). ``None``: no limit. Counted by the kernel's own accounting
    (``proc.info()``); going over raises :class:`aios.QuotaExceeded` at the next syscall
    the quota concerns (a token quota stops LLM calls, not a last storage write).

    Units: tokens; calls; seconds (``tool_s`` of tool run time, ``wall_s`` since the
    process, or the group's first process, started); bytes written to storage.
    """

    tokens: int | None = Field(default=None, ge=0)
    """Prompt plus completion tokens."""
    tokens_in: int | None = Field(default=None, ge=0)
    tokens_out: int | None = Field(default=None, ge=0)
    llm_calls: int | None = Field(default=None, ge=0)
    tool_calls: int | None = Field(default=None, ge=0)
    tool_s: float | None = Field(default=None, ge=0)
    wall_s: float | None = Field(default=None, ge=0)
    storage_bytes: int | None = Field(default=None, ge=0)

    def limits(self) -> dict[str, float]:
        """The set limits, by quota name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class GroupPolicy(Capabilities):
    """``[access.groups.<name>]``: the capabilities every process of the group starts
    with, plus ``quota`` on the group as a whole and ``process_quota`` on each process."""

    quota: Quota | None = None
    process_quota: Quota | None = None

    def caps(self) -> Capabilities:
        return Capabilities.model_construct(
            **{k: getattr(self, k) for k in Capabilities.model_fields})


def most_specific(rules: Sequence[tuple[Pattern, str]], name: str) -> str | None:
    """The value of the most specific pattern matching ``name`` (ties: the most severe
    rule), or None when none matches."""
    best: tuple[tuple[int, int], int] | None = None
    value: str | None = None
    for pattern, rule in rules:
        if pattern.match(name):
            key = (pattern.specificity, _SEVERITY.get(rule, 0))
            if best is None or key > best:
                best, value = key, rule
    return value


def bad_caps(value: Any) -> ConfigError | None:
    """A ConfigError when ``value`` is neither None nor a :class:`Capabilities`."""
    if value is None or isinstance(value, Capabilities):
        return None
    return ConfigError(f"caps must be an aios.Capabilities, got {type(value).__name__}")
