"""The ``aios`` command: run agents, list plugins, serve the simulated engine, benchmark.

The CLI is an application of the library: it configures logging and rendering here and
nowhere else, and reaches the kernel only through the public API.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from aios.config import KernelConfig
from aios.errors import AIOSError, ConfigError
from aios.kernel import Kernel
from aios.plugins import PluginRegistry
from aios.process import Process, ProcessInfo

__all__ = ["load_agent", "main"]


def load_agent(ref: str) -> Callable[..., Awaitable[Any]]:
    """Resolve ``path/file.py:function`` or ``package.module:function``."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"agent reference {ref!r} must look like file.py:function or "
                          "module:function")
    if target.endswith(".py") or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"agent file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"_aios_agent_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot load agent file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import agent module {target!r}: {exc}") from None
    try:
        fn: Callable[..., Awaitable[Any]] = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{target} has no attribute {attr!r}") from None
    return fn


def _load_config(path: str | None, policy: str | None, log: str | None) -> KernelConfig:
    path = path or os.environ.get("AIOS_CONFIG")
    cfg = KernelConfig.from_toml(path) if path else KernelConfig()
    data = cfg.model_dump()
    if policy:
        data["scheduler"]["policy"] = policy
    if log:
        data["log_format"] = log
        data["log_level"] = "debug" if log != "off" else data["log_level"]
    return KernelConfig.from_dict(data)


def _ps_table(infos: Sequence[ProcessInfo], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    # Short headers: the table must fit an 80-column terminal.
    for col in ("pid", "name", "prio", "state", "calls", "tok in", "tok out",
                "wait s", "serve s", "ctx sw"):
        table.add_column(col, justify="right" if col not in ("name", "state") else "left",
                         no_wrap=col == "name")
    for p in infos:
        table.add_row(str(p.pid), p.name, str(p.priority), p.state.value, str(p.syscalls),
                      str(p.tokens_in), str(p.tokens_out), f"{p.wait_s:.2f}",
                      f"{p.service_s:.2f}", str(p.context_switches))
    return table


async def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    agent = load_agent(args.agent)
    cfg = _load_config(args.config, args.policy, args.log)
    priorities = [int(p) for p in args.priorities.split(",")] if args.priorities else [0]
    console = Console(stderr=True)
    out = Console()
    t0 = time.perf_counter()
    async with Kernel(cfg) as kernel:
        procs: list[Process[Any]] = [
            kernel.spawn(agent, *args.args, priority=priorities[i % len(priorities)],
                         name=f"{agent.__name__}-{i + 1}")
            for i in range(args.n)
        ]
        live = Live(console=console, refresh_per_second=8, transient=True)
        show = console.is_terminal or args.live
        with live if show else contextlib.nullcontext():
            while not all(p.done for p in procs):
                if show:
                    live.update(_ps_table(kernel.ps(), f"aios: {time.perf_counter() - t0:.1f}s"))
                await anyio.sleep(0.125)
        failed = 0
        for p in procs:
            try:
                result = await p.wait()
            except Exception as exc:
                failed += 1
                out.print(f"[red]{p.name} failed:[/red] {type(exc).__name__}: {exc}")
            else:
                out.print(f"[bold]{p.name}[/bold] (priority {p.priority}): {result}")
        out.print(_ps_table(kernel.ps(), f"summary: {args.n} agents in "
                            f"{time.perf_counter() - t0:.2f}s, policy "
                            f"{cfg.scheduler.policy}"))
    return 1 if failed else 0


def _plugins(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="aios plugins")
    for col in ("group", "name", "distribution", "version", "status"):
        table.add_column(col)
    bad = 0
    for info in PluginRegistry().report():
        bad += not info.ok
        table.add_row(info.group, info.name, info.distribution, info.version,
                      "ok" if info.ok else f"[red]error: {info.error}[/red]")
    Console().print(table)
    return 1 if bad else 0  # a broken plugin fails the command (for plugin authors' CI)


def _bench(args: argparse.Namespace) -> int:
    from aios.bench.cli import run_bench

    return run_bench(args)


def _sim_serve(args: argparse.Namespace) -> int:
    from aios.llm.server import run_sim_serve

    return run_sim_serve(args)


def _storage(args: argparse.Namespace) -> int:
    from aios.storage.transfer import run_storage_command

    return run_storage_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aios", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run agents on a kernel")
    run.add_argument("agent", help="path/file.py:function or module:function")
    run.add_argument("args", nargs="*", help="arguments passed to every agent")
    run.add_argument("-n", type=int, default=1, help="how many agents to spawn")
    run.add_argument("--config", help="TOML config file (default: $AIOS_CONFIG or embedded)")
    run.add_argument("--policy", help="scheduling policy (overrides the config)")
    run.add_argument("--priorities", help="comma-separated priorities, cycled over agents")
    run.add_argument("--live", action="store_true", help="live view even when not a terminal")
    run.add_argument("--log", choices=["console", "json", "off"],
                     help="syscall lifecycle log on stderr (queued, dispatched, preempted, "
                          "done), for people or machines")
    run.set_defaults(func=lambda a: anyio.run(_run, a))

    plugins = sub.add_parser("plugins", help="list the plugins found and their status "
                             "(exit status 1 if any failed to load)")
    plugins.set_defaults(func=_plugins)

    sim = sub.add_parser("sim-serve", help="the simulated engine as an OpenAI-compatible server")
    from aios.llm.server import add_sim_serve_arguments

    add_sim_serve_arguments(sim)
    sim.set_defaults(func=_sim_serve)

    from aios.bench.cli import add_bench_arguments

    bench = sub.add_parser("bench", help="run a benchmark workload under several policies "
                           "and a no-kernel baseline")
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)

    from aios.storage.transfer import add_storage_arguments

    storage = sub.add_parser("storage", help="export a storage space to a directory, or "
                             "import a directory into one")
    add_storage_arguments(storage)
    storage.set_defaults(func=_storage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "aios " + " ".join(argv)
    try:
        code: int = args.func(args)
    except AIOSError as exc:
        print(f"aios: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
