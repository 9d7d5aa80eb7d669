"""The benchmark harness: workloads, metrics and the CLI's checks (fast, on the sim)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import aios
from aios.bench.report import jain, markdown, summarize
from aios.bench.runner import Target, bench_tools, run_system
from aios.bench.workload import Dist, Workload, load_workload
from aios.cli import main

SHIPPED = Path(__file__).parents[1] / "src" / "aios" / "bench" / "workloads"
WORKLOADS = sorted(p.stem for p in SHIPPED.glob("*.toml"))


@pytest.mark.parametrize("name", WORKLOADS)
def test_shipped_workloads_load(name: str) -> None:
    w = load_workload(name)
    assert w.name == name


def test_required_workloads_ship() -> None:
    assert {"react-batch", "react-open", "mixed", "longgen", "fairness", "ratelimited",
            "scale", "tools"} <= set(WORKLOADS)


def test_malformed_workload_names_the_field(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('name = "w"\n[[classes]]\nname = "a"\nstepz = 3\n')
    with pytest.raises(aios.ConfigError, match=r"classes\.0\.stepz: unknown field"):
        load_workload(str(f))


def test_unknown_workload_lists_the_available_ones() -> None:
    with pytest.raises(aios.ConfigError, match=r"unknown workload 'nope'.*react-batch"):
        load_workload("nope")


def test_pareto_is_bounded_and_heavy_tailed() -> None:
    d = Dist(dist="pareto", alpha=1.1, min=1, max=50)
    rng = random.Random(0)
    xs = [d.sample(rng) for _ in range(5000)]
    assert min(xs) >= 1
    assert max(xs) <= 50
    assert sorted(xs)[len(xs) // 2] <= 2          # most are short
    assert sum(x >= 20 for x in xs) > 25          # a few are long


def test_jain_index() -> None:
    assert jain([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain([1.0, 0.0]) == pytest.approx(0.5)


def tiny(**kw: object) -> Workload:
    data: dict[str, object] = {
        "name": "t", "agents": 12, "seed": 2,
        "engine": {"slots": 2, "time_scale": 0.0},
        "classes": [{"name": "a", "share": 0.5, "group": "ga", "steps": 2, "max_tokens": 4,
                     "tool_ms": 0.0},
                    {"name": "b", "share": 0.5, "group": "gb", "priority": 1, "steps": 1,
                     "max_tokens": 8, "tool_ms": 0.0}],
    }
    data.update(kw)
    return Workload.model_validate(data)


@pytest.mark.parametrize("system", ["baseline", "fifo", "las", "fair", "priority-nopreempt"])
async def test_every_system_runs_the_same_agents(system: str) -> None:
    r = await run_system(system, tiny(), Target())
    s = summarize(r)
    assert s["completed"] == 12
    assert s["errors"] == 0
    # same sampled work for every system: 6 agents x 2 x 4 + 6 x 1 x 8 tokens
    assert sum(a.tokens for a in r.agents) == 6 * 2 * 4 + 6 * 8
    assert r.engine["completion_tokens"] == 96
    assert set(s["per_class"]) == {"a", "b"}
    assert s["jain"] is not None


async def test_rate_limited_engine_counts_429s_for_the_baseline_only() -> None:
    w = tiny(engine={"slots": 2, "time_scale": 0.0, "queue_cap": 1}, agents=20)
    base = summarize(await run_system("baseline", w, Target()))
    kern = summarize(await run_system("fifo", w, Target()))
    assert base["rate_limited"] > 0
    assert kern["rate_limited"] == 0
    assert kern["errors"] == 0


def test_cli_rejects_an_unknown_policy_before_any_work(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    code = main(["bench", "fairness", "--policy", "fifo,lottery", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown policy 'lottery'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_rejects_an_unreachable_server(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    code = main(["bench", "fairness", "--base-url", "http://127.0.0.1:9/v1",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "does not answer" in capsys.readouterr().err


def test_cli_runs_a_workload_and_writes_reports(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "w.toml"
    f.write_text(
        'name = "w"\nagents = 6\n[engine]\nslots = 2\ntime_scale = 0.0\n'
        '[[classes]]\nname = "a"\nsteps = 2\nmax_tokens = 3\ntool_ms = 0.0\n')
    out = tmp_path / "out"
    assert main(["bench", str(f), "--policy", "fifo,las", "--out", str(out)]) == 0
    md = (out / "results.md").read_text()
    assert "| baseline |" in md
    assert "| las |" in md
    assert (out / "results.json").is_file()
    assert "| fifo |" in capsys.readouterr().out


def test_a_class_may_call_only_a_workload_tool(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('name = "w"\n[[tools]]\nname = "api"\n'
                 '[[classes]]\nname = "a"\ntool = "apj"\n')
    with pytest.raises(aios.ConfigError, match=r"class 'a': tool 'apj' is not in \[\[tools\]\] "
                                                r"\(defined: api\)"):
        load_workload(str(f))
    f.write_text('name = "w"\n[[tools]]\nname = "api"\nmax_concurrency = 0\n'
                 '[[classes]]\nname = "a"\n')
    with pytest.raises(aios.ConfigError, match=r"tools\.0\.max_concurrency"):
        load_workload(str(f))
    with pytest.raises(ValueError, match="two tools are named 'api'"):
        tiny(tools=[{"name": "api"}, {"name": "api"}])


@pytest.mark.parametrize("system", ["baseline", "priority"])
async def test_workload_tools_are_called_between_llm_calls(system: str) -> None:
    w = tiny(tools=[{"name": "api", "latency_ms": 0.0, "max_concurrency": 1}],
             classes=[{"name": "a", "share": 0.5, "steps": 3, "max_tokens": 4,
                       "tool": "api", "tool_calls": 2},
                      {"name": "b", "share": 0.5, "priority": 1, "steps": 2,
                       "max_tokens": 4, "tool_ms": 0.0}])
    assert [(t.name, t.spec.max_concurrency) for t in bench_tools(w)] == [("api", 1)]
    r = await run_system(system, w, Target())
    s = summarize(r)
    assert s["completed"] == 12 and s["errors"] == 0
    # class a: 6 agents x 2 rounds between 3 LLM calls x 2 calls; class b calls none
    assert s["tool_calls"] == 6 * 2 * 2
    assert set(s["per_class_tool"]) == {"a"}
    assert "Per-class tool call latency" in markdown([s])


# -- issue 10: real-engine options ------------------------------------------------------


def test_window_then_headroom_then_the_workloads() -> None:
    assert Target(window=3, headroom=9).window_for(5, 8) == 3
    assert Target(headroom=0).window_for(5, 8) == 8
    assert Target(headroom=2).window_for(None, 8) == 10
    assert Target().window_for(5, 8) == 5
    assert Target().window_for(None, 8) is None


def test_cli_rejects_a_negative_headroom(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    assert main(["bench", "fairness", "--headroom", "-1", "--out", str(tmp_path)]) == 2
    assert "--headroom" in capsys.readouterr().err


@pytest.mark.parametrize("system", ["baseline", "priority"])
async def test_over_http_both_systems_stream_and_report_cpu_per_token(system: str) -> None:
    from aios.testing import sim_server

    with sim_server("--slots", "2", "--time-scale", "0") as sim:
        target = Target(backend="openai", base_url=sim.base_url, slots=2, headroom=0,
                        continuation=True)
        s = summarize(await run_system(system, tiny(agents=4), target))
    assert (s["completed"], s["errors"]) == (4, 0)
    assert s["cpu_us_per_token"] > 0
    assert s["reprefill_tokens"] >= 0 and s["bumps"] >= 0
