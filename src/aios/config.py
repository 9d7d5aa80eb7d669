"""Kernel configuration: pydantic models, built in code or read from TOML + environment.

Unknown keys are errors (a typo must not be silently ignored), and every error names the
dotted key that is wrong. Environment overrides use ``AIOS_`` plus the dotted path with
``__`` as separator, e.g. ``AIOS_SCHEDULER__POLICY=las``; values are parsed as JSON when
they parse, else taken as strings. This module must never start anything.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aios._strict import DEPTH, StrictModel
from aios.access.capabilities import GroupPolicy
from aios.errors import ConfigError

__all__ = [
    "AccessConfig",
    "KernelConfig",
    "LLMConfig",
    "MCPServerConfig",
    "MemoryConfig",
    "SchedulerConfig",
    "StorageConfig",
    "ToolsConfig",
    "config_error",
]


# AIOS_* variables that are not config keys.
_NOT_CONFIG = frozenset({"AIOS_CONFIG"})

_DEPTH = DEPTH
_Strict = StrictModel


class SchedulerConfig(_Strict):
    policy: str = "priority"
    """Name of a policy in the ``aios.schedulers`` entry-point group. The default,
    ``priority``, serves lower ``priority=`` first and, among equals, in arrival order."""
    time_slice_ms: float = Field(default=200.0, gt=0)
    """Round-robin time slice (``rr``)."""
    aging_tokens_per_s: float = Field(default=200.0, ge=0)
    """``las``: how fast a waiting syscall's attained service is forgiven (tokens/s)."""
    preempt: bool = True
    """Preempt running generations: for a more urgent class that waits, and at the end of
    a time slice (``rr``, ``las``). False: a generation, once admitted, runs to its end
    (it still yields when its process is suspended)."""
    fair_by: Literal["group", "agent"] = "group"
    """``fair``: count virtual tokens per process group or per agent."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Extra options for third-party policies."""


class LLMConfig(_Strict):
    name: str = "default"
    backend: str = "sim"
    """Name of a backend in the ``aios.llm_backends`` entry-point group."""
    model: str = ""
    base_url: str | None = None
    api_key: str | None = None
    max_concurrency: int = Field(default=8, ge=1)
    """How many generations the engine itself runs at once (its batch slots)."""
    window: int | None = Field(default=None, ge=1)
    """The kernel's admission window. Default: ``max_concurrency`` plus headroom, so the
    engine's batch stays full during hand-overs."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Per read of the connection (seconds): bounds one silent wait, not a generation."""
    first_token_timeout_s: float = Field(default=60.0, gt=0)
    """The first token of a generation (of each segment after a preemption) must come
    within this (seconds) of admission, retries included, or ``LLMTimeout`` with
    ``deadline="first_token"``. Time waiting in the kernel's queue does not count."""
    total_timeout_s: float = Field(default=600.0, gt=0)
    """A generation must end within this (seconds admitted, summed over its segments),
    or ``LLMTimeout`` with ``deadline="total"``: a server sending keep-alives forever
    cannot hold a call."""
    max_retries: int = Field(default=4, ge=0)
    """How many times the kernel queues a syscall again after a 429 (the only retry
    layer for rate limits)."""
    max_retry_after_s: float = Field(default=30.0, ge=0)
    """The longest ``Retry-After`` honoured; a server asking more fails the syscall with
    ``RateLimited`` carrying its value."""
    priority_passthrough: Literal["off", "lower_first", "higher_first"] = "off"
    """Send the syscall's priority to the server (vLLM: lower_first, SGLang: higher_first)."""
    supports_continuation: bool = False
    """The server continues a final assistant message (vLLM ``continue_final_message``)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific options (sim engine parameters, GGUF path, n_ctx...)."""

    @property
    def effective_window(self) -> int:
        if self.window is not None:
            return self.window
        return self.max_concurrency + max(1, self.max_concurrency // 4)


# -- family sections: each family's package owns the body of its class ------------------


class ToolsConfig(_Strict):
    """``[tools]``: the tool manager."""

    builtin: list[str] = Field(default_factory=list)
    """Entry points of ``aios.tools`` to enable by name, e.g. ``calculator``, ``python``
    (opt-in: an installed tool plugin is not offered to agents until named here)."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Default per-call timeout (seconds) for tools that set none."""
    max_concurrency: int = Field(default=8, ge=1)
    """Default admission window (calls at once) for tools that set none."""
    max_result_chars: int = Field(default=100_000, ge=1)
    """A tool result longer than this (as text) fails with ToolFailed instead of
    flooding the model's context."""
    approval_timeout_s: float = Field(default=300.0, gt=0)
    """How long an irreversible call waits for its approver before it is denied."""


class MCPServerConfig(_Strict):
    """One ``[[mcp]]`` server: ``command`` (stdio) or ``url`` (streamable HTTP)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    """Prefix of its tools (``<name>__<tool>``) and its resource ``tools:mcp:<name>``."""
    command: str | None = None
    """Executable of a stdio server, started (and restarted) by the kernel."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """The stdio server's environment: only ``PATH``/``HOME``-like basics are inherited,
    plus these."""
    cwd: str | None = None
    url: str | None = None
    """Endpoint of a streamable-HTTP server (``http://127.0.0.1:8000/mcp``)."""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0)
    """Per-call timeout (seconds); the call is cancelled on the server too."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """Start + initialize must finish within this (seconds), or the attempt fails."""
    max_concurrency: int = Field(default=8, ge=1)
    """Calls in flight to this server at once (its resource's window)."""
    allowed_tools: list[str] | None = None
    """Offer only these of the server's tools (its own names); None: all."""
    irreversible_tools: list[str] = Field(default_factory=list)
    """The server's tools that need approval (its own names)."""

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) or url (streamable HTTP)")
        return self


class MemoryConfig(_Strict):
    """``[memory]``: the memory manager (RAM tier with LRU-K over a persistent store)."""

    store: str = "sqlite"
    """Name of a store in the ``aios.memory`` entry-point group."""
    window: int = Field(default=1, ge=1)
    """Admission window of the ``memory:<store>`` resource. Memory syscalls run one at a
    time (one writer connection); the window only lets more wait admitted, so 1 leaves
    the whole order to the kernel's policy."""
    ram_bytes_per_agent: int = Field(default=4 * 1024 * 1024, ge=0)
    """RAM tier of each namespace (an agent's own, each group's), in bytes: text plus
    JSON metadata plus about 200 bytes per cached memory. 0: no RAM tier."""
    max_bytes_per_namespace: int = Field(default=256 * 1024 * 1024, ge=0)
    """Cap on what one namespace stores (UTF-8 text plus JSON metadata, in bytes);
    going over raises ``QuotaExceeded`` (quota ``memory.namespace_bytes``)."""
    max_text_bytes: int = Field(default=1024 * 1024, ge=1)
    """Longest text of one memory, in UTF-8 bytes (``MemoryStoreError`` beyond)."""
    lru_k: int = Field(default=2, ge=1)
    """K of LRU-K (O'Neil, O'Neil and Weikum 1993); 1 is plain LRU."""
    lru_k_correlated_period: int = Field(default=2, ge=0)
    """Correlated reference period, in references to the namespace's tier: a re-use
    within it counts as the same use (an add read back at once), and protects the entry
    from eviction."""
    lru_k_retained_period: int = Field(default=100_000, ge=0)
    """Retained information period, in references: how long an evicted memory's
    reference history is kept, so that it is recognised when it comes back."""
    write_back: bool = True
    """Keep changes in the RAM tier until eviction, a search of their namespace or
    kernel exit (fast; a crash loses them). False: write every change through at once."""


class StorageConfig(_Strict):
    """``[storage]``: the storage manager (versioned, sandboxed file spaces)."""

    store: str = "sqlite"
    """Name of a store in the ``aios.storage`` entry-point group."""
    window: int = Field(default=4, ge=1)
    """Admission window of the ``storage:<store>`` resource: storage syscalls served at
    once; the rest wait in the kernel's queue under its policy."""
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Largest single write, in bytes (``QuotaExceeded`` with quota
    ``storage.file_bytes``)."""
    quota_bytes: int | None = Field(default=1024 * 1024 * 1024, ge=0)
    """Bytes of live files (latest versions, deletes excluded) per namespace; None: no
    limit. History is bounded by retention instead."""
    quota_files: int | None = Field(default=100_000, ge=0)
    """Live files per namespace; None: no limit."""
    keep_versions: int | None = Field(default=100, ge=1)
    """Retention: a path keeps at least its newest N versions (the latest always)."""
    keep_days: float | None = Field(default=None, gt=0)
    """Retention: a path also keeps every version younger than this many days. With both
    None, nothing is ever pruned."""
    max_path_bytes: int = Field(default=1024, ge=16)
    """Longest path (UTF-8 bytes, after normalisation); one component at most 255."""
    index_max_bytes: int = Field(default=1024 * 1024, ge=0)
    """Text files up to this size are indexed for ``search`` (FTS5); larger ones and
    binary files are stored but not searchable."""


class AccessConfig(_Strict):
    """``[access]``: capabilities, privilege groups, quotas, approval, audit.

    Access control is switched on when anything here differs from the defaults (or a
    process is spawned with ``caps=``/``quota=``); off, a kernel pays nothing for it and
    agents are still kept apart by the memory and storage managers' own rule."""

    enabled: bool | None = None
    """Force the access manager on or off; None: on when configured (see above)."""
    default: Literal["allow", "deny"] = "allow"
    """Tools, LLMs, other syscall families, ``spawn`` and ``signal`` a process may use
    when neither its caps nor its group say."""
    groups: dict[str, GroupPolicy] = Field(default_factory=dict)
    """Privilege groups, ``[access.groups.<name>]``: the capabilities of its processes
    (``tools``, ``llms``, ``memory``, ``storage``, ``shared``, ``max_priority``,
    ``spawn``, ``signal``), ``quota`` on the group and ``process_quota`` on each process.
    With groups defined, ``spawn(group=...)`` must name one of them."""
    audit: bool = False
    """Write an audit log row for every syscall (and every refusal) to the state DB."""
    audit_redact: bool = False
    """Keep only the SHA-256 of a syscall's arguments in the audit log, not their text."""
    audit_args_chars: int = Field(default=256, ge=0)
    """How many characters of a syscall's arguments (as JSON) the audit log keeps."""
    audit_batch: int = Field(default=1024, ge=1)
    """Audit rows written in one transaction at most (a full batch is written at once)."""
    audit_linger_s: float = Field(default=0.05, ge=0)
    """How long the audit writer waits for a batch to fill before writing (seconds):
    how stale the log may be, never an agent's wait."""

    @property
    def configured(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return self != AccessConfig()


class KernelConfig(_Strict):
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    llm: list[LLMConfig] = Field(default_factory=list)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    mcp: list[MCPServerConfig] = Field(default_factory=list)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    state_path: str | None = None
    """SQLite state database; ``None`` keeps it in memory for the kernel's lifetime."""
    autoload_plugins: bool = True
    """Discover plugins through entry points. Off: only ``extra_plugins`` are known."""
    on_exit: Literal["cancel", "wait"] = "cancel"
    """Leaving ``async with Kernel()``: cancel running agents, or wait for them (a
    suspended process is killed then: nothing could resume it any more)."""
    block_warn_s: float = Field(default=1.0, ge=0)
    """Log ``loop.blocked`` naming the agent when the event loop is blocked this long
    (seconds; 0 turns the watchdog off)."""
    checkpoint_kv_cap_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    log_format: Literal["console", "json", "structlog", "off"] = "off"
    log_level: Literal["debug", "info", "warning", "error"] = "warning"

    @model_validator(mode="after")
    def _unique_llm_names(self) -> KernelConfig:
        names = [c.name for c in self.llm]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate llm names: {sorted(dup)}")
        mcp = [c.name for c in self.mcp]
        dup = {n for n in mcp if mcp.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate mcp server names: {sorted(dup)}")
        return self

    @field_validator("llm", "mcp", mode="before")
    @classmethod
    def _a_list(cls, value: Any, info: ValidationInfo) -> Any:
        # A model or a mapping is iterable, and pydantic would report one bogus error per
        # item it yields (llm.0 ... llm.11): say what the key needs instead.
        if isinstance(value, (list, tuple)):
            return value
        table = f"[[{info.field_name}]]"
        raise ValueError(f"must be a list (one {table} table per entry, in TOML {table}, "
                         f"not [{info.field_name}]), got {type(value).__name__}")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, origins: Mapping[str, str] | None = None
    ) -> KernelConfig:
        """Validate a mapping; ``origins`` maps dotted keys to the environment variables
        that set them, so an error names the variable."""
        token = _DEPTH.set(1)  # nested models: let pydantic merge their errors
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, origins=origins) from None
        finally:
            _DEPTH.reset(token)

    @classmethod
    def from_toml(
        cls, path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
    ) -> KernelConfig:
        """Read a TOML file, apply ``AIOS_*`` environment overrides, validate."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {p} is a directory, not a TOML file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}: "
                              f"{exc.reason}); TOML files are UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        return cls.from_env(env, base=data)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, base: Mapping[str, Any] | None = None
    ) -> KernelConfig:
        """The defaults (or ``base``) with ``AIOS_*`` environment overrides applied."""
        data = copy.deepcopy(dict(base or {}))
        origins = apply_env_overrides(data, os.environ if env is None else env)
        return cls.from_dict(data, origins=origins)


def apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply ``AIOS_A__B=value`` overrides in place; returns ``{dotted key: variable}``.

    List entries go by index (``AIOS_LLM__0__MODEL``): an index names an existing entry or
    the next new one, so ``AIOS_LLM__0__BACKEND`` defines a model when the file has none;
    variables apply in the order of their paths (indices as numbers). Every problem names
    the variable.
    """
    items: list[tuple[list[str], str, str]] = []
    for name, raw in env.items():
        if not name.startswith("AIOS_") or name in _NOT_CONFIG:
            continue
        path = name[5:].lower().split("__")
        if not all(path):
            raise ConfigError(f"environment variable {name}: an empty key in its path "
                              "(keys are separated by a double underscore)")
        items.append((path, name, raw))
    items.sort(key=lambda it: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in it[0]])
    origins: dict[str, str] = {}
    for path, name, raw in items:
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        _set_path(data, path, value, name)
        origins[".".join(path)] = name
    return origins


def _set_path(data: dict[str, Any], path: list[str], value: Any, var: str) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[:i])
        if isinstance(node, list):
            idx = _index(part, var, len(node), where)
            if idx == len(node):
                node.append({})
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if path[i + 1].isdigit() else {})
        else:
            raise ConfigError(f"environment variable {var}: {where} is a "
                              f"{type(node).__name__}, it has no key {part!r}", key=where)


def _index(part: str, var: str, length: int, where: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"environment variable {var}: {where} is a list, expected an "
                          f"index there, got {part!r}", key=where)
    idx = int(part)
    if idx > length:
        have = f"entries 0..{length - 1}" if length else "no entries"
        raise ConfigError(f"environment variable {var}: index {idx} is out of range "
                          f"({where} has {have}; a new entry takes index {length})",
                          key=f"{where}.{idx}")
    return idx


def config_error(
    exc: ValidationError,
    *,
    prefix: str = "",
    where: str = "",
    unknown: str = "unknown key",
    origins: Mapping[str, str] | None = None,
) -> ConfigError:
    """One :class:`ConfigError` from a pydantic ``ValidationError``.

    Every problem is named by its dotted key (under ``prefix``); ``where`` says which
    file or component the keys belong to; ``origins`` (dotted key -> environment variable)
    names the variable that set a bad key. Plugins validating their own options use this
    too, so every bad setting reads the same way.
    """
    problems = []
    for err in exc.errors():
        key = ".".join([*([prefix] if prefix else []), *(str(p) for p in err["loc"])])
        msg = unknown if err["type"] == "extra_forbidden" else err["msg"]
        var = _origin(key, origins or {})
        if var:
            msg = f"{msg} (set by environment variable {var})"
        problems.append((key or "<root>", msg))
    suffix = f" ({where})" if where else ""
    first_key, first_msg = problems[0]
    if len(problems) == 1:
        return ConfigError(first_msg + suffix, key=first_key)
    listed = "; ".join(f"{k}: {m}" for k, m in problems[1:])
    return ConfigError(f"{first_msg}{suffix}; also {listed}", key=first_key)


def _origin(key: str, origins: Mapping[str, str]) -> str | None:
    """The variable that set ``key`` or a table above or below it."""
    for set_key, var in origins.items():
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            return var
    return None
