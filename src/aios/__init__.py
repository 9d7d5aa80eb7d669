"""aios: an asyncio microkernel for LLM agents.

Agents are ``async def agent(ctx, *args)`` coroutines spawned on a :class:`Kernel`; every
use of a shared resource goes through ``ctx`` and is scheduled by the kernel.
Plugin authors: see :mod:`aios.abc` (interfaces); test helpers live in :mod:`aios.testing`.
"""

from aios._core.kernel import Kernel
from aios.access.approval import ApprovalDecision, ApprovalRequest
from aios.access.capabilities import Capabilities, Quota
from aios.config import KernelConfig, LLMConfig, SchedulerConfig
from aios.context import Context, LLMStream
from aios.errors import (
    AIOSError,
    ApprovalDenied,
    BackendUnavailable,
    BadResponse,
    ConfigError,
    ContextWindowExceeded,
    InvalidSyscall,
    KernelClosedError,
    KernelInternalError,
    LLMError,
    LLMTimeout,
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
    ToolArgumentsInvalid,
    ToolError,
    ToolFailed,
    ToolNotFound,
    ToolTimeout,
)
from aios.memory.conversation import Conversation
from aios.process import Process, ProcessInfo, ProcessState
from aios.syscalls import ChatResult, LLMChat, ToolCallRequest, Usage
from aios.syscalls.memory import MemoryHit, MemoryItem
from aios.syscalls.storage import FileInfo, FileVersion
from aios.syscalls.tools import ToolResult
from aios.tools.function import tool

__version__ = "0.1.0"

__all__ = [
    "AIOSError",
    "ApprovalDecision",
    "ApprovalDenied",
    "ApprovalRequest",
    "BackendUnavailable",
    "BadResponse",
    "Capabilities",
    "ChatResult",
    "ConfigError",
    "Context",
    "ContextWindowExceeded",
    "Conversation",
    "FileInfo",
    "FileVersion",
    "InvalidSyscall",
    "Kernel",
    "KernelClosedError",
    "KernelConfig",
    "KernelInternalError",
    "LLMChat",
    "LLMConfig",
    "LLMError",
    "LLMStream",
    "LLMTimeout",
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
    "Quota",
    "QuotaExceeded",
    "RateLimited",
    "SchedulerConfig",
    "StorageConflict",
    "StorageError",
    "StorageNotFound",
    "SyscallError",
    "ToolArgumentsInvalid",
    "ToolCallRequest",
    "ToolError",
    "ToolFailed",
    "ToolNotFound",
    "ToolResult",
    "ToolTimeout",
    "Usage",
    "__version__",
    "tool",
]
