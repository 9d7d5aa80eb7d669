"""A ReAct agent: think, call a tool, observe, repeat, answer.

Runs on any backend that returns tool calls; with the simulated engine (``sim.toml``
beside this file) no model is needed:

    aios run agents/react.py:react -n 20 --policy las --config agents/sim.toml

Tools here are plain local functions; the kernel schedules every LLM call.
"""

from __future__ import annotations

import json
from typing import Any

import aios

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the notes for a query.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]


def search(query: str = "") -> str:
    return f"3 notes mention {query!r}"


async def react(ctx: aios.Context, task: str = "", max_steps: int = 4) -> str:
    task = task or f"Find what the notes say about topic {ctx.pid}."
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Use the search tool, then answer."},
        {"role": "user", "content": task},
    ]
    for _ in range(max_steps):
        reply = await ctx.llm.chat(messages, tools=TOOLS, max_tokens=32)
        if not reply.tool_calls:
            return reply.text
        messages.append({"role": "assistant", "content": reply.text or None, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls]})
        for call in reply.tool_calls:
            try:
                args = json.loads(call.arguments or "{}")
            except ValueError:
                args = {}
            result = search(**args) if call.name == "search" else f"unknown tool {call.name}"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return "gave up after max_steps"
