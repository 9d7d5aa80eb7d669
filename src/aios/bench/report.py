"""Metrics of a run, and their reports: a Markdown table, a JSON file, PNG plots.

Only arithmetic on what the runner recorded; nothing here runs or times anything.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from aios.bench.runner import RunResult

__all__ = ["jain", "markdown", "summarize", "write_json", "write_plots"]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def jain(xs: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything."""
    if not xs or not any(xs):
        return float("nan")
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def _lat(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs) if xs else float("nan"),
            "p50": _pct(xs, 0.5), "p99": _pct(xs, 0.99)}


def summarize(r: RunResult) -> dict[str, Any]:
    ok = [a for a in r.agents if a.error is None and a.done is not None]
    act = [a.done - a.arrival for a in ok if a.done is not None]
    makespan = r.wall_s
    by_cls: dict[str, list[float]] = defaultdict(list)
    for a in ok:
        assert a.done is not None
        by_cls[a.cls].append(a.done - a.arrival)
    # Fairness across groups: service (completion tokens) each group received while all
    # groups were still active, i.e. up to the time the first group had finished.
    # Per-class LLM call latency: what a person waiting on one reply sees.
    call_lat: dict[str, list[float]] = defaultdict(list)
    for start, end, _g, _n, cls in r.calls:
        call_lat[cls].append(end - start)
    # Per-class latency of a workload tool's calls, waiting for its window included.
    tool_lat: dict[str, list[float]] = defaultdict(list)
    for start, end, cls in r.tool_calls:
        tool_lat[cls].append(end - start)
    groups = sorted({a.group for a in r.agents})
    fairness = None
    service: dict[str, int] = {}
    if len(groups) > 1:
        last = {g: max((a.done or 0.0) for a in r.agents if a.group == g) for g in groups}
        horizon = min(last.values())
        service = {g: 0 for g in groups}
        for _start, end, g, n, _cls in r.calls:
            if end <= horizon:
                service[g] += n
        fairness = jain([float(v) for v in service.values()])
    tokens = sum(a.tokens for a in r.agents)
    eng = r.engine
    out: dict[str, Any] = {
        "system": r.system,
        "agents": len(r.agents),
        "completed": len(ok),
        "errors": len(r.agents) - len(ok),
        "rate_limited": sum(a.rate_limited for a in r.agents),
        "makespan_s": makespan,
        "act": _lat(act),
        "per_class": {c: _lat(v) for c, v in sorted(by_cls.items())},
        "per_class_call": {c: _lat(v) for c, v in sorted(call_lat.items())},
        "per_class_tool": {c: _lat(v) for c, v in sorted(tool_lat.items())},
        "tool_calls": len(r.tool_calls),
        "agents_per_min": len(ok) / makespan * 60 if makespan else float("nan"),
        "tokens_per_s": tokens / makespan if makespan else float("nan"),
        "jain": fairness,
        "group_service_tokens": service,
        "efficiency": eng["ideal_s"] / makespan if eng and makespan else None,
        "engine_mean_batch": eng.get("mean_batch") if eng else None,
        "engine_steps_per_s": eng["steps"] / makespan if eng and makespan else None,
        "error_kinds": dict(Counter(a.error.split(":")[0] for a in r.agents if a.error)),
        "error_sample": next((a.error for a in r.agents if a.error), None),
        "context_switches": r.context_switches,
        "reprefill_tokens": r.reprefill_tokens,
        "bumps": r.bumps,
        "cpu_s": r.cpu_s,
        # This process's CPU per completion token (the client's cost; with an in-process
        # sim engine it includes the engine's).
        "cpu_us_per_token": r.cpu_s / tokens * 1e6 if tokens else None,
        "peak_rss_mb": r.peak_rss_mb,
    }
    return out


def _f(v: Any, fmt: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "-"
    return format(v, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| system | makespan s | ACT mean s | ACT p50 s | ACT p99 s | agents/min | tokens/s "
        "| efficiency | Jain | errors | 429s | ctx sw | re-prefill tok | bumps | CPU s "
        "| CPU us/tok | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r["act"]
        lines.append(
            f"| {r['system']} | {_f(r['makespan_s'])} | {_f(a['mean'])} | {_f(a['p50'])} "
            f"| {_f(a['p99'])} | {_f(r['agents_per_min'], '.1f')} | {_f(r['tokens_per_s'], '.0f')} "
            f"| {_f(r['efficiency'], '.3f')} | {_f(r['jain'], '.3f')} | {r['errors']} "
            f"| {r['rate_limited']} | {r['context_switches']} | {r.get('reprefill_tokens', 0)} "
            f"| {r.get('bumps', 0)} | {_f(r['cpu_s'], '.1f')} "
            f"| {_f(r.get('cpu_us_per_token'), '.1f')} | {_f(r['peak_rss_mb'], '.0f')} |")
    classes = sorted({c for r in rows for c in r["per_class"]})
    if len(classes) > 1:
        tables = [("per_class", "agent completion time (s)"),
                  ("per_class_call", "LLM call latency (s)")]
        if any(r.get("per_class_tool") for r in rows):
            tables.append(("per_class_tool", "tool call latency, queueing included (s)"))
        for key, title in tables:
            lines += ["", f"Per-class {title}, p50 / p99:", "",
                      "| system | " + " | ".join(classes) + " |",
                      "|---|" + "---:|" * len(classes)]
            for r in rows:
                cells = []
                for c in classes:
                    pc = r[key].get(c)
                    cells.append(f"{_f(pc['p50'], '.3f')} / {_f(pc['p99'], '.3f')}"
                                 if pc else "-")
                lines.append(f"| {r['system']} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.get("error_kinds")]
    if failed:
        lines += ["", "Errors (by type; the first one in full):", ""]
        for r in failed:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["error_kinds"].items()))
            lines.append(f"- {r['system']}: {kinds}; e.g. {r['error_sample']}")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def write_plots(out: Path, results: list[RunResult]) -> list[Path]:
    """Latency CDF per system and throughput over time; needs matplotlib (extra ``plots``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []

    def plot(name: str, xlabel: str, ylabel: str,
             series: dict[str, tuple[list[float], list[float]]], logx: bool = False) -> Path:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    cdf: dict[str, tuple[list[float], list[float]]] = {}
    rate: dict[str, tuple[list[float], list[float]]] = {}
    for r in results:
        xs = sorted(a.done - a.arrival for a in r.agents if a.done is not None and not a.error)
        if xs:
            cdf[r.system] = (xs, [(i + 1) / len(xs) for i in range(len(xs))])
        if r.calls:
            span = max(c[1] for c in r.calls)
            bins = max(10, min(100, int(span)))
            width = span / bins
            tok = [0.0] * bins
            for _, end, _, n, _ in r.calls:
                tok[min(bins - 1, int(end / width))] += n / width
            rate[r.system] = ([width * (i + 0.5) for i in range(bins)], tok)
    return [
        plot("latency_cdf.png", "agent completion time (s)", "fraction of agents", cdf, True),
        plot("throughput.png", "time (s)", "completion tokens / s", rate),
    ]
