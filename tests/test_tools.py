"""The tool manager: @aios.tool schemas, the handler's validation, scheduling, timeouts,
approval and results, ctx.tools.run, and every bad input of the issue.

The handler is driven through a small door (the same ToolsClient agents use) with a
fake process, so these tests need no LLM; test_tools_kernel.py runs it in a kernel.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel, Field

import aios
from aios.config import KernelConfig, SchedulerConfig, ToolsConfig
from aios.errors import (
    ApprovalDenied,
    ConfigError,
    InvalidSyscall,
    ToolArgumentsInvalid,
    ToolFailed,
    ToolNotFound,
    ToolTimeout,
)
from aios.plugins import PluginRegistry
from aios.scheduler.policies import PriorityPolicy
from aios.scheduler.queue import ResourceQueue, Slot
from aios.syscalls import ToolCallRequest
from aios.tools import Tool, tool
from aios.tools.client import ToolsClient
from aios.tools.handler import ToolsHandler

# -- a small door and process, enough for the handler ---------------------------------


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    debug = info = warning = error = _add


class Proc:
    def __init__(self, pid: int = 1, name: str = "agent", priority: int = 0) -> None:
        self.pid, self.name, self.group, self.priority = pid, name, "g", priority
        self.suspended = False
        self.attained = 0.0
        self.counters: dict[str, float] = {}


class SC:
    """The handler's view of one syscall (aios.abc.SyscallContext)."""

    def __init__(self, proc: Proc, n: int) -> None:
        self._proc = proc
        self.sid = f"k.{proc.pid}.{n}"
        self.pid, self.name, self.group = proc.pid, proc.name, proc.group
        self.log = Log()
        self.ctx: Any = proc

    @property
    def priority(self) -> int:
        return self._proc.priority

    @asynccontextmanager
    async def admitted(self, queue: ResourceQueue, *, preemptible: bool = False
                       ) -> AsyncIterator[Slot]:
        entry = queue.new_entry(self._proc, self.sid, self._proc.priority)
        async with queue.admitted(entry) as slot:
            yield slot

    def account(self, **counters: float) -> None:
        for k, v in counters.items():
            self._proc.counters[k] = self._proc.counters.get(k, 0.0) + v


class Services:
    def __init__(self, config: KernelConfig, options: dict[str, Any]) -> None:
        self.config = config
        self.options = options
        self.log = Log()
        self.db: Any = None
        self.registry = PluginRegistry()
        self.queues: dict[str, ResourceQueue] = {}

    def resource(self, name: str, window: int, *, slots: int | None = None,
                 preempt: bool | None = None) -> ResourceQueue:
        q = ResourceQueue(name, window, PriorityPolicy(SchedulerConfig()))
        self.queues[name] = q
        return q

    def handler(self, family: str) -> Any:
        return None


class Door:
    def __init__(self, handler: ToolsHandler) -> None:
        self.handler = handler
        self.n = 0

    async def call(self, proc: Any, syscall: Any) -> Any:
        self.n += 1
        return await self.handler.call(SC(proc, self.n), syscall)  # type: ignore[arg-type]


class Harness:
    def __init__(self, handler: ToolsHandler, services: Services) -> None:
        self.handler = handler
        self.services = services
        self.door = Door(handler)

    def client(self, proc: Proc | None = None) -> ToolsClient:
        return ToolsClient(self.door, proc or Proc())  # type: ignore[arg-type]


@asynccontextmanager
async def harness(tools: list[Any] = (), *, config: KernelConfig | None = None,
                  **options: Any) -> AsyncIterator[Harness]:  # type: ignore[assignment]
    services = Services(config or KernelConfig(), {"tools": list(tools), **options})
    handler = ToolsHandler(services)  # type: ignore[arg-type]
    await handler.start()
    try:
        yield Harness(handler, services)
    finally:
        await handler.close()


# -- tools used below -----------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int = 0


@tool
async def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@tool(name="mixed", timeout_s=5, max_concurrency=3)
def mixed_types(
    n: int,
    mode: Literal["fast", "slow"],
    tags: list[str],
    where: Point,
    scale: Annotated[float, Field(description="A factor.", gt=0)] = 1.0,
) -> dict[str, Any]:
    """Use every kind of parameter.

    Args:
        n: How many.
        tags: Labels to keep,
            one per item.
    """
    return {"n": n * scale, "mode": mode, "tags": tags, "x": where.x}


# -- defining tools -------------------------------------------------------------------


def test_schema_from_signature_and_docstring() -> None:
    spec = mixed_types.spec
    assert spec.name == "mixed" and spec.description == "Use every kind of parameter."
    assert spec.timeout_s == 5 and spec.max_concurrency == 3 and not spec.irreversible
    p = spec.parameters
    assert p["type"] == "object" and p["additionalProperties"] is False
    assert set(p["required"]) == {"n", "mode", "tags", "where"}
    props = p["properties"]
    assert props["n"] == {"type": "integer", "description": "How many."}
    assert props["mode"]["enum"] == ["fast", "slow"]
    assert props["tags"]["items"] == {"type": "string"}
    assert props["tags"]["description"] == "Labels to keep, one per item."
    assert props["scale"]["description"] == "A factor." and props["scale"]["default"] == 1.0
    assert props["where"]["$ref"] == "#/$defs/Point" and "Point" in p["$defs"]
    assert spec.openai()["function"]["name"] == "mixed"


def test_the_decorated_function_stays_callable() -> None:
    assert mixed_types(n=2, mode="fast", tags=[], where=Point(x=1)) == {
        "n": 2.0, "mode": "fast", "tags": [], "x": 1}
    assert isinstance(word_count, Tool) and "Count the words" in (word_count.__doc__ or "")


def test_context_parameter_is_not_in_the_schema() -> None:
    @tool
    async def whoami(ctx: aios.Context, loud: bool = False) -> str:
        """Say who calls."""
        return ctx.name

    assert whoami.context_param == "ctx"
    assert list(whoami.spec.parameters["properties"]) == ["loud"]


@pytest.mark.parametrize("name", ["has space", "dots.not.ok", "x" * 65, "ünïcode"])
def test_a_name_invalid_for_openai_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid OpenAI function name"):
        tool(name=name)(lambda: 1)


def test_signatures_that_cannot_be_a_schema_are_refused() -> None:
    def star(*args: int) -> int:
        return 0

    def positional(a: int, /) -> int:
        return a

    for fn in (star, positional):
        with pytest.raises(ConfigError, match="plain or keyword-only"):
            tool(fn)
    with pytest.raises(ConfigError, match="timeout_s"):
        tool(name="t", timeout_s=0)(lambda: 1)


async def _ctx_later(x: int, ctx: aios.Context) -> int:
    return x


@pytest.mark.parametrize(("make", "named"), [
    (lambda: tool(_ctx_later), "'ctx' is a Context: the Context must be the first parameter"),
    (lambda: tool(name="t", timeout_s=float("nan"))(lambda: 1), "finite number of seconds"),
    (lambda: tool(name="t", timeout_s=float("inf"))(lambda: 1), "got inf"),
    (lambda: tool(name="t", timeout_s=-1)(lambda: 1), "> 0, got -1"),
    (lambda: tool(name="t", timeout_s="5")(lambda: 1), "got '5'"),
])
def test_bad_tool_definitions_are_config_errors(make: Any, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        make()


# -- calling tools --------------------------------------------------------------------


async def test_call_returns_a_result_and_accounts_it() -> None:
    proc = Proc()
    async with harness([word_count, mixed_types]) as h:
        r = await h.client(proc).call("word_count", {"text": "one two three"})
        assert r == aios.ToolResult(name="word_count", value=3, content="3",
                                    elapsed_s=r.elapsed_s)
        r2 = await h.client(proc).call("mixed", json.dumps(
            {"n": 2, "mode": "slow", "tags": ["a"], "where": {"x": 5}, "scale": 1.5}))
        assert r2.value == {"n": 3.0, "mode": "slow", "tags": ["a"], "x": 5}
        assert json.loads(r2.content) == r2.value
        queue = h.services.queues["tools:mixed"]
        assert queue.window == 3 and not queue.running
    assert proc.counters["tool_calls"] == 2 and proc.counters["tool_s"] > 0


async def test_a_context_tool_receives_the_callers_context() -> None:
    @tool
    async def whoami(ctx: aios.Context) -> str:
        """Say who calls."""
        return f"{ctx.name} {ctx.pid}"

    async with harness([whoami]) as h:
        r = await h.client(Proc(pid=7, name="r1")).call("whoami")
    assert r.value == "r1 7"


async def test_plain_functions_and_sync_functions_run() -> None:
    def shout(text: str) -> str:
        return text.upper()

    async with harness([shout]) as h:
        assert (await h.client().call("shout", {"text": "hi"})).content == "HI"


async def test_specs_list_all_or_the_named_tools() -> None:
    async with harness([word_count, mixed_types]) as h:
        all_specs = await h.client().specs()
        assert [s["function"]["name"] for s in all_specs] == ["word_count", "mixed"]
        assert await h.client().specs(["mixed"]) == [mixed_types.spec.openai()]
        with pytest.raises(ToolNotFound, match="nope"):
            await h.client().specs(["nope"])


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "error", "named"), [
    (lambda c: c.call("word_count", [1]), ToolArgumentsInvalid,
     "arguments must be a mapping of parameter names to values"),
    (lambda c: c.call("word_count", 5), ToolArgumentsInvalid, "got int 5"),
    (lambda c: c.specs(names=[1]), InvalidSyscall, "names must be a list of tool names"),
    (lambda c: c.specs(names=5), InvalidSyscall, "got 5"),
    (lambda c: c.run(None), InvalidSyscall, "tool_calls must be a list"),
    (lambda c: c.run("word_count"), InvalidSyscall, "got str"),
    (lambda c: c.run([5]), InvalidSyscall, "tool_calls.0 must be"),
])
async def test_bad_client_arguments_are_typed_errors(call: Any, error: type[Exception],
                                                     named: str) -> None:
    async with harness([word_count]) as h:
        with pytest.raises(error, match=re.escape(named)):
            await call(h.client())


async def test_specs_takes_a_single_name_as_one_name() -> None:
    async with harness([word_count, mixed_types]) as h:
        assert await h.client().specs("word_count") == [word_count.spec.openai()]


async def test_unknown_tool_names_close_matches() -> None:
    async with harness([word_count]) as h:
        with pytest.raises(ToolNotFound, match=r"word_cont.*close: word_count") as ei:
            await h.client().call("word_cont", {"text": "x"})
    assert ei.value.tool == "word_cont" and ei.value.syscall.name == "word_cont"


async def test_wrong_missing_and_extra_arguments_are_each_named() -> None:
    async with harness([mixed_types]) as h:
        with pytest.raises(ToolArgumentsInvalid) as ei:
            await h.client().call("mixed", {"n": "many", "mode": "medium", "where": {},
                                            "colour": "red"})
    errors = {e["loc"]: e["type"] for e in ei.value.errors}
    assert errors == {"n": "int_parsing", "mode": "literal_error", "tags": "missing",
                      "where.x": "missing", "colour": "extra_forbidden"}
    msg = str(ei.value)
    assert "- n: Input should be a valid integer" in msg and "(expected integer)" in msg
    assert "- mode: Input should be 'fast' or 'slow'" in msg
    assert "- tags: Field required (expected array of string)" in msg
    assert "- colour: Extra inputs are not permitted (known: n, mode, tags, where, scale)" in msg
    assert not h.services.queues["tools:mixed"].running  # never admitted


async def test_non_json_arguments_from_a_model() -> None:
    async with harness([word_count]) as h:
        with pytest.raises(ToolArgumentsInvalid, match="Invalid JSON") as ei:
            await h.client().call("word_count", '{"text": "unterminated')
    assert ei.value.errors[0]["type"] == "json_invalid"


async def test_a_tool_that_raises_fails_typed_and_the_next_call_works() -> None:
    calls = 0

    @tool
    async def flaky(x: int) -> int:
        """Fails the first time."""
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk on fire")
        return x

    async with harness([flaky]) as h:
        with pytest.raises(ToolFailed, match="'flaky' raised RuntimeError: disk on fire") as ei:
            await h.client().call("flaky", {"x": 1})
        assert isinstance(ei.value.__cause__, RuntimeError)
        assert not h.services.queues["tools:flaky"].running
        assert (await h.client().call("flaky", {"x": 2})).value == 2


async def test_a_tool_that_hangs_times_out_and_frees_its_slot() -> None:
    gate = anyio.Event()

    @tool(timeout_s=0.05, max_concurrency=1)
    async def hang() -> str:
        """Never returns."""
        await gate.wait()
        return "no"

    async with harness([hang]) as h:
        for _ in range(2):  # the second call gets the slot the first one freed
            with pytest.raises(ToolTimeout, match=r"'hang' did not finish within 0.05 s"):
                await h.client().call("hang")
        assert not h.services.queues["tools:hang"].running


async def test_a_sync_tool_that_hangs_times_out() -> None:
    @tool(timeout_s=0.05)
    def sleepy() -> str:
        """Blocks its thread for a while."""
        time.sleep(0.3)
        return "late"

    async with harness([sleepy]) as h:
        with pytest.raises(ToolTimeout):
            await h.client().call("sleepy")


async def test_a_non_serialisable_result_is_named() -> None:
    @tool
    async def opaque() -> Any:
        """Returns an object JSON cannot hold."""
        return object()

    async with harness([opaque]) as h:
        with pytest.raises(ToolFailed, match="not JSON-serialisable"):
            await h.client().call("opaque")


async def test_a_10_mb_result_is_refused_with_its_size() -> None:
    @tool
    async def huge() -> str:
        """Returns 10 MB."""
        return "x" * (10 * 1024 * 1024)

    async with harness([huge]) as h:
        with pytest.raises(ToolFailed, match=r"10,485,760 characters.*max_result_chars=100,000"):
            await h.client().call("huge")


async def test_two_tools_with_the_same_name_are_refused() -> None:
    @tool(name="word_count")
    async def other(text: str) -> int:
        """Another one."""
        return 0

    with pytest.raises(ConfigError, match="two tools are named 'word_count'"):
        async with harness([word_count, other]):
            pass


async def test_something_that_is_not_a_tool_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a tool"):
        async with harness([42]):
            pass


# -- approval -------------------------------------------------------------------------


@tool(irreversible=True)
async def delete_all(table: str) -> str:
    """Delete every row of a table."""
    return f"deleted {table}"


async def test_irreversible_calls_are_denied_without_an_approver() -> None:
    async with harness([delete_all]) as h:
        with pytest.raises(ApprovalDenied, match="no approver is configured") as ei:
            await h.client().call("delete_all", {"table": "users"})
    assert ei.value.reason == "no approver"


@pytest.mark.parametrize(("answer", "ok"), [
    (True, True), ("approve", True), (aios.ApprovalDecision.approve(), True),
    (False, False), ("deny", False), (None, False),
    # only exactly True or "approve" approve: no other spelling, no truthy value
    ("yes", False), ("approved", False), ("Approve", False), (" approve", False),
    ("allow", False), (1, False), ("", False),
])
async def test_an_approver_decides(answer: Any, ok: bool) -> None:
    seen: list[Any] = []

    async def approver(request: Any) -> Any:
        seen.append(request)
        return answer

    async with harness([delete_all], approver=approver) as h:
        call = h.client(Proc(pid=4, name="ops")).call("delete_all", {"table": "t"}, call_id="c1")
        if ok:
            assert (await call).value == "deleted t"
        else:
            with pytest.raises(ApprovalDenied):
                await call
    (req,) = seen
    assert (req.pid, req.agent, req.tool, req.arguments, req.call_id) == (
        4, "ops", "delete_all", {"table": "t"}, "c1")


async def test_an_approver_that_does_not_answer_is_a_denial() -> None:
    async def never(request: Any) -> bool:
        await anyio.sleep_forever()
        return True

    cfg = KernelConfig(tools=ToolsConfig(approval_timeout_s=0.01))
    async with harness([delete_all], config=cfg, approver=never) as h:
        with pytest.raises(ApprovalDenied, match="no approval within") as ei:
            await h.client().call("delete_all", {"table": "t"})
    assert ei.value.reason == "timeout"


# -- run(): all calls of one reply ----------------------------------------------------


def req(i: int, name: str, args: Any) -> ToolCallRequest:
    return ToolCallRequest(id=f"call_{i}", name=name,
                           arguments=args if isinstance(args, str) else json.dumps(args))


async def test_run_answers_every_call_in_order_and_explains_failures() -> None:
    @tool
    async def boom() -> str:
        """Raises."""
        raise ValueError("bad luck")

    async with harness([word_count, mixed_types, boom]) as h:
        msgs = await h.client().run([
            req(0, "word_count", {"text": "a b"}),
            req(1, "word_count", "{not json"),
            req(2, "mixed", {"n": "x", "mode": "fast", "tags": [], "where": {"x": 1}}),
            req(3, "nope", {}),
            req(4, "boom", {}),
            {"id": "call_5", "type": "function",
             "function": {"name": "word_count", "arguments": '{"text": "c"}'}},
        ])
    assert [m["tool_call_id"] for m in msgs] == [f"call_{i}" for i in range(6)]
    assert all(m["role"] == "tool" for m in msgs)
    assert msgs[0]["content"] == "2" and msgs[5]["content"] == "1"
    assert msgs[1]["content"].startswith("Invalid arguments for tool 'word_count'")
    assert "Invalid JSON" in msgs[1]["content"]
    assert "- n: Input should be a valid integer" in msgs[2]["content"]
    assert "Fix the arguments" in msgs[2]["content"]
    assert msgs[3]["content"].startswith("Error: no tool named 'nope'")
    assert "ValueError: bad luck" in msgs[4]["content"]


async def test_run_runs_the_calls_in_parallel() -> None:
    started = 0
    all_in = anyio.Event()

    @tool(max_concurrency=4)
    async def meet() -> str:
        """Waits until all four calls run at once (a sequential run never returns)."""
        nonlocal started
        started += 1
        if started == 4:
            all_in.set()
        await all_in.wait()
        return "met"

    async with harness([meet]) as h:
        with anyio.fail_after(5):
            msgs = await h.client().run([req(i, "meet", {}) for i in range(4)])
    assert [m["content"] for m in msgs] == ["met"] * 4


async def test_chat_result_message_carries_the_tool_calls() -> None:
    reply = aios.ChatResult(text="", tool_calls=[req(0, "word_count", {"text": "a"})])
    assert reply.message == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "word_count", "arguments": '{"text": "a"}'}}]}
    assert aios.ChatResult(text="hi").message == {"role": "assistant", "content": "hi"}


# -- scheduling -----------------------------------------------------------------------


async def test_an_urgent_agent_overtakes_a_flood_of_low_priority_calls() -> None:
    order: list[str] = []
    release = anyio.Event()

    @tool(max_concurrency=1)
    async def slow(who: str) -> str:
        """One at a time."""
        order.append(who)
        if who == "first":
            await release.wait()
        return who

    async with harness([slow]) as h:
        low, urgent = Proc(pid=1, priority=5), Proc(pid=2, priority=0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.client(low).call, "slow", {"who": "first"})
            await wait_until(lambda: order == ["first"])
            for i in range(5):
                tg.start_soon(h.client(low).call, "slow", {"who": f"low{i}"})
            await wait_until(lambda: len(h.services.queues["tools:slow"].policy) == 5)
            tg.start_soon(h.client(urgent).call, "slow", {"who": "urgent"})
            await wait_until(lambda: len(h.services.queues["tools:slow"].policy) == 6)
            release.set()
    assert order[:2] == ["first", "urgent"] and order[2:] == [f"low{i}" for i in range(5)]


async def wait_until(cond: Any) -> None:
    with anyio.fail_after(5):
        while not cond():
            await anyio.lowlevel.checkpoint()
