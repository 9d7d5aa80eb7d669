"""Tools for the embedded model: the prompt section that describes them, the messages a
chat template without tool support can render, and the scanner that turns
``<tool_call>{...}</tool_call>`` output into tool calls.

The format is the Hermes / Qwen2.5 one (``<tools>`` in the system prompt, one JSON object
``{"name": ..., "arguments": {...}}`` per ``<tool_call>`` block, tool results sent back as
``<tool_response>`` in a user turn), as in Qwen2.5's own chat template: the format small
instruction-tuned models (SmolLM2, Qwen) were trained on.

The scanner is a pure function of the text it is fed, like ``TextStream``: a generation
resumed from its token ids replays them and reaches exactly the state the interrupted one
had. This module must never import llama.cpp or do I/O.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from aios.syscalls import ToolCallRequest

__all__ = ["OPEN", "CLOSE", "ToolCallScanner", "plain_messages", "tools_section"]

_ROLE_ALIASES = {"developer": "system", "function": "tool"}

OPEN = "<tool_call>"
CLOSE = "</tool_call>"

# Qwen2.5's wording (its chat template, "# Tools" section), the function list one JSON
# object per line.
_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_FOOTER = (
    "</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def tools_section(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt section describing ``tools`` (OpenAI ``tools`` list)."""
    lines = [json.dumps(t, ensure_ascii=False) for t in tools]
    return "\n".join([_HEADER, *lines, _FOOTER])


def text_of(content: Any) -> str:
    """A message's content as one string: OpenAI content parts joined, None as ""."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content)


def plain_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> list[dict[str, str]]:
    """Messages a plain ChatML-style template renders: string content, no tool fields.

    The tools section goes first in the system message (one is added when there is none);
    an assistant's ``tool_calls`` become ``<tool_call>`` blocks in its content; consecutive
    ``tool`` messages become one user turn of ``<tool_response>`` blocks (Qwen2.5's way).
    """
    out: list[dict[str, str]] = []
    for m in messages:
        role, text = str(m.get("role")), text_of(m.get("content"))
        role = _ROLE_ALIASES.get(role, role)
        if role == "assistant" and m.get("tool_calls"):
            blocks = [_call_block(tc) for tc in m["tool_calls"]]
            text = "\n".join([text, *blocks] if text else blocks)
        if role == "tool":
            block = f"<tool_response>\n{text}\n</tool_response>"
            if out and out[-1].get("_tool") == "1":
                out[-1]["content"] += "\n" + block
                continue
            out.append({"role": "user", "content": block, "_tool": "1"})
            continue
        out.append({"role": role, "content": text})
    for m in out:
        m.pop("_tool", None)
    if tools:
        section = tools_section(tools)
        if out and out[0]["role"] == "system":
            first = out[0]["content"]
            out[0]["content"] = f"{first}\n\n{section}" if first else section
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def _call_block(tc: dict[str, Any]) -> str:
    fn = tc.get("function") or {}
    args: Any = fn.get("arguments", "{}")
    if isinstance(args, str):
        with contextlib.suppress(ValueError):  # else shown as the string it is
            args = json.loads(args)
    body = json.dumps({"name": fn.get("name", ""), "arguments": args}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


def parse_call(body: str) -> tuple[str, str] | None:
    """``(name, arguments JSON)`` of one ``<tool_call>`` body, or None if it is not one."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models send the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


class ToolCallScanner:
    """Splits generated text into content (emitted as it comes) and tool-call blocks.

    Text before the first ``<tool_call>`` is content; a tail that could still become the
    tag is held back. From the tag on, text is captured, never emitted: at the end the
    blocks become tool calls if every one parses, otherwise the captured text is emitted
    as content after all. After a complete block, anything but whitespace or another
    block ends the generation (:attr:`done`); so does the first block when ``parallel``
    is False. Its state is a pure function of the text fed.
    """

    def __init__(self, *, parallel: bool = True) -> None:
        self._parallel = parallel
        self._buf = ""          # text not yet emitted nor captured (TEXT) / current block
        self._raw = ""          # everything from the first OPEN on, for the fallback
        self._bodies: list[str] = []
        self._state = "text"    # text | call | between | done
        self.emitted = ""

    @property
    def done(self) -> bool:
        """A tool call is complete and no further one follows: stop generating."""
        return self._state == "done"

    def feed(self, text: str) -> str:
        """Add text; return the content that is safe to emit now."""
        if self._state == "done" or not text:
            return ""
        if self._state != "text":
            self._raw += text
        self._buf += text
        out = self._scan()
        self.emitted += out
        return out

    def finish(self, request_id: str) -> tuple[str, list[ToolCallRequest] | None]:
        """The generation ended: the remaining content and the tool calls (None if none)."""
        if self._state == "text":
            out, self._buf = self._buf, ""
            self.emitted += out
            return out, None
        bodies = list(self._bodies)
        if self._state == "call" and self._buf.strip():
            bodies.append(self._buf)  # an unclosed last block (some models omit CLOSE)
        parsed = [parse_call(b) for b in bodies]
        if parsed and all(p is not None for p in parsed):
            calls = [
                ToolCallRequest(id=f"call_{request_id}_{i}", name=name, arguments=args)
                for i, (name, args) in enumerate(p for p in parsed if p is not None)
            ]
            return "", calls
        self.emitted += self._raw
        return self._raw, None

    def _scan(self) -> str:
        out = ""
        while True:
            if self._state == "text":
                i = self._buf.find(OPEN)
                if i == -1:
                    keep = _partial_suffix(self._buf, OPEN)
                    cut = len(self._buf) - keep
                    out += self._buf[:cut]
                    self._buf = self._buf[cut:]
                    return out
                out += self._buf[:i]
                self._raw = self._buf[i:]
                self._buf = self._buf[i + len(OPEN):]
                self._state = "call"
            elif self._state == "call":
                j = self._buf.find(CLOSE)
                if j == -1:
                    return out
                self._bodies.append(self._buf[:j])
                self._buf = self._buf[j + len(CLOSE):]
                self._state = "between" if self._parallel else "done"
            elif self._state == "between":
                rest = self._buf.lstrip()
                if rest.startswith(OPEN):
                    self._buf = rest[len(OPEN):]
                    self._state = "call"
                elif rest and not OPEN.startswith(rest):
                    self._state = "done"
                    return out
                else:
                    return out
            else:
                return out


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that ``tag`` starts with (< len(tag))."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
