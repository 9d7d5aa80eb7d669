"""What the embedded model supports: a call asking for anything else is refused up front.

:func:`check` raises :class:`aios.errors.InvalidSyscall` naming the first field the
backend cannot honour, before anything is queued or generated (the kernel calls the
backend's ``check`` at the door; the backend calls it again before generating). Never
forward a field and drop it silently.

Supported: string / text-part / None message content; the roles system, user, assistant
(with ``tool_calls``), tool, and developer / function (as system / tool); ``tools`` of
type function; ``tool_choice`` None, "auto", "none", "required" or a named function;
``response_format`` text, json_object and json_schema (the schema must convert to a
grammar); extras ``top_k``, ``min_p``, ``parallel_tool_calls``, and the OpenAI defaults
``n=1``, ``logprobs=False``, zero penalties, ``user``. Anything else is refused. This
module must never call llama.cpp.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from aios.errors import InvalidSyscall
from aios.syscalls import LLMChat
from aios_llamacpp._grammar import GrammarError, forced_tools, grammar_for

__all__ = ["SUPPORTED_EXTRA", "check"]

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
SUPPORTED_EXTRA = ("top_k", "min_p", "parallel_tool_calls", "n", "logprobs", "top_logprobs",
                   "presence_penalty", "frequency_penalty", "user")
"""``LLMChat.extra`` keys this backend accepts (some only at their no-op value)."""


def check(call: LLMChat) -> None:
    """Raise ``InvalidSyscall`` naming the first field of ``call`` this backend cannot do."""
    for i, m in enumerate(call.messages):
        _check_message(call, i, m)
    _check_tools(call)
    _check_response_format(call)
    _check_extra(call)
    try:
        grammar_for(call)
    except GrammarError as exc:
        where = "tools" if forced_tools(call) is not None else "response_format.json_schema"
        _refuse(call, f"{where}: {exc}")


def _refuse(call: LLMChat, message: str) -> NoReturn:
    raise InvalidSyscall(f"llamacpp: {message}", syscall=call)


def _check_message(call: LLMChat, i: int, m: dict[str, Any]) -> None:
    role = m.get("role")
    if role not in _ROLES:
        _refuse(call, f"messages[{i}].role: {role!r} is not one of {', '.join(_ROLES)}")
    content = m.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                _refuse(call, f"messages[{i}].content[{j}]: only text parts are supported "
                              f"by the embedded model, not {kind!r}")
    elif content is not None and not isinstance(content, str):
        _refuse(call, f"messages[{i}].content: must be a string or a list of text parts")
    for j, tc in enumerate(m.get("tool_calls") or ()):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            _refuse(call, f"messages[{i}].tool_calls[{j}].function.name: missing")


def _check_tools(call: LLMChat) -> None:
    names = []
    for i, t in enumerate(call.tools or ()):
        fn = t.get("function")
        if t.get("type") != "function" or not isinstance(fn, dict):
            _refuse(call, f"tools[{i}]: only tools of type 'function' are supported")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            _refuse(call, f"tools[{i}].function.name: missing")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            _refuse(call, f"tools[{i}].function.parameters: must be a JSON schema object")
        names.append(fn["name"])
    choice = call.tool_choice
    if choice is None or choice == "auto" or choice == "none":
        return
    if not names:
        _refuse(call, f"tool_choice: {choice!r} given without tools")
    if choice == "required":
        return
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") == "function" and isinstance(name, str):
            if name not in names:
                _refuse(call, f"tool_choice.function.name: {name!r} is not among the tools "
                              f"({', '.join(names)})")
            return
    _refuse(call, f"tool_choice: {choice!r} is not supported by the embedded model (use "
                  "'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}})")


def _check_response_format(call: LLMChat) -> None:
    fmt = call.response_format
    if fmt is None:
        return
    kind = fmt.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        _refuse(call, f"response_format.type: {kind!r} is not supported (text, json_object, "
                      "json_schema)")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            _refuse(call, "response_format.json_schema: must be an object with a 'schema'")
    if kind != "text" and forced_tools(call) is not None:
        _refuse(call, f"response_format: {kind} cannot be combined with tool_choice "
                      f"{call.tool_choice!r} (both constrain the whole output)")


def _check_extra(call: LLMChat) -> None:
    extra = call.extra
    for key in extra:
        if key not in SUPPORTED_EXTRA:
            _refuse(call, f"{key}: not supported by the embedded model (it accepts "
                          f"{', '.join(SUPPORTED_EXTRA)} beyond the LLMChat fields)")
    _number(call, "top_k", lo=0, integer=True)
    _number(call, "min_p", lo=0.0, hi=1.0)
    if extra.get("n", 1) != 1:
        _refuse(call, f"n: {extra['n']!r}; the embedded model produces one choice (n=1)")
    if extra.get("logprobs") not in (None, False):
        _refuse(call, "logprobs: not supported by the embedded model")
    if extra.get("top_logprobs") not in (None, 0):
        _refuse(call, "top_logprobs: not supported by the embedded model")
    for key in ("presence_penalty", "frequency_penalty"):
        if extra.get(key) not in (None, 0, 0.0):
            _refuse(call, f"{key}: not supported by the embedded model (only 0)")
    if extra.get("parallel_tool_calls") not in (None, True, False):
        _refuse(call, "parallel_tool_calls: must be true or false")


def _number(call: LLMChat, key: str, *, lo: float, hi: float | None = None,
            integer: bool = False) -> None:
    if key not in call.extra:
        return
    v = call.extra[key]
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if not ok or isinstance(v, bool) or not math.isfinite(v) or v < lo or (
            hi is not None and v > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        kind = "an integer" if integer else "a number"
        _refuse(call, f"{key}: {v!r} must be {kind} {bounds}")
