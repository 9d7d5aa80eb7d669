"""Built-in tools, offered through the ``aios.tools`` entry points (opt-in per kernel with
``[tools] builtin = ["calculator", "python"]``).

* ``calculator``: arithmetic on numbers by walking the AST; no ``eval``, no names but a
  few constants and ``math`` functions, and bounded powers (``9**9**9`` is refused, not
  computed).
* ``python``: runs a snippet in a fresh ``python -I`` subprocess with a wall-clock limit,
  CPU-time, address-space, file-size and process-count rlimits, an environment holding
  only ``PATH`` and ``LANG`` (no secrets of the kernel's), a throw-away working
  directory, and a cap on the output it returns. This is resource containment, not a
  security sandbox: the code runs as the kernel's user and can read what that user can.
"""

from __future__ import annotations

import ast
import contextlib
import math
import operator
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from aios.tools.function import tool

__all__ = ["calculator", "python"]

# -- calculator -----------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10,
    "log2": math.log2, "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "asin": math.asin, "acos": math.acos, "atan": math.atan, "floor": math.floor,
    "ceil": math.ceil, "abs": abs, "round": round, "min": min, "max": max,
}
_MAX_EXPRESSION = 1000
"""Characters of one expression."""
_MAX_BITS = 4096
"""Largest integer result of a power, in bits (refused before it is computed)."""


@tool(timeout_s=5.0)
def calculator(expression: str) -> int | float:
    """Evaluate an arithmetic expression exactly as written.

    Supports + - * / // % ** and parentheses, the constants pi, e, tau and the functions
    sqrt, exp, log, log10, log2, sin, cos, tan, asin, acos, atan, floor, ceil, abs,
    round, min, max.

    Args:
        expression: The expression, e.g. "2 * (3 + 4) ** 2" or "sqrt(2) / 2".
    """
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    result = _eval(tree.body)
    if isinstance(result, float) and not math.isfinite(result):
        raise ValueError(f"result is not a finite number: {result}")
    return result  # type: ignore[no-any-return]


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS and not node.keywords):
        return _FUNCTIONS[node.func.id](*(_eval(a) for a in node.args))
    what = type(node).__name__
    if isinstance(node, ast.Name | ast.Call):
        what = f"name {ast.unparse(node.func if isinstance(node, ast.Call) else node)!r}"
    raise ValueError(f"unsupported in an arithmetic expression: {what}")


def _check_power(base: Any, exp: Any) -> None:
    if isinstance(base, int) and isinstance(exp, int) and abs(base) > 1:
        if exp > 0 and exp * math.log2(abs(base)) > _MAX_BITS:
            raise ValueError(f"power too large: the result would exceed {_MAX_BITS} bits")
    elif isinstance(exp, int | float) and abs(exp) > 10_000 and abs(base) > 1:
        raise ValueError("power too large")


# -- python ---------------------------------------------------------------------------

PYTHON_WALL_S = 10.0
"""Wall-clock limit of one run (seconds); CPU time is limited to the same."""
PYTHON_MEMORY_BYTES = 512 * 1024 * 1024
"""Address-space limit of the subprocess."""
PYTHON_OUTPUT_BYTES = 64 * 1024
"""Output returned at most; the process is killed when it writes more."""

# Runs in the child before the snippet: limits first, then the snippet from stdin.
_BOOTSTRAP = """\
import resource, sys
def lim(r, v):
    try: resource.setrlimit(r, (v, v))
    except (ValueError, OSError): pass
lim(resource.RLIMIT_CPU, {cpu})
lim(resource.RLIMIT_AS, {mem})
lim(resource.RLIMIT_FSIZE, {fsize})
lim(resource.RLIMIT_CORE, 0)
code = sys.stdin.read()
sys.stdin.close()
exec(compile(code, "<snippet>", "exec"), {{"__name__": "__main__"}})
"""


@tool(timeout_s=PYTHON_WALL_S + 5.0, max_concurrency=2)
async def python(code: str) -> str:
    """Run a Python 3 snippet in a fresh, isolated process and return what it prints.

    Only the standard library is available; there is no network promise, no state kept
    between runs, a 10 s limit, and output is cut at 64 KiB. Print the values you need.

    Args:
        code: The program text; use print() to show results.
    """
    bootstrap = _BOOTSTRAP.format(cpu=max(1, math.ceil(PYTHON_WALL_S)), mem=PYTHON_MEMORY_BYTES,
                                  fsize=16 * 1024 * 1024)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    with tempfile.TemporaryDirectory(prefix="aios-python-") as cwd:
        proc = await anyio.open_process(
            [sys.executable, "-I", "-c", bootstrap], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env,
            start_new_session=True)
        try:
            out, why = await _collect(proc, code.encode())
        finally:
            _kill_group(proc.pid)
            with anyio.CancelScope(shield=True):
                await proc.aclose()
    text = out.decode("utf-8", "replace")
    if why:
        return f"{text}\n[{why}]"
    if proc.returncode:
        return f"{text}\n[exit status {proc.returncode}]"
    return text


async def _collect(proc: anyio.abc.Process, code: bytes) -> tuple[bytes, str]:
    """Feed ``code``, read output until EOF, the cap or the wall clock; say which."""
    assert proc.stdin is not None and proc.stdout is not None
    buf = bytearray()
    why = ""
    with anyio.move_on_after(PYTHON_WALL_S) as scope:
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            await proc.stdin.send(code)  # if it died before reading, its output says why
        await proc.stdin.aclose()
        async for chunk in proc.stdout:
            buf += chunk
            if len(buf) > PYTHON_OUTPUT_BYTES:
                why = f"output cut at {PYTHON_OUTPUT_BYTES} bytes; process killed"
                del buf[PYTHON_OUTPUT_BYTES:]
                break
        if not why:
            await proc.wait()
    if scope.cancelled_caught:
        why = f"killed after {PYTHON_WALL_S:g} s wall-clock limit"
    return bytes(buf), why


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
