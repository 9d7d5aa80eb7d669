"""``aios audit --state PATH [--agent N] [--denied] [--since T] [--kind K] [--json]``.

Reads the audit log of a state database read-only (a running kernel may hold it: WAL
lets it be read meanwhile) and prints a table, or one JSON object per line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from aios.access.audit import query_sql, records
from aios.errors import ConfigError

__all__ = ["add_parser", "parse_since"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: float | None = None) -> float:
    """Unix seconds from ``1700000000``, an ISO 8601 time (``2025-01-31T12:00``, local
    time unless it says), or an age (``90s``, ``15m``, ``2h``, ``7d``)."""
    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return (time.time() if now is None else now) - float(m[1]) * _UNITS[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: give Unix seconds, an ISO 8601 time or an age like 15m, "
            "2h, 7d") from None


def _audit(args: argparse.Namespace) -> int:
    path = Path(args.state)
    if not path.is_file():
        raise ConfigError(f"state database not found: {path}", key="--state")
    sql, params = query_sql(agent=args.agent, denied=args.denied, since=args.since,
                            kind=args.kind, limit=args.limit)
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise ConfigError(f"cannot read the audit log of {path}: {exc}",
                              key="--state") from None
        rows = []
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not an aios state database: {exc}",
                          key="--state") from None
    found = records(rows)
    if args.json:
        for r in found:
            print(json.dumps(r.model_dump(), ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit log of {path} ({len(found)} rows)")
    for col in ("time", "pid", "agent", "group", "kind", "resource", "decision", "outcome",
                "ms", "args / error"):
        table.add_column(col, overflow="fold")
    for r in found:
        style = "red" if r.decision in ("denied", "quota", "approval denied") else None
        table.add_row(_time(r.time), str(r.pid), r.agent, r.group, r.kind, r.resource or "",
                      r.decision, r.outcome, f"{r.duration_s * 1000:.1f}",
                      _short(r.error or r.args or r.args_sha256[:16]), style=style)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or a pipe: no folding at 80 columns
    console.print(table)
    return 0


def _time(t: float) -> str:
    return dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="milliseconds")


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def add_parser(sub: Any) -> None:
    """Add the ``audit`` subcommand to the ``aios`` parser's subparsers."""
    p = sub.add_parser("audit", help="print the audit log of a state database")
    p.add_argument("--state", required=True, help="the kernel's state database (state_path)")
    p.add_argument("--agent", help="only this agent's syscalls")
    p.add_argument("--denied", action="store_true",
                   help="only refusals (denied, quota, approval denied)")
    p.add_argument("--since", type=parse_since,
                   help="from this time: Unix seconds, ISO 8601, or an age (15m, 2h, 7d)")
    p.add_argument("--kind", help="only this syscall kind (llm.chat, tools.call...)")
    p.add_argument("--limit", type=int, help="only the last N rows")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_audit)
