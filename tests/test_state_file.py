"""A bad or busy ``state_path``: a ConfigError naming the file and the problem, nothing left
open or locked, the file unchanged; one kernel owns a state file at a time."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import aios
from aios.state import StateDB
from aios.testing import ScriptedLLM


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _make_state(path: Path) -> None:
    """A real aios state file with a few rows."""
    db = StateDB(str(path))
    await db.open()
    for i in range(40):
        await db.conn.execute(
            "INSERT INTO checkpoints VALUES (?, 1, ?, 'x', NULL, 0)", (f"k{i}", "y" * 2000))
    await db.conn.commit()
    await db.close()


def _random_bytes(p: Path) -> None:
    p.write_bytes(random.Random(7).randbytes(8192))


def _text(p: Path) -> None:
    p.write_text("these are my notes, not a database\n" * 20)


Snapshot = tuple[str | None, set[str], set[threading.Thread]]


def _snapshot(path: Path) -> Snapshot:
    return (_digest(path) if path.is_file() else None, set(os.listdir(path.parent)),
            set(threading.enumerate()))


def _check_untouched(path: Path, before: Snapshot) -> None:
    """The file unchanged, no side file left behind (only the lock file may be new), no
    aiosqlite thread running, and the lock not held: another owner can take it at once."""
    digest, listing, threads = before
    if digest is not None:
        assert _digest(path) == digest
    lock = str(path.resolve()) + ".lock"
    assert set(os.listdir(path.parent)) - listing <= {os.path.basename(lock)}
    for t in set(threading.enumerate()) - threads:  # aiosqlite's worker is ending
        t.join(timeout=10)
        assert not t.is_alive(), t
    if os.path.exists(lock):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


async def _expect_refused(path: Path, match: str) -> aios.ConfigError:
    """Open must fail with a ConfigError naming state_path and the file, and leave
    everything as it was."""
    before = _snapshot(path)
    db = StateDB(str(path))
    with pytest.raises(aios.ConfigError, match=match) as ei:
        await db.open()
    err = ei.value
    assert err.key == "state_path"
    assert str(path) in str(err)
    _check_untouched(path, before)
    with pytest.raises(RuntimeError):
        _ = db.conn
    await db.close()  # idempotent after a failed open
    return err


@pytest.mark.parametrize(
    ("make", "match"),
    [(_random_bytes, "not an SQLite database"), (_text, "not an SQLite database")],
    ids=["random-bytes", "text-file"],
)
async def test_not_a_database(tmp_path: Path, make: Callable[[Path], None], match: str) -> None:
    p = tmp_path / "state.db"
    make(p)
    await _expect_refused(p, match)


async def test_truncated_database(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    await _make_state(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    await _expect_refused(p, "truncated")


async def test_database_truncated_to_less_than_its_header(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    await _make_state(p)
    p.write_bytes(p.read_bytes()[:60])
    await _expect_refused(p, "truncated")


async def test_damaged_page_inside_the_database(tmp_path: Path) -> None:
    # The size is right but a b-tree page is garbage: only quick_check can tell.
    p = tmp_path / "state.db"
    await _make_state(p)
    data = bytearray(p.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page: 3 * page] = random.Random(3).randbytes(page)
    p.write_bytes(bytes(data))
    await _expect_refused(p, "damaged")


async def test_read_only_file(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    await _make_state(p)
    p.chmod(0o444)
    try:
        await _expect_refused(p, "read-only")
    finally:
        p.chmod(0o644)


async def test_directory(tmp_path: Path) -> None:
    d = tmp_path / "state.db"
    d.mkdir()
    await _expect_refused(d, "is a directory")
    assert list(d.iterdir()) == []


async def test_special_file(tmp_path: Path) -> None:
    # A FIFO would block SQLite's open forever.
    p = tmp_path / "state.db"
    os.mkfifo(p)
    await _expect_refused(p, "not a regular file")


async def test_foreign_sqlite_database_with_a_clashing_table(tmp_path: Path) -> None:
    p = tmp_path / "other.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, note TEXT)")
    con.execute("INSERT INTO checkpoints (note) VALUES ('mine')")
    con.commit()
    con.close()
    await _expect_refused(p, "not an aios state database")


async def test_good_file_reopens_with_its_rows(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    await _make_state(p)
    db = StateDB(str(p))
    await db.open()
    try:
        async with db.conn.execute("SELECT count(*) FROM checkpoints") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == 40
    finally:
        await db.close()


# -- one owner --------------------------------------------------------------------------


async def test_second_kernel_on_a_held_file_names_the_holder(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    first = StateDB(str(p))
    await first.open()
    try:
        second = StateDB(str(p))
        with pytest.raises(aios.ConfigError, match="in use by another kernel") as ei:
            await second.open()
        msg = str(ei.value)
        assert ei.value.key == "state_path" and str(p) in msg
        assert f"kernel {first.kernel_id}" in msg and f"pid {os.getpid()}" in msg
        # Another spelling of the same file is the same file.
        os.symlink(p, tmp_path / "alias.db")
        with pytest.raises(aios.ConfigError, match=first.kernel_id):
            await StateDB(str(tmp_path / "alias.db")).open()
    finally:
        await first.close()
    second = StateDB(str(p))
    await second.open()  # released on close
    async with second.conn.execute("SELECT kernel_id, pid FROM kernel_owner") as cur:
        assert await cur.fetchall() == [(second.kernel_id, os.getpid())]
    await second.close()


async def test_two_kernels_on_one_state_file(tmp_path: Path) -> None:
    p = str(tmp_path / "state.db")
    cfg = aios.KernelConfig(state_path=p, autoload_plugins=True)
    async with aios.Kernel(cfg, backends={"default": ScriptedLLM(["a"])}):
        with pytest.raises(aios.ConfigError, match="in use by another kernel"):
            async with aios.Kernel(cfg, backends={"default": ScriptedLLM(["b"])}):
                pass
    async with aios.Kernel(cfg, backends={"default": ScriptedLLM(["c"])}):
        pass


async def test_holder_that_died_is_taken_over(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    code = (
        "import anyio, os, sys\n"
        "from aios.state import StateDB\n"
        "async def main():\n"
        f"    db = StateDB({str(p)!r})\n"
        "    await db.open()\n"
        "    print(db.kernel_id, flush=True)\n"
        "    os._exit(0)\n"  # dies holding the file: no close, no cleanup
        "anyio.run(main)\n"
    )
    with anyio.fail_after(50):  # a hang guard, not a timed assertion
        done = await anyio.run_process([sys.executable, "-c", code])
    dead = done.stdout.decode().strip()
    db = StateDB(str(p))
    await db.open()
    try:
        async with db.conn.execute("SELECT kernel_id FROM kernel_owner") as cur:
            assert await cur.fetchall() == [(db.kernel_id,)]
        assert dead and dead != db.kernel_id
    finally:
        await db.close()


async def test_a_reader_opens_a_held_file_without_owning_it(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    owner = StateDB(str(p))
    await owner.open()
    try:
        reader = StateDB(str(p), exclusive=False)
        await reader.open()
        async with reader.conn.execute("SELECT kernel_id FROM kernel_owner") as cur:
            assert await cur.fetchall() == [(owner.kernel_id,)]
        await reader.close()
        with pytest.raises(aios.ConfigError, match="in use"):  # still held by the owner
            await StateDB(str(p)).open()
    finally:
        await owner.close()
    bad = tmp_path / "bad.db"
    _text(bad)
    await _expect_refused_shared(bad)


async def _expect_refused_shared(path: Path) -> None:
    with pytest.raises(aios.ConfigError, match="not an SQLite database"):
        await StateDB(str(path), exclusive=False).open()


def test_kernel_ids_are_short_and_unique() -> None:
    ids = {StateDB(None).kernel_id for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 8 and int(i, 16) >= 0 for i in ids)


async def test_memory_database_needs_no_lock(tmp_path: Path) -> None:
    a, b = StateDB(None), StateDB(None)
    await a.open()
    await b.open()
    await a.close()
    await b.close()


def test_bad_state_file_ends_the_process(tmp_path: Path) -> None:
    """The CLI with a bad state file: one line naming state_path, exit 2, and the process
    ends (the aiosqlite thread is not left running)."""
    bad = tmp_path / "state.db"
    _random_bytes(bad)
    cfg = tmp_path / "aios.toml"
    cfg.write_text(f'state_path = "{bad}"\n[[llm]]\nname = "default"\nbackend = "sim"\n')
    agent = tmp_path / "agent.py"
    agent.write_text("async def hi(ctx):\n    return 'hi'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "aios.cli", "run", f"{agent}:hi", "--config", str(cfg)],
        capture_output=True, text=True, timeout=50,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "state_path" in lines[0] and str(bad) in lines[0], proc.stderr
