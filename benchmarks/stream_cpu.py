"""Client CPU per streamed token: through the kernel vs direct streaming clients.

    python benchmarks/stream_cpu.py [--agents 16] [--calls 3] [--tokens 128] [--before REV]

Against one ``aios sim-serve`` on 127.0.0.1 (a subprocess: its CPU is not counted), the
same work, 16 agents x 3 calls x 128 tokens by default, is done by:

* ``kernel``: agents calling ``ctx.llm.chat`` through an ``aios.Kernel`` on the ``openai``
  backend (window = slots, so nothing waits in the engine);
* ``direct-parse``: the same concurrent calls made directly with the backend's own
  streaming path (``OpenAIBackend.generate``: raw SSE lines, only the needed fields of
  each JSON event parsed), no kernel;
* ``sdk-parsed``: the openai SDK's parsed stream (``chat.completions.create(stream=True)``,
  one pydantic object per chunk), no kernel;
* ``kernel@REV`` (with ``--before REV``): the kernel on the ``openai`` backend as it was
  at git revision REV (lent to the kernel as an instance), for a before/after in one run.

Each reports this process's CPU time (``time.process_time``) divided by the completion
tokens received, in microseconds, and the wall time. Targets (issue 10): <= 50 us per
token through the kernel, and <= 1.2x the direct parse.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import openai

import aios
from aios.llm.base import GenerationRequest, LLMBackend
from aios.llm.openai_backend import OpenAIBackend
from aios.testing import sim_server

PROMPT = [{"role": "user", "content": "Explain the scheduler in a few words."}]


def llm_config(base_url: str, slots: int) -> aios.LLMConfig:
    return aios.LLMConfig(name="default", backend="openai", base_url=base_url, model="sim",
                          max_concurrency=slots, window=slots)


class Meter:
    """CPU and wall time of the work only: each run starts it once its client (and
    kernel) is up, so setup (an SSL context, the state database) is not counted."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def start(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def stop(self, tokens: int) -> dict[str, float]:
        cpu, wall = time.process_time() - self.cpu, time.perf_counter() - self.wall
        return {"tokens": tokens, "cpu_s": cpu, "wall_s": wall,
                "us_per_token": cpu / tokens * 1e6}


Result = dict[str, float]


async def kernel_run(cfg: aios.LLMConfig, agents: int, calls: int, tokens: int,
                     backend: LLMBackend | None = None) -> Result:
    config = aios.KernelConfig(scheduler=aios.SchedulerConfig(policy="fifo"), llm=[cfg])
    got = 0
    meter = Meter()

    async def agent(ctx: aios.Context) -> None:
        nonlocal got
        for _ in range(calls):
            r = await ctx.llm.chat(PROMPT, max_tokens=tokens, temperature=0.0)
            got += r.usage.completion_tokens

    lent = {"default": backend} if backend is not None else {}
    async with aios.Kernel(config, backends=lent) as k:
        await k.spawn(agent).wait()  # warm: the connection pool, the first request
        got = 0
        meter.start()
        procs = [k.spawn(agent) for _ in range(agents)]
        for p in procs:
            await p.wait()
        result = meter.stop(got)
    if backend is not None:
        await backend.close()
    return result


async def direct_run(cfg: aios.LLMConfig, agents: int, calls: int, tokens: int) -> Result:
    backend = OpenAIBackend(cfg)
    await backend.start()
    got = 0
    meter = Meter()

    async def agent(i: int, n: int) -> None:
        nonlocal got
        for j in range(n):
            req = GenerationRequest(call=aios.LLMChat(messages=PROMPT, max_tokens=tokens,
                                                      temperature=0.0),
                                    request_id=f"d{i}-{j}")
            async for chunk in backend.generate(req):
                if chunk.usage is not None:
                    got += chunk.usage.completion_tokens

    try:
        await agent(-1, calls)  # warm
        got = 0
        meter.start()
        async with anyio.create_task_group() as tg:
            for i in range(agents):
                tg.start_soon(agent, i, calls)
        return meter.stop(got)
    finally:
        await backend.close()


async def sdk_run(cfg: aios.LLMConfig, agents: int, calls: int, tokens: int) -> Result:
    client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key="none", max_retries=0)
    got = 0
    meter = Meter()

    async def agent() -> None:
        nonlocal got
        for _ in range(calls):
            stream = await client.chat.completions.create(
                model="sim", messages=PROMPT,  # type: ignore[call-overload]
                max_tokens=tokens, temperature=0.0, stream=True,
                stream_options={"include_usage": True})
            parts: list[str] = []
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                if chunk.usage is not None:
                    got += chunk.usage.completion_tokens

    try:
        await agent()  # warm
        got = 0
        meter.start()
        async with anyio.create_task_group() as tg:
            for _ in range(agents):
                tg.start_soon(agent)
        return meter.stop(got)
    finally:
        await client.close()


def backend_at(rev: str, cfg: aios.LLMConfig) -> LLMBackend:
    """The openai backend class as it was at git revision ``rev``, loaded as a module."""
    source = subprocess.run(["git", "show", f"{rev}:src/aios/llm/openai_backend.py"],
                            check=True, capture_output=True, text=True).stdout
    if "BackendCapabilities" not in source:  # before the rename of the flags' class
        source = re.sub(r"\bCapabilities\b", "BackendCapabilities", source)
    path = Path(tempfile.mkdtemp()) / "openai_backend_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("openai_backend_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    backend: LLMBackend = module.OpenAIBackend(cfg)
    return backend


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"agents": args.agents, "calls": args.calls, "tokens": args.tokens}
    with sim_server("--slots", str(args.agents), "--step-base-ms", "0.2",
                    "--step-per-seq-ms", "0.01", "--prefill-ms-per-token", "0") as sim:
        cfg = llm_config(sim.base_url, args.agents)
        shape = (cfg, args.agents, args.calls, args.tokens)
        runs: list[tuple[str, Callable[[], Awaitable[Result]]]] = [
            ("direct-parse", lambda: direct_run(*shape)),
            ("sdk-parsed", lambda: sdk_run(*shape)),
            ("kernel", lambda: kernel_run(*shape)),
        ]
        if args.before:
            runs.append((f"kernel@{args.before}",
                         lambda: kernel_run(*shape, backend=backend_at(args.before, cfg))))
        for name, run in runs:
            out[name] = await run()
    direct = out["direct-parse"]["us_per_token"]
    out["kernel_vs_direct"] = out["kernel"]["us_per_token"] / direct
    return out


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--before", help="also run the kernel on the openai backend of this git "
                                    "revision (a before/after in one run)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = anyio.run(main, args)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.agents} agents x {args.calls} calls x {args.tokens} tokens, "
          "this process's CPU per completion token:")
    for name, r in out.items():
        if isinstance(r, dict):
            print(f"  {name:>22}: {r['us_per_token']:7.1f} us/token  "
                  f"({r['tokens']} tokens, CPU {r['cpu_s']:.3f} s, wall {r['wall_s']:.2f} s)")
    print(f"  kernel / direct-parse: {out['kernel_vs_direct']:.2f}x "
          "(targets: <= 50 us/token, <= 1.2x)")


if __name__ == "__main__":
    cli()
