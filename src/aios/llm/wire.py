"""The one table between aios errors and OpenAI-style HTTP errors, used both ways.

``aios sim-serve`` (and any aios HTTP front door) turns an error into a status, an OpenAI
error ``type`` and ``code`` with :func:`error_to_wire`; the ``openai`` backend turns a
server's status and code back into an error class with :func:`error_class_from_wire`.
A round-trip test keeps the two directions in step. Codes follow OpenAI's error
reference (``rate_limit_exceeded``, ``context_length_exceeded``, ``model_not_found``...).
"""

from __future__ import annotations

from typing import NamedTuple

from aios.errors import (
    AIOSError,
    BackendUnavailable,
    BadResponse,
    ContextWindowExceeded,
    InvalidSyscall,
    LLMError,
    LLMTimeout,
    ModelNotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
)

__all__ = ["WIRE", "WireError", "error_class_from_wire", "error_to_wire"]


class WireError(NamedTuple):
    status: int
    type: str
    code: str


# Most specific first: lookups take the first class an error is an instance of.
WIRE: tuple[tuple[type[AIOSError], WireError], ...] = (
    (RateLimited, WireError(429, "rate_limit_error", "rate_limit_exceeded")),
    (QuotaExceeded, WireError(429, "insufficient_quota", "insufficient_quota")),
    (ContextWindowExceeded,
     WireError(400, "invalid_request_error", "context_length_exceeded")),
    (ModelNotFound, WireError(404, "invalid_request_error", "model_not_found")),
    (PermissionDenied, WireError(403, "permission_error", "permission_denied")),
    (InvalidSyscall, WireError(400, "invalid_request_error", "invalid_request")),
    (LLMTimeout, WireError(504, "server_error", "timeout")),
    (BadResponse, WireError(502, "server_error", "bad_response")),
    (BackendUnavailable, WireError(503, "server_error", "backend_unavailable")),
    (LLMError, WireError(500, "server_error", "llm_error")),
)


def error_to_wire(exc: BaseException) -> WireError:
    """Status, type and code for ``exc`` (500 ``server_error`` for anything unknown)."""
    for cls, wire in WIRE:
        if isinstance(exc, cls):
            return wire
    return WireError(500, "server_error", "internal_error")


def error_class_from_wire(status: int, code: str | None = None) -> type[AIOSError]:
    """The error class for a server's answer: by ``code`` and status when they are one of
    ours (or OpenAI's), else by status alone: 429 ``RateLimited``, 404 ``ModelNotFound``,
    5xx and 408 ``BackendUnavailable``, any other a rejected request (``LLMError``)."""
    if code:
        for cls, wire in WIRE:
            if wire.code == code and wire.status == status:
                return cls
    if status == 429:
        return RateLimited
    if status == 404:
        return ModelNotFound
    if status >= 500 or status == 408:
        return BackendUnavailable
    return LLMError
