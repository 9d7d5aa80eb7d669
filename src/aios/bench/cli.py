"""``aios bench``: run a workload under each policy and a no-kernel baseline, in one run.

Every argument is checked before any work starts: the workload file, the policy names,
and (with ``--base-url``) that the server answers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from aios.bench.report import markdown, summarize, write_json, write_plots
from aios.bench.runner import NOPREEMPT, RunResult, Target, run_system
from aios.bench.workload import Workload, load_workload
from aios.cli import positive_int
from aios.errors import BackendUnavailable, ConfigError
from aios.plugins import PluginRegistry

__all__ = ["add_bench_arguments", "run_bench"]

DEFAULT_POLICIES = "fifo,priority,las,fair"


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", help="a shipped workload name (react-batch...) or a path to a .toml")
    p.add_argument("--policy", default=DEFAULT_POLICIES,
                   help="comma-separated policies; '<policy>-nopreempt' turns preemption off "
                        f"(default {DEFAULT_POLICIES})")
    p.add_argument("--agents", type=positive_int, help="override the workload's agent count")
    p.add_argument("--backend", default="sim", choices=["sim"],
                   help="the in-process simulated engine (default)")
    p.add_argument("--base-url", help="an OpenAI-compatible server instead of the sim")
    p.add_argument("--model", default="", help="model name on --base-url")
    p.add_argument("--slots", type=positive_int, default=8,
                   help="the server's concurrent generations (--base-url; sim: from workload)")
    p.add_argument("--window", type=positive_int,
                   help="the kernel's admission window (default: the workload's, else "
                        "slots plus the kernel's headroom)")
    p.add_argument("--headroom", type=int,
                   help="window = slots + HEADROOM (requests the engine may queue; 0: none)")
    p.add_argument("--continuation", action="store_true",
                   help="--base-url continues a preempted assistant message "
                        "(continue_final_message: vLLM, sim-serve)")
    p.add_argument("--seed", type=int, help="override the workload's seed")
    p.add_argument("--out", help="output directory (default benchmarks/out/WORKLOAD-TIME)")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-kernel baseline")


def _check_policies(names: list[str]) -> None:
    known = PluginRegistry().names("aios.schedulers")
    for n in names:
        base = n[: -len(NOPREEMPT)] if n.endswith(NOPREEMPT) else n
        if base not in known:
            raise ConfigError(f"unknown policy {n!r} (available: {', '.join(known)})",
                              key="--policy")


async def _check_server(base_url: str) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=5)
    try:
        await client.models.list()
    except openai.OpenAIError as exc:
        raise BackendUnavailable(f"{base_url} does not answer: {exc}") from None
    finally:
        await client.close()


async def _bench(workload: Workload, systems: list[str], target: Target) -> list[RunResult]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TimeElapsedColumn,
    )

    if target.base_url:
        await _check_server(target.base_url)
    console = Console(stderr=True)
    results: list[RunResult] = []
    with Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        for system in systems:
            task = progress.add_task(f"{workload.name}: {system}", total=workload.agents)

            def advance(task: TaskID = task) -> None:
                progress.advance(task)

            results.append(await run_system(system, workload, target, on_done=advance))
    return results


def _report(args: argparse.Namespace, workload: Workload, results: list[RunResult],
            out: Path) -> None:
    rows = [summarize(r) for r in results]
    table = markdown(rows)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "workload": workload.model_dump(), "command": args.command_line,
        "systems": rows, "engine": {r.system: r.engine for r in results},
    }
    write_json(out / "results.json", payload)
    (out / "results.md").write_text(f"`{args.command_line}`\n\n{table}\n", encoding="utf-8")
    plots = write_plots(out, results)
    print(f"\n{workload.name}: {workload.agents} agents, seed {workload.seed}\n")
    print(table)
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}"
          + "".join(f", {p}" for p in plots))


def _check_writable(out: Path) -> None:
    """``out`` is (or can be made) a directory this process can write files into."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory", key="--out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror or exc}", key="--out") from None


def run_bench(args: argparse.Namespace) -> int:
    workload = load_workload(args.workload).with_agents(args.agents)
    if args.seed is not None:
        workload = workload.model_copy(update={"seed": args.seed})
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    if not policies:
        raise ConfigError("--policy names no policy", key="--policy")
    _check_policies(policies)
    systems = ([] if args.no_baseline else ["baseline"]) + policies
    if args.headroom is not None and args.headroom < 0:
        raise ConfigError(f"--headroom must be >= 0, got {args.headroom}", key="--headroom")
    knobs = {"window": args.window, "headroom": args.headroom}
    target = (Target(backend="openai", base_url=args.base_url, model=args.model,
                     slots=args.slots, continuation=args.continuation, **knobs)
              if args.base_url else Target(backend="sim", **knobs))
    out = Path(args.out) if args.out else Path("benchmarks/out") / (
        f"{workload.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_writable(out)  # before the runs, not after them
    if not hasattr(args, "command_line"):
        args.command_line = "aios bench " + args.workload
    results = anyio.run(_bench, workload, systems, target)
    _report(args, workload, results, out)
    return 0
