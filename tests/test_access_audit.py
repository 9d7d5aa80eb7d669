"""The audit log: a row per syscall and per refusal, append-only, queried through
``kernel.audit()`` and ``aios audit``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import aios
from aios.access.cli import parse_since
from aios.cli import main
from aios.testing import ScriptedLLM

MSG = [{"role": "user", "content": "hi"}]


@aios.tool(irreversible=True)
async def wipe(disk: str) -> str:
    """Wipe a disk."""
    return f"wiped {disk}"


@aios.tool
async def echo(text: str) -> str:
    """Echo."""
    return text


async def approver(request: aios.ApprovalRequest) -> aios.ApprovalDecision:
    if request.arguments["disk"] == "scratch":
        return aios.ApprovalDecision.approve(by="ann")
    return aios.ApprovalDecision.deny("not that one", by="ann")


async def busy(ctx: aios.Context) -> None:
    await ctx.llm.chat(MSG)
    await ctx.tools.call("echo", {"text": "x" * 1000})
    await ctx.tools.call("wipe", {"disk": "scratch"})
    for call in (ctx.tools.call("wipe", {"disk": "root"}),
                 ctx.memory.search("x", namespace="agent:other"),
                 ctx.llm.chat(MSG)):
        with contextlib.suppress(aios.AIOSError):
            await call


def config(path: Path, **access: Any) -> aios.KernelConfig:
    return aios.KernelConfig(state_path=str(path), access={"audit": True, **access})


async def run_busy(path: Path, **access: Any) -> list[Any]:
    async with aios.Kernel(config(path, **access), backends={"default": ScriptedLLM()},
                           tools=[wipe, echo], approver=approver) as k:
        await k.spawn(busy, name="ann-agent", group="lab",
                      quota=aios.Quota(llm_calls=1)).wait()
        return await k.audit()


async def test_every_syscall_and_refusal_is_a_row(tmp_path: Path) -> None:
    t0 = time.time()
    rows = await run_busy(tmp_path / "state.db", audit_args_chars=40)
    got = [(r.kind, r.resource, r.decision, r.outcome) for r in rows]
    assert got == [
        ("llm.chat", "llm:default", "allowed", "ok"),
        ("tools.call", "tools:echo", "allowed", "ok"),
        ("tools.call", "tools:wipe", "approved by ann", "ok"),
        ("tools.call", "tools:wipe", "approval denied", "error"),
        ("memory.search", "memory:sqlite", "denied", "refused"),
        ("llm.chat", "llm:default", "quota", "refused"),
    ]
    echo_row = rows[1]
    assert (echo_row.pid, echo_row.agent, echo_row.group) == (1, "ann-agent", "lab")
    assert echo_row.args is not None and len(echo_row.args) == 40
    full = aios.syscalls.ToolCall(name="echo", arguments={"text": "x" * 1000})
    assert echo_row.args_sha256 == hashlib.sha256(
        full.model_dump_json().encode()).hexdigest()
    assert "not that one" in (rows[3].error or "")
    assert "PermissionDenied" in (rows[4].error or "") and rows[5].error
    assert all(t0 <= r.time <= time.time() and r.duration_s >= 0 for r in rows)


async def test_queries_filter_and_rows_outlive_the_kernel(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await run_busy(path, audit_redact=True)
    async with aios.Kernel(aios.KernelConfig(state_path=str(path)),
                           backends={"default": ScriptedLLM()}) as k:
        every = await k.audit()
        denied = await k.audit(denied=True)
        assert [r.decision for r in denied] == ["approval denied", "denied", "quota"]
        assert await k.audit(agent="nobody") == []
        assert await k.audit(since=time.time() + 60) == []
        assert [r.id for r in await k.audit(limit=2)] == [r.id for r in every[-2:]]
        assert [r.kind for r in await k.audit(kind="llm.chat")] == ["llm.chat"] * 2
    assert len(every) == 6 and all(r.args is None and len(r.args_sha256) == 64
                                   for r in every)


@pytest.mark.parametrize("since", ["yesterday", "1h", True, None.__class__])
async def test_audit_since_must_be_unix_seconds(since: object) -> None:
    async with aios.Kernel(aios.KernelConfig(), backends={"default": ScriptedLLM()}) as k:
        with pytest.raises(aios.InvalidSyscall, match="since must be Unix seconds"):
            await k.audit(since=since)  # type: ignore[arg-type]


async def test_the_log_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await run_busy(path)
    conn = sqlite3.connect(path)
    try:
        for sql in ("UPDATE audit_log SET decision = 'allowed'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 6
    finally:
        conn.close()


async def test_aios_audit_prints_a_table_or_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.db"
    await run_busy(path)
    assert main(["audit", "--state", str(path), "--denied", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["decision"] for r in lines] == ["approval denied", "denied", "quota"]
    assert main(["audit", "--state", str(path), "--agent", "ann-agent", "--since", "1h",
                 "--kind", "tools.call"]) == 0
    out = capsys.readouterr().out
    assert "approved by ann" in out and "llm.chat" not in out
    assert main(["audit", "--state", str(tmp_path / "missing.db")]) == 2
    assert "state database not found" in capsys.readouterr().err


def test_since_takes_seconds_iso_times_and_ages() -> None:
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("15m", now=1000.0) == 100.0
    assert parse_since("2025-01-31T12:00:00+00:00") == 1738324800.0
    with pytest.raises(Exception, match="an age like 15m"):
        parse_since("yesterday")


async def test_without_an_audit_log_the_query_is_empty(tmp_path: Path) -> None:
    async with aios.Kernel(aios.KernelConfig(), backends={"default": ScriptedLLM()}) as k:
        assert await k.audit() == []
