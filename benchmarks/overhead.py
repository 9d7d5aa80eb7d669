"""The kernel's own cost per syscall, with a backend that answers at once.

    python benchmarks/overhead.py [--calls N] [--agents 1000] [--json]

For 1 agent and for many concurrent agents it measures syscalls per second through the
kernel (wall and CPU), and the latency the kernel adds to each call: the per-call time
through ``ctx.llm.chat`` minus the median time of the same backend called directly.
The third row uses a backend that yields to the event loop once per call, so the
agents really contend for the admission window (8) and the heap path is exercised; its
latency then includes queueing behind the other agents, not only the kernel's cost.
Targets (issue 2): >= 30,000 syscalls/s on one core, p50 added latency <= 50 us.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import anyio

import aios
from aios.llm.base import GenerationRequest
from aios.testing import EchoLLM

MSG = [{"role": "user", "content": "hi"}]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def direct_latency(n: int) -> list[float]:
    backend = EchoLLM()
    req = GenerationRequest(call=aios.LLMChat(messages=MSG), request_id="d")
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async for _chunk in backend.generate(req):
            pass
        out.append(time.perf_counter() - t)
    return out


async def through_kernel(agents: int, calls: int, policy: str, contend: bool) -> dict[str, Any]:
    lat: list[float] = []
    config = aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy=policy),
        llm=[aios.LLMConfig(name="default", max_concurrency=8)],
    )

    async def agent(ctx: aios.Context, n: int) -> None:
        chat = ctx.llm.chat
        for _ in range(n):
            t = time.perf_counter()
            await chat(MSG)
            lat.append(time.perf_counter() - t)
            if agents > 1:
                await anyio.lowlevel.checkpoint()

    backend = EchoLLM(yield_first=contend)
    async with aios.Kernel(config, backends={"default": backend}) as kernel:
        per = max(1, calls // agents)
        c0, w0 = time.process_time(), time.perf_counter()
        procs = [kernel.spawn(agent, per) for _ in range(agents)]
        for p in procs:
            await p.wait()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    total = per * agents
    return {"agents": agents, "syscalls": total, "wall_s": wall, "cpu_s": cpu,
            "syscalls_per_s": total / wall, "syscalls_per_cpu_s": total / cpu, "lat": lat}


ACCESS_CAPS = aios.Capabilities(
    tools={**{f"tool_{i}_*": "allow" for i in range(18)}, "danger_*": "ask", "*": "deny"},
    llms=["default", "gpt-*"])
"""20 tool patterns and 2 LLM patterns: what a realistic group policy holds."""


async def access_run(calls: int, on: bool, state_path: str) -> dict[str, Any]:
    """One agent making ``calls`` chat syscalls, access control off or fully on
    (capabilities, a quota, the audit log in a state file); CPU includes the audit
    log's last batch written at exit."""
    lat: list[float] = []
    config = aios.KernelConfig(
        llm=[aios.LLMConfig(name="default", max_concurrency=8)], state_path=state_path,
        access={"audit": on, "enabled": on})

    async def agent(ctx: aios.Context, n: int) -> None:
        chat = ctx.llm.chat
        for _ in range(n):
            t = time.perf_counter()
            await chat(MSG)
            lat.append(time.perf_counter() - t)

    c0, w0 = time.process_time(), time.perf_counter()
    async with aios.Kernel(config, backends={"default": EchoLLM()}) as kernel:
        kw: dict[str, Any] = {"caps": ACCESS_CAPS, "quota": aios.Quota(
            tokens=10**12, llm_calls=10**9)} if on else {}
        await kernel.spawn(agent, calls, name="bench", **kw).wait()
        w1 = time.perf_counter()
    cpu = time.process_time() - c0
    wall = w1 - w0
    rows = 0
    if on:
        import sqlite3

        with sqlite3.connect(state_path) as conn:
            rows = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    return {"access": on, "syscalls": calls, "wall_s": wall, "cpu_s": cpu,
            "syscalls_per_s": calls / wall, "cpu_us_per_syscall": cpu / calls * 1e6,
            "audit_rows": rows, "lat": lat}


async def access_main(args: argparse.Namespace) -> None:
    """Access control off vs on, in one run (issue 14): syscalls/s and p50 added."""
    import tempfile

    direct = await direct_latency(args.calls)
    d50 = statistics.median(direct)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, on in enumerate((False, True, False, True)):  # interleaved: fair to both
            r = await access_run(args.calls, on, f"{tmp}/state{i}.db")
            r["added_p50_us"] = (statistics.median(r.pop("lat")) - d50) * 1e6
            rows.append(r)
    best = {on: max((r for r in rows if r["access"] is on),
                    key=lambda r: r["syscalls_per_s"]) for on in (False, True)}
    off, on_ = best[False], best[True]
    extra_cpu = (on_["cpu_us_per_syscall"] - off["cpu_us_per_syscall"]) * 1e-6 * 10_000
    summary = {"direct_p50_us": d50 * 1e6, "off": off, "on": on_,
               "p50_added_by_access_us": on_["added_p50_us"] - off["added_p50_us"],
               "cpu_share_at_10k_audited_per_s": extra_cpu}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print("| access | syscalls | syscalls/s | CPU us/syscall | added p50 us | audit rows |")
    print("|:---|---:|---:|---:|---:|---:|")
    for r in (off, on_):
        print(f"| {'on' if r['access'] else 'off'} | {r['syscalls']} | "
              f"{r['syscalls_per_s']:,.0f} | {r['cpu_us_per_syscall']:.1f} | "
              f"{r['added_p50_us']:.1f} | {r['audit_rows']} |")
    print(f"access on adds {summary['p50_added_by_access_us']:.1f} us p50; "
          f"10,000 audited syscalls/s cost {extra_cpu:.1%} of a core more")


async def main(args: argparse.Namespace) -> None:
    if args.access:
        await access_main(args)
        return
    direct = await direct_latency(args.calls)
    d50 = statistics.median(direct)
    rows = []
    for agents, contend in ((1, False), (args.agents, False), (args.agents, True)):
        r = await through_kernel(agents, args.calls, args.policy, contend)
        r["contended"] = contend
        added = [x - d50 for x in r.pop("lat")]
        r["added_p50_us"] = pct(added, 0.50) * 1e6
        r["added_p99_us"] = pct(added, 0.99) * 1e6
        rows.append(r)
    if args.json:
        print(json.dumps({"direct_p50_us": d50 * 1e6, "rows": rows}, indent=2))
        return
    print(f"direct backend call p50: {d50 * 1e6:.1f} us   (policy {args.policy})")
    print("| agents | backend yields | syscalls | syscalls/s (wall) | syscalls/s (CPU) |"
          " added p50 us | added p99 us |")
    print("|---:|:---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['agents']} | {'yes' if r['contended'] else 'no'} | {r['syscalls']} | "
              f"{r['syscalls_per_s']:,.0f} | "
              f"{r['syscalls_per_cpu_s']:,.0f} | {r['added_p50_us']:.1f} | "
              f"{r['added_p99_us']:.1f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50_000)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--policy", default="fifo")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--access", action="store_true",
                    help="access control off vs on (capabilities, quota, audit log)")
    anyio.run(main, ap.parse_args())
