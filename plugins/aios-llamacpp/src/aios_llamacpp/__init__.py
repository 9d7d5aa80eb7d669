"""aios-llamacpp: the ``llamacpp`` LLM backend plugin for aios.

Registers :class:`LlamaCppBackend` in the ``aios.llm_backends`` entry-point group. It runs
a GGUF model in-process with llama-cpp-python, yields token by token, and snapshots and
restores its KV cache so the kernel can preempt a generation at any token and resume it
exactly. This package must never do work at import time (no model loading, no llama.cpp
initialisation beyond importing the binding).
"""

from __future__ import annotations

from aios_llamacpp.backend import (
    DEFAULT_MODEL_DISTRIBUTION,
    INSTALL_HINT,
    LlamaCppBackend,
    LlamaCppOptions,
)

__all__ = ["DEFAULT_MODEL_DISTRIBUTION", "INSTALL_HINT", "LlamaCppBackend", "LlamaCppOptions"]
__version__ = "0.1.0"
