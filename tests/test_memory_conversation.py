"""aios.Conversation: a token budget over an agent's messages, spilling into memory."""

from __future__ import annotations

import pytest

import aios
from aios.memory.conversation import estimate_tokens
from test_memory import client, memory


def count_words(text: str) -> int:
    return len(text.split())


async def test_old_turns_move_to_memory_and_come_back_by_search() -> None:
    async with memory() as h:
        conv = aios.Conversation(client(h, "ann"), system="You are terse.", budget_tokens=40,
                                 keep_last=2, count_tokens=count_words)
        await conv.say("user", "my cat is called Tiberius")
        await conv.say("assistant", "noted")
        for i in range(6):
            await conv.say("user", f"question {i} about the weather today please")
            await conv.say("assistant", f"answer {i} sunny")
        msgs = conv.messages
        assert msgs[0] == {"role": "system", "content": "You are terse."}
        assert msgs[-2:] == [
            {"role": "user", "content": "question 5 about the weather today please"},
            {"role": "assistant", "content": "answer 5 sunny"}]
        assert conv.tokens() <= 40 and conv.spilled > 0
        assert all("Tiberius" not in str(m["content"]) for m in msgs)
        hits = await conv.recall("what is my cat called?")
        assert hits[0].text == "user: my cat is called Tiberius"
        assert hits[0].metadata == {"kind": "turn", "conversation": "default", "turn": 0,
                                    "role": "user"}
        with_recall = await conv.with_recall("cat name", k=1)
        assert with_recall[0]["role"] == "system" and with_recall[1]["role"] == "system"
        assert "Tiberius" in with_recall[1]["content"] and with_recall[2:] == msgs[1:]


async def test_the_latest_turns_and_system_stay_even_over_budget() -> None:
    async with memory() as h:
        conv = aios.Conversation(client(h, "ann"), system="s " * 50, budget_tokens=10,
                                 keep_last=2, count_tokens=count_words)
        await conv.say("user", "one two three")
        await conv.say("assistant", "four five")
        assert len(conv.messages) == 3 and conv.spilled == 0


async def test_a_tool_call_moves_with_its_results() -> None:
    async with memory() as h:
        conv = aios.Conversation(client(h, "ann"), budget_tokens=30, keep_last=1,
                                 count_tokens=count_words)
        await conv.extend([
            {"role": "user", "content": "add numbers"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "add", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "2"},
        ])
        await conv.say("user", "now something long " * 4)
        roles = [m["role"] for m in conv.messages]
        assert "tool" not in roles or roles[roles.index("tool") - 1] == "assistant"
        assert roles[0] != "tool"
        texts = [x.text for x in await conv.recall("add tool calls", k=10)]
        assert any(t.startswith("assistant:") and "tool calls" in t for t in texts)
        assert "tool: 2" in texts


async def test_conversations_are_told_apart_by_name() -> None:
    async with memory() as h:
        m = client(h, "ann")
        a = aios.Conversation(m, budget_tokens=8, keep_last=1, name="a",
                              count_tokens=count_words)
        b = m.conversation(budget_tokens=8, keep_last=1, name="b", count_tokens=count_words)
        await a.say("user", "apples are red")
        await a.say("user", "filler filler")
        await b.say("user", "apples are green")
        await b.say("user", "filler filler")
        assert [x.text for x in await a.recall("apples")] == ["user: apples are red"]
        assert [x.text for x in await b.recall("apples")] == ["user: apples are green"]


@pytest.mark.parametrize("bad", [{"budget_tokens": 0}, {"budget_tokens": -5},
                                 {"budget_tokens": "100"}, {"keep_last": 0},
                                 {"keep_last": 2.5}])
def test_bad_arguments_are_config_errors(bad: dict[str, object]) -> None:
    [key] = bad
    with pytest.raises(aios.ConfigError, match=f"^{key}: must be an integer >= 1") as info:
        aios.Conversation(object(), **bad)  # type: ignore[arg-type]
    assert info.value.key == key


def test_estimate() -> None:
    assert estimate_tokens("") == 0 and estimate_tokens("abcde") == 2


async def test_a_message_must_have_a_role() -> None:
    conv = aios.Conversation(object())
    with pytest.raises(aios.InvalidSyscall, match="role"):
        await conv.append({"content": "x"})
