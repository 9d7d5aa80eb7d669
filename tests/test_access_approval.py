"""Human approval: irreversible tools and ``ask`` rules wait for the approver, holding no
slot; anything but a clear approval is a denial the agent can read."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import aios
from aios.access.approval import read
from aios.testing import ScriptedLLM

RAN: list[dict[str, Any]] = []


@aios.tool(irreversible=True)
async def drop_table(name: str) -> str:
    """Drop a table."""
    RAN.append({"name": name})
    return f"dropped {name}"


@aios.tool
async def send_mail(to: str) -> str:
    """Send a mail."""
    RAN.append({"to": to})
    return "sent"


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def kernel(approver: Any, *, timeout_s: float = 300.0, **access: Any) -> aios.Kernel:
    cfg = aios.KernelConfig(tools={"approval_timeout_s": timeout_s}, access=access)
    return aios.Kernel(cfg, backends={"default": ScriptedLLM()},
                       tools=[drop_table, send_mail], approver=approver)


async def call(ctx: aios.Context, tool: str, args: dict[str, Any]) -> str:
    try:
        return (await ctx.tools.call(tool, args)).content
    except aios.ApprovalDenied as exc:
        return f"denied ({exc.reason}): {exc}"


async def test_an_ask_rule_goes_to_the_approver_which_may_edit_the_arguments() -> None:
    seen: list[aios.ApprovalRequest] = []

    async def approver(request: aios.ApprovalRequest) -> aios.ApprovalDecision:
        seen.append(request)
        return aios.ApprovalDecision.approve(arguments={"to": "team@example.org"}, by="ann")

    caps = aios.Capabilities(tools={"send_*": "ask", "*": "allow"})
    async with kernel(approver) as k:
        got = await k.spawn(call, "send_mail", {"to": "everyone@example.org"}, name="m",
                            group="g", caps=caps).wait()
    assert got == "sent" and RAN == [{"to": "team@example.org"}]
    req = seen[0]
    assert (req.agent, req.group, req.tool, req.arguments) == (
        "m", "g", "send_mail", {"to": "everyone@example.org"})
    assert req.reason == "marked 'ask' by a rule"


@pytest.mark.parametrize(("answer", "reason"), [
    (aios.ApprovalDecision.deny("not on a Friday"), "not on a Friday"),
    (False, None),
    ("no, too risky", "no, too risky"),
    (42, "unreadable approver answer 42"),
    (None, "unreadable approver answer None"),
    (aios.ApprovalDecision.approve(arguments={"nme": "users"}), "invalid edited arguments"),
])
async def test_anything_but_a_clear_approval_is_a_denial(answer: Any, reason: Any) -> None:
    async def approver(request: aios.ApprovalRequest) -> Any:
        return answer

    async with kernel(approver) as k:
        got = await k.spawn(call, "drop_table", {"name": "users"}).wait()
    assert got.startswith(f"denied ({reason})") and RAN == []
    if isinstance(answer, aios.ApprovalDecision) and answer.reason:
        assert got.endswith("call denied: not on a Friday")


async def test_an_approver_that_raises_or_hangs_denies() -> None:
    async def broken(request: aios.ApprovalRequest) -> Any:
        raise RuntimeError("approval service down")

    async def hangs(request: aios.ApprovalRequest) -> Any:
        await anyio.sleep_forever()

    async with kernel(broken) as k:
        got = await k.spawn(call, "drop_table", {"name": "t"}).wait()
    assert got.startswith("denied (approver failed)") and "approval service down" in got
    async with kernel(hangs, timeout_s=0.01) as k:
        got = await k.spawn(call, "drop_table", {"name": "t"}).wait()
    assert got.startswith("denied (timeout)")
    assert RAN == []


async def test_while_waiting_the_process_holds_no_slot_shows_approval_and_can_be_killed(
) -> None:
    asked = anyio.Event()

    async def slow(request: aios.ApprovalRequest) -> Any:
        asked.set()
        await anyio.sleep_forever()

    async with kernel(slow) as k:
        proc = k.spawn(call, "drop_table", {"name": "t"}, caps=aios.Capabilities())
        await asked.wait()
        info = proc.info()
        assert info.state is aios.ProcessState.WAITING
        assert info.awaiting_approval == "drop_table"
        queue = k.resources()["tools:drop_table"]
        assert not queue.running and queue.waiting == 0
        proc.kill()
        with pytest.raises(aios.ProcessKilled):
            await proc.wait()
    assert RAN == []


async def test_no_approver_means_deny_and_allow_all_approves() -> None:
    from aios.access.approval import allow_all, deny_all

    async with kernel(None) as k:
        assert "(no approver)" in await k.spawn(call, "drop_table", {"name": "t"}).wait()
    async with kernel(deny_all) as k:
        assert "denied by --approve deny" in await k.spawn(
            call, "drop_table", {"name": "t"}).wait()
    async with kernel(allow_all) as k:
        assert await k.spawn(call, "drop_table", {"name": "t"}).wait() == "dropped t"


def test_reading_answers() -> None:
    assert read(True).approved and read("approve").approved
    assert not read("Yes").approved and read("Yes").reason == "Yes"  # only "approve" approves
    assert not read("deny").approved and read("deny").reason == "deny"

    class Legacy:
        approved = True
        reason = 7  # not a str: dropped

    assert read(Legacy()) == aios.ApprovalDecision(approved=True)


AGENT_FILE = '''
import aios

@aios.tool(irreversible=True)
async def launch(target: str) -> str:
    """Launch."""
    return f"launched {target}"

TOOLS = [launch]

async def agent(ctx):
    try:
        return (await ctx.tools.call("launch", {"target": "moon"})).content
    except aios.ApprovalDenied as exc:
        return f"denied: {exc.reason}"
'''


@pytest.mark.parametrize(("mode", "said"), [
    ("deny", "denied: denied by --approve deny"), ("allow", "launched moon")])
def test_aios_run_approve_deny_or_allow(tmp_path: Any, capsys: pytest.CaptureFixture[str],
                                        mode: str, said: str) -> None:
    from aios.cli import main

    path = tmp_path / "ag.py"
    path.write_text(AGENT_FILE)
    assert main(["run", f"{path}:agent", "--approve", mode]) == 0
    assert f"agent-1 (priority 0): {said}" in capsys.readouterr().out
