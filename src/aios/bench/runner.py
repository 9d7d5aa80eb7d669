"""Run one workload on one system: the kernel under a policy, or the no-kernel baseline.

Both systems run the same agent program (:func:`react_agent`) on the same sampled agents
against a fresh engine with the same settings; only the way an agent reaches the LLM
differs: ``ctx.llm.chat`` through the kernel, or the backend's own client called directly
and concurrently (the baseline). So do a workload's simulated tools: a kernel tool (its own
queue and window, ordered by the policy) through ``ctx.tools.call``, or the same sleep
behind an ``anyio.CapacityLimiter`` (first come, first served). Everything runs in this
process and event loop.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

import aios
from aios.bench.workload import AgentSpec, Workload, sample_agents
from aios.errors import AIOSError, RateLimited
from aios.llm.base import GenerationRequest
from aios.llm.openai_backend import OpenAIBackend
from aios.llm.sim import SimBackend, SimEngine, engine_config_from_options
from aios.tools.function import Tool

__all__ = ["AgentRecord", "RunResult", "Target", "run_system"]

NOPREEMPT = "-nopreempt"
"""A system named ``<policy>-nopreempt`` runs the policy with preemption switched off."""

SYSTEM_PROMPT = "You are a careful agent. Think, call tools, and answer."

CallFn = Callable[[list[dict[str, Any]], int], Awaitable[int]]
"""(messages, max_tokens) -> completion tokens; raises on failure."""
ToolFn = Callable[[str], Awaitable[None]]
"""(tool name) -> None once the call is done; raises on failure."""


@dataclass(frozen=True, slots=True)
class Target:
    """What the systems talk to: the in-process sim engine, or an HTTP server."""

    backend: str = "sim"           # "sim" | "openai"
    base_url: str | None = None
    model: str = ""
    slots: int = 8
    max_retries: int = 5
    window: int | None = None
    """The kernel's admission window (default: the workload's, else the kernel's)."""
    headroom: int | None = None
    """Window = slots + headroom (when ``window`` is unset): requests the engine queues."""
    continuation: bool = False
    """The server continues a preempted assistant message (``supports_continuation``)."""

    def window_for(self, workload_window: int | None, slots: int) -> int | None:
        if self.window is not None:
            return self.window
        if self.headroom is not None:
            return slots + self.headroom
        return workload_window


@dataclass(slots=True)
class AgentRecord:
    idx: int
    cls: str
    group: str
    priority: int
    arrival: float
    done: float | None = None
    error: str | None = None
    tokens: int = 0
    calls: int = 0
    rate_limited: int = 0


@dataclass(slots=True)
class RunResult:
    system: str
    agents: list[AgentRecord]
    calls: list[tuple[float, float, str, int, str]] = field(default_factory=list)
    """(start, end, group, completion tokens, class) of every LLM call."""
    tool_calls: list[tuple[float, float, str]] = field(default_factory=list)
    """(start, end, class) of every call of a workload tool, queueing included."""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)
    context_switches: int = 0
    reprefill_tokens: int = 0
    """Tokens prefilled again by resumes (the recompute cost of context switches)."""
    bumps: int = 0
    """Requests stopped at zero cost while queued in the engine, for more urgent ones."""


async def react_agent(spec: AgentSpec, call: CallFn, rec: AgentRecord,
                      result: RunResult, t0: float, max_retries: int,
                      tool: ToolFn | None = None) -> None:
    """The workload's agent: ``steps`` turns of LLM call + tool wait (or ``spec.tool``
    calls, through ``tool``) on a growing chat."""
    clock = time.perf_counter
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Task {spec.idx}: {spec.task}"},
    ]
    try:
        for step in range(spec.steps):
            start = clock() - t0
            for attempt in range(max_retries + 1):
                try:
                    n = await call(msgs, spec.max_tokens[step])
                    break
                except RateLimited as exc:
                    # What a well-behaved client does with a 429: back off and retry.
                    rec.rate_limited += 1
                    if attempt == max_retries:
                        raise
                    await anyio.sleep(min(2.0, (exc.retry_after or 0.05) * 2**attempt))
            end = clock() - t0
            rec.tokens += n
            rec.calls += 1
            result.calls.append((start, end, spec.group, n, spec.cls))
            msgs.append({"role": "assistant", "content": f"step {step} done ({n} tokens)"})
            if step + 1 < spec.steps:
                if spec.tool is not None and tool is not None:
                    await _tool_round(spec, spec.tool, tool, result, t0)
                else:
                    await anyio.sleep(spec.tool_s)
                msgs.append({"role": "user", "content": "observation: "
                             + " ".join(spec.task.split()[: spec.tool_words])})
        rec.done = clock() - t0
    except AIOSError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
        rec.done = clock() - t0


async def _tool_round(spec: AgentSpec, name: str, tool: ToolFn, result: RunResult,
                      t0: float) -> None:
    """``spec.tool_calls`` calls of tool ``name`` at once, each timed from its submission."""
    async def one() -> None:
        start = time.perf_counter() - t0
        await tool(name)
        result.tool_calls.append((start, time.perf_counter() - t0, spec.cls))

    if spec.tool_calls == 1:
        await one()
        return
    async with anyio.create_task_group() as tg:
        for _ in range(spec.tool_calls):
            tg.start_soon(one)


def bench_tools(workload: Workload) -> list[Tool]:
    """The workload's simulated tools as kernel tools: a fixed sleep each, under the
    tool's own window (``max_concurrency``)."""
    return [aios.tool(name=t.name, max_concurrency=t.max_concurrency,
                      description=f"Simulated tool: {t.latency_ms:g} ms per call.")(
                          _sleeper(t.latency_ms / 1000.0)) for t in workload.tools]


def _sleeper(latency_s: float) -> Callable[[], Awaitable[str]]:
    async def sim_tool() -> str:
        await anyio.sleep(latency_s)
        return "ok"

    return sim_tool


def engine_for(workload: Workload, target: Target) -> SimEngine:
    opts = dict(workload.engine)
    opts.setdefault("slots", target.slots)
    return SimEngine(engine_config_from_options(opts, "engine"))


async def run_system(
    system: str,
    workload: Workload,
    target: Target,
    *,
    on_done: Callable[[], None] = lambda: None,
) -> RunResult:
    """Run ``workload`` on ``system`` ("baseline" or a policy name)."""
    engine = engine_for(workload, target) if target.backend == "sim" else None
    cfg = engine.config if engine is not None else None
    slots = cfg.slots if cfg is not None else target.slots
    step_full_s = ((cfg.step_base_ms + cfg.step_per_seq_ms * slots) * cfg.time_scale / 1e3
                   if cfg is not None else 0.02)
    prefill_s = cfg.prefill_ms_per_token * cfg.time_scale / 1e3 if cfg is not None else 0.0
    specs = sample_agents(workload, step_full_s, slots, prefill_s)
    result = RunResult(system, [AgentRecord(s.idx, s.cls, s.group, s.priority, s.arrival_s)
                                for s in specs])
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if system == "baseline":
        await _run_baseline(specs, workload, target, engine, result, t0, on_done)
    else:
        await _run_kernel(system, specs, workload, target, engine, result, t0, on_done)
    result.wall_s = max((r.done or 0.0) for r in result.agents)
    result.cpu_s = time.process_time() - cpu0
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if engine is not None:
        result.engine = engine.stats()
        await engine.close()
    return result


async def _arrivals(specs: list[AgentSpec], t0: float,
                    start: Callable[[AgentSpec], None]) -> None:
    for spec in specs:
        delay = spec.arrival_s - (time.perf_counter() - t0)
        if delay > 0:
            await anyio.sleep(delay)
        start(spec)


async def _run_kernel(policy: str, specs: list[AgentSpec], workload: Workload,
                      target: Target, engine: SimEngine | None, result: RunResult,
                      t0: float, on_done: Callable[[], None]) -> None:
    sched: dict[str, Any] = dict(workload.kernel)
    if policy.endswith(NOPREEMPT):
        policy, sched["preempt"] = policy[: -len(NOPREEMPT)], False
    slots = target.slots if engine is None else engine.config.slots
    llm = aios.LLMConfig(
        name="default", backend=target.backend, base_url=target.base_url,
        model=target.model, max_concurrency=slots,
        window=target.window_for(workload.window, slots), max_retries=target.max_retries,
        supports_continuation=target.continuation and engine is None)
    config = aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy=policy, **sched), llm=[llm])
    backends = {"default": SimBackend.from_engine(engine, llm)} if engine is not None else {}

    async def agent(ctx: aios.Context, spec: AgentSpec) -> None:
        async def call(msgs: list[dict[str, Any]], max_tokens: int) -> int:
            r = await ctx.llm.chat(msgs, max_tokens=max_tokens, temperature=0.0)
            return r.usage.completion_tokens

        async def tool(name: str) -> None:
            await ctx.tools.call(name)

        await react_agent(spec, call, result.agents[spec.idx], result, t0, target.max_retries,
                          tool)
        on_done()

    async with aios.Kernel(config, backends=backends, tools=bench_tools(workload)) as kernel:
        procs: list[aios.Process[None]] = []

        def start(spec: AgentSpec) -> None:
            procs.append(kernel.spawn(agent, spec, name=f"{spec.cls}-{spec.idx}",
                                      priority=spec.priority, group=spec.group))

        await _arrivals(specs, t0, start)
        for p in procs:
            await p.wait()
        result.context_switches = kernel.context_switches
        result.reprefill_tokens = sum(sw.reprefill_tokens for p in procs for sw in p.switch_log)
        result.bumps = int(sum(p.counters.get("bumps", 0) for p in procs))


async def _run_baseline(specs: list[AgentSpec], workload: Workload, target: Target,
                        engine: SimEngine | None, result: RunResult, t0: float,
                        on_done: Callable[[], None]) -> None:
    tool = _baseline_tool(workload)
    if engine is not None:
        async def call(msgs: list[dict[str, Any]], max_tokens: int) -> int:
            r = await engine.chat(msgs, max_tokens=max_tokens, temperature=0.0)
            return r.usage.completion_tokens

        await _baseline_agents(specs, call, result, t0, on_done, target.max_retries, tool)
        return
    # The kernel's own HTTP client and stream parse, called directly and concurrently:
    # the baseline streams as the kernel does, so both pay the same client cost.
    backend = OpenAIBackend(aios.LLMConfig(
        name="baseline", backend="openai", base_url=target.base_url, model=target.model,
        max_concurrency=target.slots, max_retries=0))
    await backend.start()
    seq = 0

    async def call_http(msgs: list[dict[str, Any]], max_tokens: int) -> int:
        nonlocal seq
        seq += 1
        request = GenerationRequest(call=aios.LLMChat(messages=msgs, max_tokens=max_tokens,
                                                      temperature=0.0), request_id=f"b{seq}")
        n = 0
        async for chunk in backend.generate(request):
            n = chunk.usage.completion_tokens if chunk.usage is not None else n + chunk.n_tokens
        return n

    try:
        await _baseline_agents(specs, call_http, result, t0, on_done, target.max_retries,
                               tool)
    finally:
        await backend.close()


def _baseline_tool(workload: Workload) -> ToolFn:
    """The workload's tools without a kernel: the same sleep behind a FIFO limiter."""
    limits = {t.name: (anyio.CapacityLimiter(t.max_concurrency), t.latency_ms / 1000.0)
              for t in workload.tools}

    async def tool(name: str) -> None:
        limiter, latency_s = limits[name]
        async with limiter:
            await anyio.sleep(latency_s)

    return tool


async def _baseline_agents(specs: list[AgentSpec], call: CallFn, result: RunResult,
                           t0: float, on_done: Callable[[], None], retries: int,
                           tool: ToolFn) -> None:
    async with anyio.create_task_group() as tg:
        async def run(spec: AgentSpec) -> None:
            await react_agent(spec, call, result.agents[spec.idx], result, t0, retries, tool)
            on_done()

        def start(spec: AgentSpec) -> None:
            tg.start_soon(run, spec)

        await _arrivals(specs, t0, start)
