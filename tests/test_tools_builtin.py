"""The built-in tools: ``calculator`` (AST, never eval) and ``python`` (a contained
subprocess)."""

from __future__ import annotations

import ast
import math

import anyio
import pytest

from aios.tools import builtin
from aios.tools.builtin import calculator, python


@pytest.mark.parametrize(("expr", "value"), [
    ("2 * (3 + 4) ** 2", 98), ("7 // 2 + 7 % 2", 4), ("-3 + +1", -2), ("1 / 4", 0.25),
    ("sqrt(16) + max(1, 2, 3)", 7.0), ("round(pi, 2)", 3.14), ("2 ** 10", 1024),
])
def test_calculator_computes(expr: str, value: float) -> None:
    assert calculator(expr) == value


@pytest.mark.parametrize(("expr", "why"), [
    ("__import__('os').system('true')", "unsupported.*__import__"),
    ("open('/etc/passwd')", "name 'open'"),
    ("x + 1", "name 'x'"),
    ("(1).__class__", "Attribute"),
    ("'a' * 3", "Constant"),
    ("[1, 2]", "List"),
    ("lambda: 1", "Lambda"),
    ("9 ** 9 ** 9", "power too large"),
    ("1 / 0", "division by zero"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 1001, "longer than 1000"),
    ("exp(1000)", "math range error"),
])
def test_calculator_refuses_what_is_not_arithmetic(expr: str, why: str) -> None:
    with pytest.raises((ValueError, OverflowError), match=why):
        calculator(expr)


def test_calculator_result_is_finite() -> None:
    assert math.isfinite(calculator("10.0 ** 300"))


async def test_python_runs_a_snippet() -> None:
    assert await python("print(sum(range(10)))") == "45\n"


async def test_python_reports_errors_and_exit_status() -> None:
    out = await python("raise SystemExit(3)")
    assert out.endswith("[exit status 3]")
    out = await python("1/0")
    assert "ZeroDivisionError" in out and "[exit status 1]" in out


async def test_python_inherits_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_TEST_SECRET", "hunter2")
    out = await python("import os; print(sorted(os.environ))")
    assert set(ast.literal_eval(out)) <= {"PATH", "LANG", "LC_CTYPE"}
    assert "hunter2" not in await python("import os; print(os.environ)")


async def test_python_runs_in_a_throwaway_directory() -> None:
    out = await python("import os; print(os.getcwd())")
    assert "aios-python-" in out and not await anyio.Path(out.strip()).exists()


async def test_python_is_killed_at_its_wall_clock_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "PYTHON_WALL_S", 0.5)
    out = await python("import time\nprint('before', flush=True)\ntime.sleep(60)")
    assert out.startswith("before") and "killed after 0.5 s wall-clock limit" in out


async def test_python_output_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "PYTHON_OUTPUT_BYTES", 1000)
    out = await python("while True: print('x' * 100)")
    assert "output cut at 1000 bytes" in out and len(out) < 1100


async def test_python_memory_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "PYTHON_MEMORY_BYTES", 200 * 1024 * 1024)
    out = await python("x = bytearray(400 * 1024 * 1024)\nprint('allocated')")
    assert "MemoryError" in out and "allocated" not in out
