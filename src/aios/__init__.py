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
    PermissionDenied,
    PluginError,
    ProcessError,
    ProcessKilled,
    QuotaExceeded,
    RateLimited,
    SyscallError,
)
from aios.kernel import Kernel
from aios.memory.conversation import Conversation
from aios.process import Process, ProcessInfo, ProcessState
from aios.syscalls import ChatResult, LLMChat, ToolCallRequest, Usage
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
    "SyscallError",
    "ToolCallRequest",
    "Usage",
    "__version__",
]
