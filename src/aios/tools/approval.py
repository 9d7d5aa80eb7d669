"""Approval of irreversible tool calls: the request an approver sees, and how its
answer is read.

An approver is ``aios.Kernel(..., approver=fn)``: an async callable taking an
:class:`ApprovalRequest` and returning ``True``/``"approve"`` to let the call run, or
``False``/``"deny"``/anything else to refuse it; an object with ``approved`` (and
optionally ``reason``) attributes works too. With no approver, irreversible calls are
denied (default deny). This module only decides; it never runs the tool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from aios.errors import ApprovalDenied

__all__ = ["ApprovalRequest", "Approver", "ask"]


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One irreversible call waiting for a decision."""

    pid: int
    agent: str
    group: str
    tool: str
    arguments: dict[str, Any]
    call_id: str | None = None


Approver = Callable[[ApprovalRequest], Awaitable[Any]]


async def ask(approver: Approver | None, request: ApprovalRequest, *, timeout_s: float,
              syscall: Any = None) -> None:
    """Return if ``approver`` approves ``request`` within ``timeout_s`` seconds; raise
    :class:`ApprovalDenied` (with the approver's reason) otherwise."""
    if approver is None:
        raise ApprovalDenied(
            f"tool {request.tool!r} is irreversible and no approver is configured "
            "(default: deny)", syscall=syscall, tool=request.tool, reason="no approver")
    with anyio.move_on_after(timeout_s) as scope:
        answer = await approver(request)
    if scope.cancelled_caught:
        raise ApprovalDenied(
            f"tool {request.tool!r}: no approval within {timeout_s:g} s",
            syscall=syscall, tool=request.tool, reason="timeout")
    approved, reason = _read(answer)
    if not approved:
        raise ApprovalDenied(
            f"tool {request.tool!r}: call denied" + (f": {reason}" if reason else ""),
            syscall=syscall, tool=request.tool, reason=reason)


def _read(answer: Any) -> tuple[bool, str | None]:
    if isinstance(answer, bool):
        return answer, None
    if isinstance(answer, str):
        return answer.lower() in ("approve", "approved", "allow", "yes"), answer
    approved = getattr(answer, "approved", None)
    if isinstance(approved, bool):
        return approved, getattr(answer, "reason", None)
    return False, f"unreadable approver answer {answer!r}"
