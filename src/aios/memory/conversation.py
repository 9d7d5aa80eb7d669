"""``aios.Conversation``: an agent's messages kept within a token budget.

What agents most need memory for. The system prompt and the latest turns always stay;
when the messages pass the budget, the oldest turns move into the agent's memory (one
memory per message, metadata ``{"kind": "turn", "conversation": <name>, "turn": n,
"role": ...}``) and can be recalled by search. An assistant message with tool calls
moves together with its tool results, so the messages sent to a model always pair each
tool call with its answer.

Token counts are estimated (``count_tokens``, default: one token per 4 characters,
rounded up, plus 4 per message for the chat template); give the model's own tokenizer
for an exact budget. This module does nothing but call ``ctx.memory``'s verbs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aios.errors import ConfigError, InvalidSyscall
from aios.syscalls.memory import MemoryHit

if TYPE_CHECKING:
    from aios.memory.client import MemoryClient

__all__ = ["Conversation", "estimate_tokens"]

MESSAGE_OVERHEAD = 4
"""Tokens a chat template adds per message (role markers), as estimated."""


def estimate_tokens(text: str) -> int:
    """About one token per 4 characters of English (OpenAI's rule of thumb), rounded up."""
    return (len(text) + 3) // 4


class Conversation:
    """Messages for ``ctx.llm.chat`` within ``budget_tokens``.

    ``memory`` is ``ctx.memory`` (or ``ctx`` itself). ``keep_last``: how many of the latest
    messages always stay. ``name`` tells this conversation's spilled turns apart from
    others' in the same namespace (an agent spawned again under the same name and
    conversation name can recall what an earlier run said).
    """

    def __init__(
        self,
        memory: MemoryClient | Any,
        *,
        system: str | None = None,
        budget_tokens: int = 2048,
        keep_last: int = 4,
        name: str = "default",
        count_tokens: Callable[[str], int] = estimate_tokens,
    ) -> None:
        for key, value in (("budget_tokens", budget_tokens), ("keep_last", keep_last)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"must be an integer >= 1, got {value!r}", key=key)
        self._memory: MemoryClient = getattr(memory, "memory", memory)
        self.system = system
        self.budget_tokens = budget_tokens
        self.keep_last = keep_last
        self.name = name
        self._count = count_tokens
        self._live: list[dict[str, Any]] = []
        self._turn = 0
        self.spilled = 0
        """Messages moved into memory so far."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The messages to send: the system prompt (if any), then the live turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self._live]

    def tokens(self) -> int:
        """Estimated tokens of :attr:`messages`."""
        return sum(self._tokens(m) for m in self.messages)

    async def append(self, message: dict[str, Any]) -> None:
        """Add one message (OpenAI shape); older turns move to memory as needed."""
        await self.extend([message])

    async def extend(self, messages: Sequence[dict[str, Any]]) -> None:
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise InvalidSyscall(f"a message must be a dict with a 'role', got {m!r}")
            self._live.append(dict(m))
        await self._spill()

    async def say(self, role: str, content: str) -> None:
        await self.append({"role": role, "content": content})

    async def recall(self, query: str, k: int = 3) -> list[MemoryHit]:
        """Spilled turns of this conversation that best match ``query``."""
        return await self._memory.search(
            query, k=k, filter={"kind": "turn", "conversation": self.name})

    async def with_recall(self, query: str, k: int = 3) -> list[dict[str, Any]]:
        """:attr:`messages` plus, after the system prompt, one system message quoting the
        recalled turns relevant to ``query`` (none: just :attr:`messages`)."""
        hits = await self.recall(query, k) if self.spilled else []
        msgs = self.messages
        if hits:
            lines = "\n".join(f"- {h.text}" for h in hits)
            note = {"role": "system", "content": f"Earlier in this conversation:\n{lines}"}
            msgs.insert(1 if self.system else 0, note)
        return msgs

    # -- spilling ---------------------------------------------------------------------

    def _tokens(self, m: dict[str, Any]) -> int:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content)
        calls = m.get("tool_calls")
        extra = self._count(json.dumps(calls)) if calls else 0
        return MESSAGE_OVERHEAD + self._count(content) + extra

    async def _spill(self) -> None:
        """Move the oldest turns to memory while over budget, keeping ``keep_last``."""
        while self.tokens() > self.budget_tokens:
            n = self._oldest_turn()
            if n == 0:
                return
            for m in self._live[:n]:
                await self._memory.add(self._render(m), metadata={
                    "kind": "turn", "conversation": self.name, "turn": self._turn,
                    "role": m["role"]})
                self._turn += 1
                self.spilled += 1
            del self._live[:n]

    def _oldest_turn(self) -> int:
        """How many leading messages form the oldest turn that may move (0: none may).
        An assistant message with tool calls moves with the tool results that follow."""
        movable = len(self._live) - self.keep_last
        if movable <= 0:
            return 0
        n = 1
        while n < len(self._live) and self._live[n].get("role") == "tool":
            n += 1
        return n if n <= movable else 0

    @staticmethod
    def _render(m: dict[str, Any]) -> str:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content)
        calls = m.get("tool_calls")
        if calls:
            content = f"{content} [tool calls: {json.dumps(calls)}]".strip()
        return f"{m['role']}: {content}" if content else f"{m['role']}: (empty)"
