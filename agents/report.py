"""An agent that writes a report to its storage space, lets the model edit it, and rolls
the edit back when it is bad (much shorter than the draft, or a refusal).

    aios run agents/report.py:report "why the sky is blue" --config agents/sim.toml

Every write is a version: the bad edit stays in the history, and the rollback is a new
version equal to the draft. ``if_version`` makes each step fail with
``StorageConflict`` rather than overwrite a version written meanwhile by someone else.
"""

from __future__ import annotations

import re

import aios

REFUSALS = ("sorry", "i can't", "i cannot", "as an ai")


def acceptable(draft: str, edit: str) -> bool:
    """An edit may tighten a report, not gut it or refuse."""
    return len(edit) >= len(draft) // 2 and not edit.strip().lower().startswith(REFUSALS)


async def report(ctx: aios.Context, topic: str = "why the sky is blue") -> str:
    path = f"reports/{re.sub(r'[^a-z0-9]+', '-', topic.lower()).strip('-')}.md"
    ask = [{"role": "user", "content": f"Write a short report on {topic}."}]
    draft = (await ctx.llm.chat(ask, max_tokens=200)).text
    v1 = await ctx.storage.write(path, f"# {topic}\n\n{draft}\n")

    ask = [{"role": "user", "content": f"Tighten this report:\n\n{draft}"}]
    edit = (await ctx.llm.chat(ask, max_tokens=200)).text
    v2 = await ctx.storage.write(path, f"# {topic}\n\n{edit}\n", if_version=v1.version)
    if not acceptable(draft, edit):
        await ctx.storage.rollback(path, v1.version, if_version=v2.version)

    versions = await ctx.storage.history(path)
    current = await ctx.storage.read_text(path)
    trail = ", ".join(f"v{v.version} {v.sha256[:8]}" for v in versions)
    kept = "draft" if current == f"# {topic}\n\n{draft}\n" else "edit"
    return f"{path}: {trail}; current is the {kept}"
