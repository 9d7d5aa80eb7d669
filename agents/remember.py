"""An agent that remembers across runs: its memory lives in the kernel's state file,
keyed by the agent's name (``remember-1`` under ``aios run``), so a second run finds
what the first one was told.

    aios run agents/remember.py:remember "my cat is called Tiberius" --config agents/remember.toml
    aios run agents/remember.py:remember "what is my cat called?" --config agents/remember.toml

A statement is remembered; a question (ending in "?") is answered from memory (BM25
search over everything this agent was told, in any earlier run). The conversation
helper keeps the exchange within a token budget; no model is needed.
"""

from __future__ import annotations

import aios


async def remember(ctx: aios.Context, *words: str) -> str:
    text = " ".join(words).strip()
    if not text:
        return "Tell me something, or ask me a question ending in '?'."
    if not text.endswith("?"):
        await ctx.memory.add(text, metadata={"kind": "fact"})
        return f"Noted: {text}"
    hits = await ctx.memory.search(text, k=3, filter={"kind": "fact"})
    if not hits:
        return "I don't remember anything about that."
    return "I remember: " + " | ".join(h.text for h in hits)
