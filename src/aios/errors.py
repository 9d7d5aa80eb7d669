"""The one exception tree of aios.

Every failure an agent, an embedding app or a plugin author can see comes from here::

    AIOSError
     ├── ConfigError                 invalid KernelConfig / TOML / environment value
     ├── PluginError                 a plugin failed to import or to validate (names it)
     ├── KernelClosedError           a call on a kernel that is not running
     ├── ProcessError                misuse of a process handle (bad agent, unknown pid)
     │    └── ProcessKilled          wait() on a process that was killed
     └── SyscallError                a syscall failed; carries the syscall
          ├── InvalidSyscall         bad arguments (names the field)
          ├── PermissionDenied
          ├── QuotaExceeded
          └── LLMError               failures of an LLM resource
               ├── BackendUnavailable    unreachable / 5xx / timeouts after retries
               ├── RateLimited           429 after retries (carries retry_after)
               ├── ModelNotFound         unknown model (lists the available ones)
               ├── ContextWindowExceeded prompt longer than the model's window
               └── BadResponse           malformed or truncated backend output

A preemption is not an error and is not represented here: it is an internal signal of
the scheduler that never reaches an agent. Cancellation is anyio's own.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AIOSError",
    "BackendUnavailable",
    "BadResponse",
    "ConfigError",
    "ContextWindowExceeded",
    "InvalidSyscall",
    "KernelClosedError",
    "LLMError",
    "ModelNotFound",
    "PermissionDenied",
    "PluginError",
    "ProcessError",
    "ProcessKilled",
    "QuotaExceeded",
    "RateLimited",
    "SyscallError",
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
    """The calling process used up a quota."""


class LLMError(SyscallError):
    """An LLM resource failed to serve a syscall."""


class BackendUnavailable(LLMError):
    """The backend cannot be reached or keeps failing (after retries)."""


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
