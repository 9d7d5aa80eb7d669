"""Question-answering agents: the demo of `make demo`.

Each agent asks the kernel's default LLM one question (chosen by its pid when none is
given) and returns the first line of the answer.
"""

from __future__ import annotations

import aios

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 times 12?",
    "Why is the sky blue? Answer in one sentence.",
    "Give one tip for writing clear code.",
    "What is the largest planet in the solar system?",
]


async def answer(ctx: aios.Context, question: str | None = None) -> str:
    q = question or QUESTIONS[(ctx.pid - 1) % len(QUESTIONS)]
    reply = await ctx.llm.chat(
        [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
         {"role": "user", "content": q}],
        max_tokens=48, temperature=0.0,
    )
    text = reply.text.strip().splitlines()[0] if reply.text.strip() else ""
    return f"{q} -> {text}"
