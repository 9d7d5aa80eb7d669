"""Storage through a real kernel (ctx.storage, the door, the storage:<store> queue) and the
``aios storage export/import`` command."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

import aios
from aios.cli import main
from aios.config import StorageConfig
from aios.testing import ScriptedLLM


def kernel(state: Path | None = None, **storage: Any) -> aios.Kernel:
    cfg = aios.KernelConfig(state_path=str(state) if state else None,
                            storage=StorageConfig(**storage))
    return aios.Kernel(cfg, backends={"default": ScriptedLLM(["ok"])})


async def test_agents_write_read_and_a_restarted_kernel_finds_everything(
        tmp_path: Path) -> None:
    state = tmp_path / "state.db"

    async def writer(ctx: aios.Context) -> list[int]:
        await ctx.storage.write("report.md", "# Report\nfirst")
        await ctx.storage.write("report.md", "# Report\nsecond")
        await ctx.storage.write("group:lab/plan.md", "shared plan")
        return [v.version for v in await ctx.storage.history("report.md")]

    async def reader(ctx: aios.Context) -> tuple[str, str, list[str]]:
        own = await ctx.storage.read_text("report.md", version=1)
        shared = await ctx.storage.read_text("group:lab/plan.md")
        return own, shared, [h.path for h in await ctx.storage.search("report")]

    async with kernel(state) as k:
        p = k.spawn(writer, name="alice", group="lab")
        assert await p.wait() == [1, 2]
        assert p.info().storage_bytes == 14 + 15 + 11
    async with kernel(state) as k:
        again = k.spawn(reader, name="alice", group="lab")
        assert await again.wait() == ("# Report\nfirst", "shared plan", ["report.md"])


async def test_errors_reach_the_agent_typed() -> None:
    async def probe(ctx: aios.Context) -> list[str]:
        seen = []
        for call in (lambda: ctx.storage.read("../etc/passwd"),
                     lambda: ctx.storage.read("agent:alice/secret.md"),
                     lambda: ctx.storage.read("group:other/x"),
                     lambda: ctx.storage.read("missing.md"),
                     lambda: ctx.storage.write("x", "y", if_version=3),
                     lambda: ctx.storage.write("big", b"x" * 101),
                     lambda: ctx.storage.search("")):
            try:
                await call()
            except aios.AIOSError as exc:
                seen.append(type(exc).__name__)
        return seen

    async with kernel(max_file_bytes=100) as k:
        assert await k.spawn(probe, name="mallory").wait() == [
            "PathInvalid", "PermissionDenied", "PermissionDenied", "StorageNotFound",
            "StorageConflict", "QuotaExceeded", "InvalidSyscall"]


@pytest.mark.parametrize(("call", "error", "named"), [
    (lambda s: s.write("\ud800.txt", "x"), aios.PathInvalid, "lone surrogate (U+D800)"),
    (lambda s: s.write("s.txt", "ok \ud800"), aios.InvalidSyscall,
     "lone surrogate (U+D800) at index 3"),
    (lambda s: s.read_text("b.bin"), aios.StorageError, "'b.bin' is not UTF-8 text (byte 0"),
    (lambda s: s.write("dir/", "x"), aios.PathInvalid, "'dir/' ends with '/'"),
    (lambda s: s.write("b.bin/x", "x"), aios.PathInvalid, "'b.bin' is a file"),
    (lambda s: s.write("agent:alice", "x"), aios.PathInvalid, "expected 'agent:<name>/<file>'"),
])
async def test_bad_input_is_a_typed_error_naming_it(call: Any, error: type[Exception],
                                                    named: str) -> None:
    async def agent(ctx: aios.Context) -> None:
        await ctx.storage.write("b.bin", b"\xff\xfe binary")
        with pytest.raises(error, match=re.escape(named)):
            await call(ctx.storage)

    async with kernel() as k:
        await k.spawn(agent, name="alice").wait()


async def test_bulk_writes_do_not_starve_a_read() -> None:
    progress = {"writes": 0}
    seen: dict[str, int] = {}

    async def bulk(ctx: aios.Context) -> None:
        for i in range(40):
            await ctx.storage.write(f"bulk/{i}.bin", bytes(1000))
            progress["writes"] += 1

    async def quick(ctx: aios.Context) -> None:
        await ctx.storage.write("note.md", "hello")
        await ctx.storage.read("note.md")
        seen["writes_when_done"] = progress["writes"]

    async with kernel(window=1) as k:
        a = k.spawn(bulk, name="bulk")
        b = k.spawn(quick, name="quick")
        await b.wait()
        await a.wait()
    # FIFO at a window of 1: the two syscalls of `quick` each wait for at most one write
    assert seen["writes_when_done"] <= 3


def test_export_then_import_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    state = tmp_path / "state.db"

    async def seed() -> None:
        async def agent(ctx: aios.Context) -> None:
            await ctx.storage.write("a.md", "alpha")
            await ctx.storage.write("dir/b.bin", bytes(range(256)))
            await ctx.storage.write("gone.md", "deleted")
            await ctx.storage.delete("gone.md")

        async with kernel(state) as k:
            await k.spawn(agent, name="alice").wait()

    anyio.run(seed)
    out = tmp_path / "out"
    assert main(["storage", "export", "alice", str(out), "--state", str(state)]) == 0
    assert "exported 2 files (261 bytes)" in capsys.readouterr().out
    assert (out / "a.md").read_text() == "alpha"
    assert (out / "dir" / "b.bin").read_bytes() == bytes(range(256))
    assert not (out / "gone.md").exists()

    (out / "a.md").write_text("alpha, edited outside")
    assert main(["storage", "import", str(out), "group:lab", "--state", str(state)]) == 0
    assert main(["storage", "import", str(out), "alice", "--state", str(state)]) == 0
    assert "imported 2 files" in capsys.readouterr().out

    async def check() -> tuple[list[int], bytes, list[str]]:
        async def agent(ctx: aios.Context) -> tuple[list[int], bytes, list[str]]:
            hist = [v.version for v in await ctx.storage.history("a.md")]
            shared = await ctx.storage.read("group:lab/a.md")
            return hist, shared, [i.path for i in await ctx.storage.list("group:lab")]

        async with kernel(state) as k:
            result: tuple[list[int], bytes, list[str]] = await k.spawn(
                agent, name="alice", group="lab").wait()
            return result

    hist, shared, listed = anyio.run(check)
    assert hist == [1, 2] and shared == b"alpha, edited outside"
    assert listed == ["group:lab/a.md", "group:lab/dir/b.bin"]


def test_storage_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage", "export", "alice", str(tmp_path / "o")]) == 2
    assert "needs a state database" in capsys.readouterr().err
    assert main(["storage", "export", "alice", str(tmp_path / "o"),
                 "--state", str(tmp_path / "nope.db")]) == 2
    assert "no state database" in capsys.readouterr().err
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.md").write_text("fine")
    (src / "link").symlink_to(src / "ok.md")
    assert main(["storage", "import", str(src), "alice",
                 "--state", str(tmp_path / "s.db")]) == 2
    assert "symlink" in capsys.readouterr().err


def test_storage_command_refuses_before_touching_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "new.db"
    assert main(["storage", "import", str(tmp_path / "nonexistent"), "alice",
                 "--state", str(state)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []  # no state database, no lock file

    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.md").write_text("fine")
    assert main(["storage", "import", str(src), "alice", "--state", str(state)]) == 0
    capsys.readouterr()
    assert main(["storage", "export", "nobody", str(tmp_path / "o"),
                 "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no storage space 'nobody'" in err
    assert not (tmp_path / "o").exists()

    (src / os.fsdecode(b"bad\xff.txt")).write_text("x")
    assert main(["storage", "import", str(src), "bob", "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b'bad\\xff.txt': the file name is not valid UTF-8" in err


async def test_a_space_prefix_after_dot_slash_is_refused_not_stored() -> None:
    async def agent(ctx: aios.Context) -> None:
        await ctx.storage.write("./agent:writer/reports/mine.md", "mine")

    async with aios.Kernel(aios.KernelConfig(),
                           backends={"default": ScriptedLLM()}) as k:
        with pytest.raises(aios.PathInvalid, match="may only begin a path"):
            await k.spawn(agent, name="mallory").wait()
