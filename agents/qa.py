"""Question-answering agents: the demo of `make demo`.

Each agent asks the kernel's default LLM one short question (chosen by its pid when none
is given) and returns the answer's first line. The questions ask for a few words, so
SmolLM2-135M's answers fit ``max_tokens`` instead of being cut mid-sentence; a model
this small is often wrong, and the demo is about the scheduling, not the answers.
"""

from __future__ import annotations

import aios

QUESTIONS = [
    "Name a primary color. One word.",
    "What animal says 'moo'? One word.",
    "What is the opposite of hot? One word.",
    "Name a fruit that is yellow. One word.",
    "What do bees make? One word.",
    "What color is grass? One word.",
]


async def answer(ctx: aios.Context, question: str | None = None) -> str:
    q = question or QUESTIONS[(ctx.pid - 1) % len(QUESTIONS)]
    reply = await ctx.llm.chat(
        [{"role": "system", "content": "Answer in at most five words."},
         {"role": "user", "content": q}],
        max_tokens=16, temperature=0.0,
    )
    text = reply.text.strip().splitlines()[0] if reply.text.strip() else ""
    return f"{q} -> {text}"
