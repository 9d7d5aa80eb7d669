"""The tool manager's cost and benefit, through public APIs only.

    python benchmarks/tools.py [--calls N] [--mcp-calls N] [--json]

(a) overhead: an in-process async tool that returns at once, called ``--calls`` times
    through ``ctx.tools.call`` by one agent: calls/s, and the latency the kernel adds
    (per-call time minus the median direct call of the same function).
    Targets (issue 11): >= 20,000 calls/s, p50 added <= 60 us.
(b) parallel: one reply with 8 tool calls of 100 ms each, through ``ctx.tools.run``,
    against running them one after another. Target: wall <= 1.2 x one call.
(c) MCP: ``add`` on the stdio test server (tests/mcp_servers/demo_server.py), through
    the kernel against the bare ``mcp`` client on its own connection to the same
    server. Target: median ratio <= 1.1.
(d) tool-heavy workload: 40 agents (4 urgent at priority 0, 36 at priority 5), each
    doing 3 steps of one LLM call (EchoLLM) then one call of a tool that admits 2 calls
    at once and takes 20 ms: urgent agents' completion time p99 under ``priority``
    against ``fifo``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

import aios
from aios.testing import EchoLLM

DEMO = str(Path(__file__).resolve().parents[1] / "tests" / "mcp_servers" / "demo_server.py")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@aios.tool
async def noop(x: int) -> int:
    """Return x."""
    return x


def kernel(**kw: Any) -> aios.Kernel:
    cfg = kw.pop("config", None) or aios.KernelConfig()
    return aios.Kernel(cfg, backends={"default": EchoLLM()}, **kw)


async def overhead(n: int) -> dict[str, Any]:
    direct = []
    for i in range(min(n, 20_000)):
        t = time.perf_counter()
        await noop.fn(x=i)
        direct.append(time.perf_counter() - t)
    d50 = statistics.median(direct)
    lat: list[float] = []

    async def agent(ctx: aios.Context) -> None:
        call = ctx.tools.call
        for i in range(n):
            t = time.perf_counter()
            await call("noop", {"x": i})
            lat.append(time.perf_counter() - t)

    async with kernel(tools=[noop]) as k:
        c0, w0 = time.process_time(), time.perf_counter()
        await k.spawn(agent).wait()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    added = [x - d50 for x in lat]
    return {"calls": n, "calls_per_s": n / wall, "calls_per_cpu_s": n / cpu,
            "added_p50_us": pct(added, 0.5) * 1e6, "added_p99_us": pct(added, 0.99) * 1e6}


@aios.tool(max_concurrency=8)
async def io100() -> str:
    """Wait 100 ms."""
    await anyio.sleep(0.1)
    return "done"


async def parallel() -> dict[str, Any]:
    reqs = [{"id": f"c{i}", "function": {"name": "io100", "arguments": "{}"}} for i in range(8)]

    async def agent(ctx: aios.Context) -> tuple[float, float, float]:
        t = time.perf_counter()
        await ctx.tools.call("io100")
        one = time.perf_counter() - t
        t = time.perf_counter()
        await ctx.tools.run(reqs)
        par = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(8):
            await ctx.tools.call("io100")
        return one, par, time.perf_counter() - t

    async with kernel(tools=[io100]) as k:
        one, par, seq = await k.spawn(agent).wait()
    return {"one_s": one, "run_8_s": par, "sequential_8_s": seq, "ratio_to_one": par / one}


async def mcp_overhead(n: int) -> dict[str, Any]:
    """Blocks of 20 calls alternate between the bare client and the kernel, inside one
    agent, so that load changes on a shared machine hit both alike."""
    from mcp import Client, StdioServerParameters

    bare: list[float] = []
    through: list[float] = []
    params = StdioServerParameters(command=sys.executable, args=[DEMO, "stdio"])

    async def agent(ctx: aios.Context, client: Client) -> None:
        for block in range(n // 20 + 1):
            for i in range(20):
                t = time.perf_counter()
                await client.call_tool("add", {"a": i, "b": 1})
                if block:  # the first block of each is warm-up
                    bare.append(time.perf_counter() - t)
            for i in range(20):
                t = time.perf_counter()
                await ctx.tools.call("demo__add", {"a": i, "b": 1})
                if block:
                    through.append(time.perf_counter() - t)

    cfg = aios.KernelConfig(mcp=[aios.config.MCPServerConfig(
        name="demo", command=sys.executable, args=[DEMO, "stdio"])])
    async with Client(params, cache=None) as client, kernel(config=cfg) as k:
        await k.spawn(agent, client).wait()
    b50, k50 = statistics.median(bare), statistics.median(through)
    return {"calls": len(through), "bare_p50_ms": b50 * 1e3, "kernel_p50_ms": k50 * 1e3,
            "ratio": k50 / b50}


async def workload(policy: str) -> dict[str, Any]:
    @aios.tool(max_concurrency=2)
    async def fetch(step: int) -> str:
        """A slow shared service."""
        await anyio.sleep(0.02)
        return f"page {step}"

    done: dict[int, float] = {}

    async def agent(ctx: aios.Context, t0: float) -> None:
        for step in range(3):
            await ctx.llm.chat([{"role": "user", "content": "next"}], max_tokens=4)
            await ctx.tools.call("fetch", {"step": step})
        done[ctx.pid] = time.perf_counter() - t0

    cfg = aios.KernelConfig(scheduler=aios.SchedulerConfig(policy=policy))
    async with kernel(config=cfg, tools=[fetch]) as k:
        t0 = time.perf_counter()
        procs = [k.spawn(agent, t0, priority=0 if i % 10 == 0 else 5) for i in range(40)]
        for p in procs:
            await p.wait()
    urgent = [done[p.pid] for p in procs if p.priority == 0]
    rest = [done[p.pid] for p in procs if p.priority != 0]
    return {"policy": policy, "urgent_p99_s": pct(urgent, 0.99),
            "background_p50_s": statistics.median(rest), "makespan_s": max(done.values())}


async def main(args: argparse.Namespace) -> None:
    out: dict[str, Any] = {"overhead": await overhead(args.calls), "parallel": await parallel(),
                           "workload": [await workload("fifo"), await workload("priority")]}
    if args.mcp_calls:
        out["mcp"] = await mcp_overhead(args.mcp_calls)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    o, p = out["overhead"], out["parallel"]
    print("(a) | calls | calls/s (wall) | calls/s (CPU) | added p50 us | added p99 us |")
    print(f"    | {o['calls']} | {o['calls_per_s']:,.0f} | {o['calls_per_cpu_s']:,.0f} | "
          f"{o['added_p50_us']:.1f} | {o['added_p99_us']:.1f} |")
    print(f"(b) one call {p['one_s'] * 1e3:.1f} ms; 8 through run() {p['run_8_s'] * 1e3:.1f} ms "
          f"({p['ratio_to_one']:.2f} x one); 8 sequential {p['sequential_8_s'] * 1e3:.1f} ms")
    if "mcp" in out:
        m = out["mcp"]
        print(f"(c) MCP add p50: bare client {m['bare_p50_ms']:.2f} ms, through the kernel "
              f"{m['kernel_p50_ms']:.2f} ms ({m['ratio']:.2f} x), {m['calls']} calls")
    print("(d) | policy | urgent p99 s | background p50 s | makespan s |")
    for w in out["workload"]:
        print(f"    | {w['policy']} | {w['urgent_p99_s']:.3f} | {w['background_p50_s']:.3f} | "
              f"{w['makespan_s']:.3f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--mcp-calls", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    anyio.run(main, ap.parse_args())
