"""The storage manager through a real kernel (``ctx.storage``), on a state file.

    python benchmarks/storage.py [--scale 1.0] [--json]

1. write and read throughput of 4 KiB and 1 MiB files (distinct random content, one
   agent, sequential: each call is a full syscall through the door and the queue);
2. ``history`` of a file with 1,000 versions (median of 50 calls);
3. the database size after 1,000 versions of a 100 KiB text file that changes one line
   each time, against 1,000 full copies (what whole-file dedup alone would store here,
   since every version differs);
4. ``search`` latency (p50, p95) over 10,000 text files of ~1 KiB (words drawn with a
   fixed seed from a 5,000-word vocabulary with a Zipf-like law), 200 queries of 3 words.

``--scale`` shrinks the counts (not the sizes) for a quick run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

import aios
from aios.config import StorageConfig
from aios.testing import ScriptedLLM

KiB = 1024


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def in_kernel(state: Path, agent: Callable[[aios.Context], Awaitable[Any]]) -> Any:
    cfg = aios.KernelConfig(state_path=str(state), storage=StorageConfig(
        keep_versions=None, quota_bytes=None, quota_files=None))
    async with aios.Kernel(cfg, backends={"default": ScriptedLLM(["ok"])}) as kernel:
        return await kernel.spawn(agent, name="bench").wait()


def throughput(tmp: Path, size: int, n: int) -> dict[str, float]:
    rng = random.Random(size)
    blobs = [rng.randbytes(size) for _ in range(n)]

    async def agent(ctx: aios.Context) -> dict[str, float]:
        t0 = time.perf_counter()
        for i, b in enumerate(blobs):
            await ctx.storage.write(f"t{size}/{i}.bin", b)
        w = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            await ctx.storage.read(f"t{size}/{i}.bin")
        r = time.perf_counter() - t0
        return {"files": n, "write_per_s": n / w, "write_MiB_s": n * size / w / KiB / KiB,
                "read_per_s": n / r, "read_MiB_s": n * size / r / KiB / KiB}

    result: dict[str, float] = anyio.run(in_kernel, tmp / f"tp{size}.db", agent)
    return result


def history(tmp: Path, versions: int) -> dict[str, float]:
    async def agent(ctx: aios.Context) -> dict[str, float]:
        for i in range(versions):
            await ctx.storage.write("log.md", f"version {i}")
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            hist = await ctx.storage.history("log.md")
            times.append(time.perf_counter() - t0)
        assert len(hist) == versions
        return {"versions": versions, "p50_ms": statistics.median(times) * 1e3}

    result: dict[str, float] = anyio.run(in_kernel, tmp / "hist.db", agent)
    return result


def dedup(tmp: Path, versions: int) -> dict[str, float]:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(2000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(6, 14))) + "\n" for _ in range(2000)]
    while sum(map(len, lines)) > 100 * KiB:
        lines.pop()
    base_size = sum(map(len, lines))
    db = tmp / "dedup.db"

    async def agent(ctx: aios.Context) -> float:
        t0 = time.perf_counter()
        for v in range(versions):
            i = rng.randrange(len(lines))
            lines[i] = f"edit {v}: " + " ".join(rng.choices(words, k=rng.randint(6, 14))) + "\n"
            await ctx.storage.write("doc.txt", "".join(lines))
        return (time.perf_counter() - t0) / versions

    per_write = anyio.run(in_kernel, db, agent)
    size = db.stat().st_size
    full = versions * base_size
    return {"versions": versions, "file_KiB": base_size / KiB, "db_MiB": size / KiB / KiB,
            "full_copies_MiB": full / KiB / KiB, "ratio": full / size,
            "write_ms": per_write * 1e3}


def search(tmp: Path, files: int, queries: int) -> dict[str, float]:
    rng = random.Random(11)
    vocab = [f"term{i}" for i in range(5000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]

    async def agent(ctx: aios.Context) -> dict[str, float]:
        for i in range(files):
            text = " ".join(rng.choices(vocab, weights, k=150))
            await ctx.storage.write(f"docs/{i:05d}.txt", text)
        qs = [" ".join(rng.choices(vocab[50:2000], k=3)) for _ in range(queries)]
        times, empty = [], 0
        for q in qs:
            t0 = time.perf_counter()
            hits = await ctx.storage.search(q, k=5)
            times.append(time.perf_counter() - t0)
            empty += not hits
        return {"files": files, "queries": queries, "p50_ms": pct(times, 0.5) * 1e3,
                "p95_ms": pct(times, 0.95) * 1e3, "empty": empty}

    result: dict[str, float] = anyio.run(in_kernel, tmp / "search.db", agent)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def n(x: int) -> int:
        return max(1, int(x * args.scale))

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results["4KiB"] = throughput(tmp, 4 * KiB, n(2000))
        results["1MiB"] = throughput(tmp, KiB * KiB, n(100))
        results["history"] = history(tmp, n(1000))
        results["dedup"] = dedup(tmp, n(1000))
        results["search"] = search(tmp, n(10_000), n(200))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for size in ("4KiB", "1MiB"):
        r = results[size]
        print(f"{size:>5} x{r['files']}: write {r['write_per_s']:.0f}/s "
              f"({r['write_MiB_s']:.1f} MiB/s), read {r['read_per_s']:.0f}/s "
              f"({r['read_MiB_s']:.1f} MiB/s)")
    h = results["history"]
    print(f"history of {h['versions']} versions: p50 {h['p50_ms']:.2f} ms")
    dd = results["dedup"]
    print(f"{dd['versions']} versions of a {dd['file_KiB']:.0f} KiB text, one line changed "
          f"each: db {dd['db_MiB']:.2f} MiB vs {dd['full_copies_MiB']:.1f} MiB of full "
          f"copies ({dd['ratio']:.0f}x smaller), {dd['write_ms']:.2f} ms per write")
    s = results["search"]
    print(f"search over {s['files']} files: p50 {s['p50_ms']:.2f} ms, p95 "
          f"{s['p95_ms']:.2f} ms ({s['empty']} of {s['queries']} queries without hits)")
    print(f"(cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
