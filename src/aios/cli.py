"""The ``aios`` command: run agents, list plugins, serve the simulated engine, benchmark.

The CLI is an application of the library: it configures logging and rendering here and
nowhere else, and reaches the kernel only through the public API.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib
import importlib.util
import inspect
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from aios._core.kernel import Kernel
from aios.config import KernelConfig
from aios.errors import AIOSError, ConfigError
from aios.plugins import PluginRegistry
from aios.process import Process, ProcessInfo

__all__ = ["load_agent", "main"]


def load_agent(ref: str) -> Callable[..., Awaitable[Any]]:
    """Resolve ``path/file.py:function`` or ``package.module:function`` to an async function.

    Every way this can fail is a :class:`ConfigError` naming the reference: a missing
    file, a syntax error (with its line), an import that fails or exits, a missing
    attribute, and an attribute that is not an async function.
    """
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
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            del sys.modules[spec.name]
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise _import_error(f"agent file {path}", exc) from None
    else:
        try:
            module = importlib.import_module(target)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise _import_error(f"agent module {target!r}", exc) from None
    try:
        fn: Callable[..., Awaitable[Any]] = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{target} has no attribute {attr!r}") from None
    if not _is_async_callable(fn):
        what = "a function" if callable(fn) else f"a {type(fn).__name__}"
        raise ConfigError(f"{ref}: an agent must be an async function "
                          f"(async def {attr}(ctx, ...)), {attr} is {what}")
    return fn


def _import_error(what: str, exc: BaseException) -> ConfigError:
    if isinstance(exc, SyntaxError):
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        return ConfigError(f"{what} has a syntax error at {where}: {exc.msg}")
    if isinstance(exc, SystemExit):
        return ConfigError(f"importing {what} called sys.exit({exc.code!r})")
    return ConfigError(f"importing {what} failed: {type(exc).__name__}: {exc}")


def _is_async_callable(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or (
        callable(fn) and not inspect.isroutine(fn) and not isinstance(fn, type)
        and inspect.iscoroutinefunction(type(fn).__call__)
    )


def _check_agent_args(agent: Callable[..., Any], args: Sequence[str]) -> None:
    """The agent must accept ``(ctx, *args)``: checked before the kernel starts."""
    try:
        sig = inspect.signature(agent)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check
    try:
        sig.bind(None, *args)
    except TypeError as exc:
        name = getattr(agent, "__name__", repr(agent))
        raise ConfigError(f"agent {name}{sig} cannot take (ctx, {', '.join(map(repr, args))})"
                          f": {exc}") from None


def _load_config(path: str | None, policy: str | None, log: str | None) -> KernelConfig:
    path = path or os.environ.get("AIOS_CONFIG")
    # AIOS_* overrides apply with or without a file.
    cfg = KernelConfig.from_toml(path) if path else KernelConfig.from_env()
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


def _run_command(args: argparse.Namespace) -> int:
    # Everything that can be checked is checked before the kernel starts.
    cfg = _load_config(args.config, args.policy, args.log)
    agent = load_agent(args.agent)
    _check_agent_args(agent, args.args)
    if args.policy:
        PluginRegistry(autoload=cfg.autoload_plugins).get("aios.schedulers", args.policy)
    result: int = anyio.run(_run, args, agent, cfg)
    return result


async def _run(args: argparse.Namespace, agent: Callable[..., Awaitable[Any]],
               cfg: KernelConfig) -> int:
    from rich.console import Console
    from rich.live import Live

    priorities: list[int] = args.priorities or [0]
    agent_name = getattr(agent, "__name__", "agent")
    console = Console(stderr=True)
    out = Console()
    t0 = time.perf_counter()
    # An agent file's module-level TOOLS (a list of @aios.tool functions) are its tools.
    tools = list(getattr(inspect.getmodule(agent), "TOOLS", None) or ())
    approver = _approver(getattr(args, "approve", "deny"), console)
    async with Kernel(cfg, tools=tools, approver=approver) as kernel:
        procs: list[Process[Any]] = [
            kernel.spawn(agent, *args.args, priority=priorities[i % len(priorities)],
                         name=f"{agent_name}-{i + 1}")
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
        _print_schedule(out, procs)
    return 1 if failed else 0


def _print_schedule(out: Any, procs: Sequence[Process[Any]]) -> None:
    """What the kernel did: the order agents finished in against their priorities, and
    every context switch with its checkpoint save and restore figures."""
    ended = sorted((p for p in procs if p.ended_at is not None), key=lambda p: p.ended_at or 0)
    out.print("finished in this order -> " + " -> ".join(
        f"{p.name} (priority {p.priority})" for p in ended))
    for p in procs:
        for sw in p.switch_log:
            out.print(f"  context switch: {p.name} preempted after {sw.tokens} tokens; "
                      f"checkpoint {sw.save_bytes:,} bytes saved in {sw.save_s * 1e3:.1f} ms, "
                      f"restored from {sw.restored} ({sw.restore_bytes:,} bytes) in "
                      f"{sw.restore_s * 1e3:.1f} ms")


def _approver(mode: str, console: Any) -> Any:
    from aios.access import approval

    if mode == "ask":
        return approval.terminal_approver(console)
    return approval.allow_all if mode == "allow" else approval.deny_all


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

    _check_listen(args.host, args.port)
    return run_sim_serve(args)


def _storage(args: argparse.Namespace) -> int:
    from aios.storage.transfer import run_storage_command

    return run_storage_command(args)


def _check_listen(host: str, port: int) -> None:
    """The address can be bound (port in range, not in use, host valid): checked before
    the engine and the server start."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"{port} is not a port number (0-65535; 0 picks a free one)",
                          key="--port")
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "the port is in use (another server is listening there)"
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}", key="--port") from None


# -- argument types: a bad value is an argparse error (one line, exit 2) -----------------


def positive_int(text: str) -> int:
    """An integer > 0 (``-n``, ``--agents``, ``--slots``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


MAX_AGENTS = 10_000
"""The most agents ``aios run -n`` spawns: each is a task with a live view row; more is
a benchmark's job (``aios bench``), not a command line's."""


def agent_count(text: str) -> int:
    """``-n``: an integer from 1 to :data:`MAX_AGENTS`."""
    value = positive_int(text)
    if value > MAX_AGENTS:
        raise argparse.ArgumentTypeError(f"at most {MAX_AGENTS:,} agents, got {value:,}")
    return value


_AGE = re.compile(r"-\d+(?:\.\d+)?[smhd]")


def _since_args(argv: list[str]) -> list[str]:
    """``aios audit --since -5h``: argparse takes a value starting with '-' for an option
    ("expected one argument"), so a value of ``--since`` that starts with a minus and a
    digit is glued to it; an age written with a minus ("5 hours ago") is read as the age
    it means (``--since -5h`` = ``--since=-5h`` = ``--since 5h``)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--since" and i + 1 < len(argv) and re.match(r"-\d", argv[i + 1]):
            arg, i = f"--since={argv[i + 1]}", i + 1
        if arg.startswith("--since=") and _AGE.fullmatch(arg[8:].strip()):
            arg = f"--since={arg[8:].strip()[1:]}"
        out.append(arg)
        i += 1
    return out


def int_list(text: str) -> list[int]:
    """Comma-separated integers (``--priorities 2,0,1``)."""
    values = []
    for item in text.split(","):
        try:
            values.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} in {text!r} is not an integer "
                "(comma-separated integers, e.g. 2,0,1)") from None
    return values


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to read more, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aios", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run agents on a kernel")
    run.add_argument("agent", help="path/file.py:function or module:function")
    run.add_argument("args", nargs="*", default=[], help="arguments passed to every agent")
    run.add_argument("-n", type=agent_count, default=1,
                     help=f"how many agents to spawn (1 to {MAX_AGENTS:,})")
    run.add_argument("--config", help="TOML config file (default: $AIOS_CONFIG or embedded)")
    run.add_argument("--policy", help="scheduling policy (overrides the config)")
    run.add_argument("--priorities", type=int_list,
                     help="comma-separated priorities, cycled over agents")
    run.add_argument("--live", action="store_true", help="live view even when not a terminal")
    run.add_argument("--log", choices=["console", "json", "off"],
                     help="syscall lifecycle log on stderr (queued, dispatched, preempted, "
                          "done), for people or machines")
    run.add_argument("--approve", choices=["ask", "deny", "allow"], default="deny",
                     help="irreversible tool calls: ask in the terminal, or deny/allow "
                          "all (scripts); default deny")
    run.set_defaults(func=_run_command)

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

    from aios.access.cli import add_parser as add_audit_parser

    add_audit_parser(sub)
    for command in sub.choices.values():  # --debug also after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aios`` command. Any error is one line on stderr and exit code 2 (with
    ``--debug``, after its traceback); an interrupt is 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "audit":
        argv = _since_args(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "aios " + " ".join(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `aios plugins | head`: the reader left. Not an error to report; point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if args.debug:
            traceback.print_exception(exc)
        print(f"aios: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return code


def _one_line(exc: BaseException) -> str:
    """What went wrong, in one line: the aios error itself (out of any exception group),
    an OS error with its file, or an unexpected error by type."""
    while isinstance(exc, BaseExceptionGroup):
        ours = [e for e in exc.exceptions if isinstance(e, (AIOSError, BaseExceptionGroup))]
        exc = (ours or list(exc.exceptions))[0]
    if isinstance(exc, AIOSError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc} (unexpected: run with --debug for the traceback)"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
