"""The one exception tree of aios.

Every failure an agent, an embedding app or a plugin author can see comes from here::

    AIOSError
     ├── ConfigError                 invalid KernelConfig / TOML / environment value
     ├── PluginError                 a plugin failed to import or to validate (names it)
     ├── KernelClosedError           a call on a kernel that is not running
     ├── KernelInternalError         a bug in the kernel or a syscall handler (not a backend)
     ├── ProcessError                misuse of a process handle (bad agent, unknown pid)
     │    └── ProcessKilled          wait() on a process that was killed
     └── SyscallError                a syscall failed; carries the syscall
          ├── InvalidSyscall         bad arguments (names the field), unknown kind
          ├── PermissionDenied       a capability is missing (names process, resource)
          ├── QuotaExceeded          a quota is used up (names quota, limit, use)
          ├── LLMError               failures of an LLM resource
          │    ├── BackendUnavailable    unreachable / 5xx / failed after retries
          │    │    └── LLMTimeout       a deadline passed (first token or whole call)
          │    ├── RateLimited           429 after retries (carries retry_after)
          │    ├── ModelNotFound         unknown model (lists the available ones)
          │    ├── ContextWindowExceeded prompt longer than the model's window
          │    └── BadResponse           malformed or truncated backend output
          ├── ToolError              failures of the tool manager
          │    ├── ToolNotFound          no such tool (lists close names)
          │    ├── ToolArgumentsInvalid  arguments fail the tool's schema (names fields)
          │    ├── ToolTimeout           the call passed its timeout_s
          │    ├── ToolFailed            the tool raised (wraps its exception)
          │    └── ApprovalDenied        an irreversible call was not approved
          ├── MemoryStoreError       failures of the memory manager
          │    └── MemoryNotFound        no memory with that id (in reach)
          └── StorageError           failures of the storage manager
               ├── StorageNotFound       no such path or version
               ├── StorageConflict       if_version is stale
               └── PathInvalid           a path escapes, is absolute, too long...

A preemption is not an error and is not represented here: it is an internal signal of
the scheduler that never reaches an agent. Cancellation is anyio's own.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AIOSError",
    "ApprovalDenied",
    "BackendUnavailable",
    "BadResponse",
    "ConfigError",
    "ContextWindowExceeded",
    "InvalidSyscall",
    "KernelClosedError",
    "KernelInternalError",
    "LLMError",
    "LLMTimeout",
    "MemoryNotFound",
    "MemoryStoreError",
    "ModelNotFound",
    "PathInvalid",
    "PermissionDenied",
    "PluginError",
    "ProcessError",
    "ProcessKilled",
    "QuotaExceeded",
    "RateLimited",
    "StorageConflict",
    "StorageError",
    "StorageNotFound",
    "SyscallError",
    "ToolArgumentsInvalid",
    "ToolError",
    "ToolFailed",
    "ToolNotFound",
    "ToolTimeout",
]


class AIOSError(Exception):
    """Root of every error aios raises on purpose."""


class ConfigError(AIOSError):
    """A configuration value is invalid. ``key`` is the dotted path of the bad key."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class PluginError(AIOSError):
    """A plugin could not be loaded or does not satisfy its interface."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        self.message = message
        super().__init__(f"plugin {plugin!r}: {message}")


class KernelClosedError(AIOSError):
    """The kernel is not running (not entered yet, or already left)."""


class KernelInternalError(AIOSError):
    """A bug in the kernel or in a syscall handler: not the agent's and not a backend's
    fault. ``syscall`` is the syscall being served, if any; the cause is chained."""

    def __init__(self, message: str, *, syscall: Any = None) -> None:
        self.syscall = syscall
        super().__init__(message)


class ProcessError(AIOSError):
    """Misuse of a process: not a coroutine function, unknown pid, bad state change."""


class ProcessKilled(ProcessError):
    """The process was killed before it returned a result."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        super().__init__(f"process {pid} ({name}) was killed")


class SyscallError(AIOSError):
    """A syscall failed. ``syscall`` is the syscall object (or None outside a syscall)."""

    def __init__(self, message: str, *, syscall: Any = None) -> None:
        self.syscall = syscall
        super().__init__(message)


class InvalidSyscall(SyscallError):
    """A syscall's arguments are invalid (unknown resource, bad field value)."""


class PermissionDenied(SyscallError):
    """The calling process may not use this resource."""


class QuotaExceeded(SyscallError):
    """The calling process (or its group, or a namespace) used up a quota.

    ``quota`` names it (``"tokens"``, ``"storage.bytes"``...), ``limit`` and ``used`` are
    in that quota's unit."""

    def __init__(
        self, message: str, *, syscall: Any = None, quota: str | None = None,
        limit: float | None = None, used: float | None = None,
    ) -> None:
        self.quota = quota
        self.limit = limit
        self.used = used
        super().__init__(message, syscall=syscall)


class LLMError(SyscallError):
    """An LLM resource failed to serve a syscall."""


class BackendUnavailable(LLMError):
    """The backend cannot be reached or keeps failing (after retries)."""


class LLMTimeout(BackendUnavailable):
    """A generation passed a deadline: ``deadline`` is ``"first_token"`` or ``"total"``."""

    def __init__(self, message: str, *, syscall: Any = None, deadline: str = "total") -> None:
        self.deadline = deadline
        super().__init__(message, syscall=syscall)


class RateLimited(LLMError):
    """The backend keeps answering 'too many requests' (after retries)."""

    def __init__(
        self, message: str, *, syscall: Any = None, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, syscall=syscall)


class ModelNotFound(LLMError):
    """The backend does not serve the requested model."""

    def __init__(
        self, message: str, *, syscall: Any = None, available: list[str] | None = None
    ) -> None:
        self.available = list(available or [])
        if self.available:
            message = f"{message} (available: {', '.join(self.available)})"
        super().__init__(message, syscall=syscall)


class ContextWindowExceeded(LLMError):
    """The prompt (plus max_tokens where it matters) does not fit the model's window."""


class BadResponse(LLMError):
    """The backend answered with something malformed or truncated."""


class ToolError(SyscallError):
    """A tool syscall failed. ``tool`` names the tool (when known)."""

    def __init__(self, message: str, *, syscall: Any = None, tool: str | None = None) -> None:
        self.tool = tool
        super().__init__(message, syscall=syscall)


class ToolNotFound(ToolError):
    """No tool of that name is installed (or visible to the caller)."""


class ToolArgumentsInvalid(ToolError):
    """The arguments do not satisfy the tool's schema. ``errors`` lists each bad field as
    ``{"loc": "a.b", "msg": ..., "type": ...}``."""

    def __init__(
        self, message: str, *, syscall: Any = None, tool: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        self.errors = list(errors or [])
        super().__init__(message, syscall=syscall, tool=tool)


class ToolTimeout(ToolError):
    """The tool call ran past its timeout and was cancelled."""


class ToolFailed(ToolError):
    """The tool itself raised or returned something unusable; the cause is chained."""


class ApprovalDenied(ToolError):
    """An irreversible (or ``ask``) call was denied, or no approval came in time.
    ``reason`` is what the approver said."""

    def __init__(
        self, message: str, *, syscall: Any = None, tool: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.reason = reason
        super().__init__(message, syscall=syscall, tool=tool)


class MemoryStoreError(SyscallError):
    """A memory syscall failed (bad text, metadata, filter or query; a broken store)."""


class MemoryNotFound(MemoryStoreError):
    """No memory with that id in the namespaces the caller may reach."""


class StorageError(SyscallError):
    """A storage syscall failed."""


class StorageNotFound(StorageError):
    """No such path, or no such version of it."""


class StorageConflict(StorageError):
    """``if_version`` did not match the current version (optimistic concurrency)."""

    def __init__(
        self, message: str, *, syscall: Any = None, current: int | None = None
    ) -> None:
        self.current = current
        super().__init__(message, syscall=syscall)


class PathInvalid(StorageError):
    """A path is absolute, escapes its namespace, holds control characters, or is too
    long."""
