"""aios: an asyncio microkernel for LLM agents.

Agents are ``async def agent(ctx, *args)`` coroutines spawned on a :class:`Kernel`; every
use of a shared resource goes through ``ctx`` and is scheduled by the kernel.
Plugin authors: see :mod:`aios.llm.base` and :mod:`aios.scheduler`; test helpers live in
:mod:`aios.testing`.
"""

from aios.config import KernelConfig, LLMConfig, SchedulerConfig
from aios.context import Context, LLMStream
from aios.errors import (
    AIOSError,
    BackendUnavailable,
    BadResponse,
    ConfigError,
    ContextWindowExceeded,
    InvalidSyscall,
    KernelClosedError,
    LLMError,
    MemoryNotFound,
    MemoryStoreError,
    ModelNotFound,
    PathInvalid,
    PermissionDenied,
    PluginError,
    ProcessError,
    ProcessKilled,
    QuotaExceeded,
    RateLimited,
    StorageConflict,
    StorageError,
    StorageNotFound,
    SyscallError,
)
from aios.kernel import Kernel
from aios.memory.conversation import Conversation
from aios.process import Process, ProcessInfo, ProcessState
from aios.syscalls import ChatResult, LLMChat, ToolCallRequest, Usage
from aios.syscalls.storage import FileInfo, FileVersion
from aios.syscalls.memory import MemoryHit, MemoryItem

__version__ = "0.1.0"

__all__ = [
    "AIOSError",
    "BackendUnavailable",
    "BadResponse",
    "ChatResult",
    "ConfigError",
    "Context",
    "ContextWindowExceeded",
    "FileInfo",
    "FileVersion",
    "Conversation",
    "InvalidSyscall",
    "Kernel",
    "KernelClosedError",
    "KernelConfig",
    "LLMChat",
    "LLMConfig",
    "LLMError",
    "LLMStream",
    "MemoryHit",
    "MemoryItem",
    "MemoryNotFound",
    "MemoryStoreError",
    "ModelNotFound",
    "PathInvalid",
    "PermissionDenied",
    "PluginError",
    "Process",
    "ProcessError",
    "ProcessInfo",
    "ProcessKilled",
    "ProcessState",
    "QuotaExceeded",
    "RateLimited",
    "SchedulerConfig",
    "StorageConflict",
    "StorageError",
    "StorageNotFound",
    "SyscallError",
    "ToolCallRequest",
    "Usage",
    "__version__",
]
