"""Constrained decoding: the GBNF grammar a call needs, and llama.cpp's grammar sampler.

A call is constrained when it asks for JSON (``response_format`` ``json_object`` or
``json_schema``) or forces a tool call (``tool_choice="required"`` or a named function).
:func:`grammar_for` builds the GBNF text with llama-cpp-python's JSON-schema converter
(``llama_cpp.llama_grammar``, a port of llama.cpp's ``json-schema-to-grammar``);
:class:`Grammar` holds one llama.cpp grammar sampler and masks a logits vector with it.

Exact resumption: a grammar's state is a function of the tokens it accepted, so a
resumed generation rebuilds it by accepting the resumed tokens again; the sampled token
still depends only on the logits and ``(seed, position)`` (see ``_sampling``). Masking
uses llama.cpp's usual shortcut: the token sampled from the unconstrained logits is kept
when the grammar allows it, and only otherwise are all logits masked and the token drawn
again (deterministic either way).

:func:`grammar_for` is pure Python; :class:`Grammar` calls llama.cpp and runs on the
backend's model thread only.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_grammar import SchemaConverter

from aios.syscalls import LLMChat
from aios_llamacpp._tools import CLOSE, OPEN

__all__ = ["Grammar", "GrammarError", "forced_tools", "grammar_for"]

# This converter version lets a JSON string hold raw control characters (a newline), which
# json.loads refuses; llama.cpp's current converter excludes them, as JSON requires.
_CHAR_RULE = 'char ::= [^"\\\\]'
_JSON_CHAR_RULE = 'char ::= [^"\\\\\\x7F\\x00-\\x1F]'

_SCHEMA_CONVERTER: Any = SchemaConverter  # untyped in llama-cpp-python
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class GrammarError(ValueError):
    """A schema or grammar llama.cpp cannot use (names what is wrong)."""


def forced_tools(call: LLMChat) -> list[dict[str, Any]] | None:
    """The tools a call must call one of (``tool_choice`` required / named), else None."""
    choice, tools = call.tool_choice, call.tools or []
    if choice == "required":
        return tools
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return [t for t in tools if (t.get("function") or {}).get("name") == name]
    return None


def grammar_for(call: LLMChat) -> str | None:
    """The GBNF grammar constraining ``call``'s output, or None if it is unconstrained."""
    forced = forced_tools(call)
    if forced is not None:
        return _tool_call_grammar(forced)
    fmt = call.response_format or {}
    kind = fmt.get("type")
    if kind == "json_object":
        return _schema_grammar({"type": "object"}, "")
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema", {"type": "object"})
        return _schema_grammar(schema, "")
    return None


def _schema_grammar(schema: Any, name: str, extra: str = "") -> str:
    if not isinstance(schema, dict):
        raise GrammarError("a JSON schema must be an object")
    try:
        converter: Any = _SCHEMA_CONVERTER(prop_order={}, allow_fetch=False, dotall=False,
                                           raw_pattern=False)
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
        converter.visit(resolved, name)
        text = str(converter.format_grammar())
    except Exception as exc:  # the converter raises bare Exceptions / KeyErrors
        raise GrammarError(f"cannot turn the JSON schema into a grammar: {exc}") from exc
    lines = [_JSON_CHAR_RULE + line[len(_CHAR_RULE):] if line.startswith(_CHAR_RULE + " ")
             else line for line in text.splitlines()]
    return "\n".join([*lines, extra]) if extra else "\n".join(lines)


def _tool_call_grammar(tools: Sequence[dict[str, Any]]) -> str:
    """One ``<tool_call>`` block calling one of ``tools`` with schema-valid arguments."""
    options = []
    for t in tools:
        fn = t.get("function") or {}
        params = fn.get("parameters") or {"type": "object"}
        options.append({
            "type": "object",
            "properties": {"name": {"const": fn.get("name")}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    schema = options[0] if len(options) == 1 else {"oneOf": options}
    wrapper = f'root ::= "{OPEN}\\n" call "\\n{CLOSE}"'
    return _schema_grammar(schema, "call", wrapper)


class Grammar:
    """One llama.cpp grammar sampler over a model's vocabulary (model thread only)."""

    def __init__(self, vocab: Any, n_vocab: int, gbnf: str) -> None:
        self._n_vocab = n_vocab
        self._sampler = llama_cpp.llama_sampler_init_grammar(
            vocab, gbnf.encode("utf-8"), b"root"
        )
        if not self._sampler:
            raise GrammarError("llama.cpp could not parse the grammar")
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._all = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._all["id"] = np.arange(n_vocab, dtype=np.int32)

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def allows(self, token: int) -> bool:
        self._one["id"] = token
        self._one["logit"] = 0.0
        self._apply(self._one)
        return bool(np.isfinite(self._one["logit"][0]))

    def mask(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """A copy of ``logits`` with every token the grammar forbids at -inf."""
        data = self._all
        data["id"] = np.arange(self._n_vocab, dtype=np.int32)
        data["logit"] = logits
        data["p"] = 0.0
        self._apply(data)
        out = np.full(self._n_vocab, -np.inf, dtype=np.float32)
        out[data["id"]] = data["logit"]
        return out

    def _apply(self, data: npt.NDArray[Any]) -> None:
        arr = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(data), selected=-1, sorted=False,
        )
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(arr))
        if arr.size != len(data):
            raise GrammarError("llama.cpp's grammar sampler resized the candidates")

    def free(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None
