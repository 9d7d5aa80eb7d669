"""A ReAct agent: think, call a tool, observe, repeat, answer.

Runs on any backend that returns tool calls; with the simulated engine (``sim.toml``
beside this file) no model is needed:

    aios run agents/react.py:react -n 20 --policy las --config agents/sim.toml

Its tools are ``@aios.tool`` functions listed in ``TOOLS`` (``aios run`` gives a file's
``TOOLS`` to the kernel; embedding apps pass ``aios.Kernel(config, tools=TOOLS)``). The
kernel validates every call's arguments, schedules the tool like an LLM call, and
``ctx.tools.run`` runs all calls of one reply in parallel, answering a bad call with a
message that tells the model what to fix.

Its messages live in an :class:`aios.Conversation` within ``budget_tokens``: the system
prompt (which holds the task) and the latest turns stay; older turns (a tool call moves
with its results) go to the agent's own memory, and the ones that match the task are
recalled into each request.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

import aios


@aios.tool(max_concurrency=4, timeout_s=5.0)
async def search(query: Annotated[str, Field(description="What to look for.")]) -> str:
    """Search the notes for a query."""
    return f"3 notes mention {query!r}"


TOOLS = [search]


async def react(ctx: aios.Context, task: str = "", max_steps: int = 4,
                budget_tokens: int = 1024) -> str:
    task = task or f"Find what the notes say about topic {ctx.pid}."
    conv = aios.Conversation(ctx, system=f"Use the search tool, then answer.\nTask: {task}",
                             budget_tokens=budget_tokens, keep_last=4, name="react")
    await conv.say("user", task)
    tools = await ctx.tools.specs()
    for _ in range(max_steps):
        reply = await ctx.llm.chat(await conv.with_recall(task), tools=tools, max_tokens=32)
        if not reply.tool_calls:
            return reply.text
        await conv.extend([reply.message, *await ctx.tools.run(reply.tool_calls)])
    return "gave up after max_steps"
