"""The public API, exactly (as httpx's tests/test_exported_members.py): adding or removing a
name is a decision made here, not an accident of an import."""

from __future__ import annotations

import types

import aios
import aios.abc
import aios.testing

FACADE = {
    # the kernel and its agents
    "Kernel", "KernelConfig", "SchedulerConfig", "LLMConfig", "Context", "LLMStream",
    "Process", "ProcessInfo", "ProcessState", "__version__",
    # syscall results and tools
    "ChatResult", "LLMChat", "ToolCallRequest", "Usage", "ToolResult", "tool",
    "MemoryHit", "MemoryItem", "Conversation", "FileInfo", "FileVersion",
    # access control
    "Capabilities", "Quota", "ApprovalRequest", "ApprovalDecision",
    # the error tree
    "AIOSError", "ConfigError", "PluginError", "KernelClosedError", "KernelInternalError",
    "ProcessError", "ProcessKilled", "SyscallError", "InvalidSyscall", "PermissionDenied",
    "QuotaExceeded", "LLMError", "BackendUnavailable", "LLMTimeout", "RateLimited",
    "ModelNotFound", "ContextWindowExceeded", "BadResponse", "ToolError", "ToolNotFound",
    "ToolArgumentsInvalid", "ToolTimeout", "ToolFailed", "ApprovalDenied",
    "MemoryStoreError", "MemoryNotFound", "StorageError", "StorageNotFound",
    "StorageConflict", "PathInvalid",
}

PLUGIN_INTERFACES = {
    "SyscallHandler", "SyscallContext", "KernelServices", "Guard", "Instrument", "Slot",
    "LLMBackend", "BackendCapabilities", "Chunk", "GenerationRequest", "Resume",
    "SchedulingPolicy", "ToolProvider", "ToolSpec", "MemoryStore", "StorageStore",
}


def _public(module: types.ModuleType) -> set[str]:
    return {n for n, v in vars(module).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType)}


def test_the_facade_exports_exactly_these_names() -> None:
    assert set(aios.__all__) == FACADE
    assert len(aios.__all__) == len(FACADE)  # no duplicates
    for name in aios.__all__:
        assert getattr(aios, name) is not None, name
    # nothing public leaks beyond __all__ (sub-modules aside)
    assert _public(aios) - {"abc", "testing"} <= FACADE | {"annotations"}


def test_plugin_interfaces_live_in_aios_abc() -> None:
    assert set(aios.abc.__all__) == PLUGIN_INTERFACES
    for name in aios.abc.__all__:
        assert getattr(aios.abc, name) is not None, name


def test_every_error_in_the_facade_is_an_aios_error() -> None:
    for name in aios.__all__:
        obj = getattr(aios, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, aios.AIOSError), name


def test_testing_doubles_are_public_and_documented() -> None:
    for name in aios.testing.__all__:
        assert getattr(aios.testing, name).__doc__, name
