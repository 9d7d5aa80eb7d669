"""Human approval of irreversible tool calls (and calls a rule marks ``ask``).

An approver is ``aios.Kernel(..., approver=fn)``: an async callable receiving an
:class:`ApprovalRequest` and answering with an :class:`ApprovalDecision` (approve, deny
with a reason the agent sees, or approve with edited arguments); ``True`` and exactly
``"approve"`` approve too, ``False``/``"deny"``/any other string (the reason) deny.
Anything else is a denial, as is no approver (default deny), no answer within
``tools.approval_timeout_s``, or an approver that raises: where in doubt, the call does
not run. :func:`ask` only decides; it never runs the tool, and the caller holds no slot
while it waits.

:func:`terminal_approver` asks on the terminal (``aios run --approve ask``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from aios.errors import ApprovalDenied

__all__ = [
    "ApprovalDecision",
    "ApprovalRequest",
    "Approver",
    "allow_all",
    "ask",
    "deny_all",
    "terminal_approver",
]


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One call waiting for a decision: who asks (pid, agent, group), which tool with
    which validated arguments, and why approval is needed (``reason``)."""

    pid: int
    agent: str
    group: str
    tool: str
    arguments: dict[str, Any]
    reason: str = "irreversible"
    """``"irreversible"`` (the tool says so) or ``"rule <pattern>: ask"``."""
    call_id: str | None = None


class ApprovalDecision(BaseModel):
    """An approver's answer. ``arguments``: run with these instead (validated again);
    ``reason``: what the agent is told on a denial; ``by``: who decided (audited)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approved: bool
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    by: str | None = None

    @classmethod
    def approve(cls, *, arguments: dict[str, Any] | None = None,
                by: str | None = None) -> ApprovalDecision:
        return cls(approved=True, arguments=arguments, by=by)

    @classmethod
    def deny(cls, reason: str | None = None, *, by: str | None = None) -> ApprovalDecision:
        return cls(approved=False, reason=reason, by=by)


Approver = Callable[[ApprovalRequest], Awaitable[Any]]


async def ask(approver: Approver | None, request: ApprovalRequest, *, timeout_s: float,
              syscall: Any = None, log: Any = None) -> ApprovalDecision:
    """The approver's decision on ``request`` if it approves within ``timeout_s``
    seconds; :class:`ApprovalDenied` (with the reason) otherwise."""
    def denied(message: str, reason: str | None) -> ApprovalDenied:
        return ApprovalDenied(f"tool {request.tool!r}: {message}", syscall=syscall,
                              tool=request.tool, reason=reason)

    if approver is None:
        raise ApprovalDenied(
            f"tool {request.tool!r} is {request.reason} and no approver is configured "
            "(default: deny)", syscall=syscall, tool=request.tool, reason="no approver")
    answer: Any = None
    with anyio.move_on_after(timeout_s) as scope:
        try:
            answer = await approver(request)
        except Exception as exc:
            if log is not None:
                log.error("approval.approver_failed", tool=request.tool,
                          error=f"{type(exc).__name__}: {exc}")
            raise denied(f"the approver failed ({type(exc).__name__}: {exc}); denied",
                         "approver failed") from exc
    if scope.cancelled_caught:
        raise denied(f"no approval within {timeout_s:g} s", "timeout")
    decision = read(answer)
    if not decision.approved:
        raise denied("call denied" + (f": {decision.reason}" if decision.reason else ""),
                     decision.reason)
    return decision


def read(answer: Any) -> ApprovalDecision:
    """An approver's answer as a decision; anything unreadable is a denial saying so."""
    if isinstance(answer, ApprovalDecision):
        return answer
    if isinstance(answer, bool):
        return ApprovalDecision(approved=answer)
    if isinstance(answer, str):
        # Exactly "approve": a "yes", "ok" or "approved" is a denial (with that reason),
        # so that no spelling approves by accident.
        ok = answer == "approve"
        return ApprovalDecision(approved=ok, reason=None if ok else answer)
    approved = getattr(answer, "approved", None)
    if isinstance(approved, bool):
        reason = getattr(answer, "reason", None)
        return ApprovalDecision(approved=approved,
                                reason=reason if isinstance(reason, str) else None)
    return ApprovalDecision(approved=False,
                            reason=f"unreadable approver answer {answer!r:.100}")


async def allow_all(request: ApprovalRequest) -> ApprovalDecision:
    """Approve every call (``aios run --approve allow``: scripts that trust the agent)."""
    return ApprovalDecision.approve(by="--approve allow")


async def deny_all(request: ApprovalRequest) -> ApprovalDecision:
    """Deny every call (``aios run --approve deny``)."""
    return ApprovalDecision.deny("denied by --approve deny", by="--approve deny")


def terminal_approver(console: Any = None) -> Approver:
    """An approver asking on the terminal with Rich, one question at a time.

    The question is read in a worker thread so the kernel's other agents run on; a
    request that times out leaves its question on the screen until answered (a thread
    blocked reading the terminal cannot be interrupted), then the answer is ignored."""
    from rich.console import Console
    from rich.prompt import Confirm

    con = console if console is not None else Console(stderr=True)
    lock = anyio.Lock()

    def prompt(request: ApprovalRequest) -> bool:
        con.print(f"[bold yellow]approval[/] {request.agent} (pid {request.pid}, group "
                  f"{request.group}) wants to run [bold]{request.tool}[/] "
                  f"({request.reason}) with:")
        con.print_json(data=request.arguments)
        return bool(Confirm.ask("run it?", console=con, default=False))

    async def approver(request: ApprovalRequest) -> ApprovalDecision:
        async with lock:
            ok = await anyio.to_thread.run_sync(prompt, request, abandon_on_cancel=True)
        if ok:
            return ApprovalDecision.approve(by="terminal")
        return ApprovalDecision.deny("denied at the terminal", by="terminal")

    return approver
