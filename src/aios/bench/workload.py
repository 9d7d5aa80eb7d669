"""Declarative workloads: TOML files users copy and edit (shipped: ``aios/bench/workloads/``).

A workload is a population of ReAct-style agents: each takes ``steps`` turns of one LLM
call on a growing conversation followed by a simulated tool wait, or by calls of one of the
workload's ``[[tools]]``: simulated tools the harness defines, each with a fixed latency
and a concurrency limit, which the kernel schedules as a resource like an LLM (the
baseline guards them with a FIFO semaphore). Agents come in classes
(priority, group, demand) and arrive all at once (``batch``) or as a Poisson process at a
fraction of the engine's capacity (``poisson``). This module only describes and samples;
it runs nothing.
"""

from __future__ import annotations

import importlib.resources
import math
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aios.config import config_error
from aios.errors import ConfigError

__all__ = ["AgentClass", "AgentSpec", "BenchTool", "Dist", "Workload", "load_workload",
           "workload_dirs"]


class Dist(BaseModel):
    """A distribution of positive integers: fixed, uniform, or bounded Pareto."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dist: Literal["fixed", "uniform", "pareto"] = "fixed"
    value: int = Field(default=1, ge=1)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=1, ge=1)
    alpha: float = Field(default=1.5, gt=0)

    def sample(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            return self.value
        if self.dist == "uniform":
            return rng.randint(self.min, self.max)
        # Bounded Pareto by inverse CDF: most values near min, a heavy tail up to max.
        lo, hi, a = float(self.min), float(self.max), self.alpha
        u = rng.random()
        x = (-(u * hi**a - u * lo**a - hi**a) / (hi**a * lo**a)) ** (-1.0 / a)
        return max(self.min, min(self.max, int(x)))


def _dist(v: Any) -> Any:
    return {"dist": "fixed", "value": v} if isinstance(v, int) else v


class AgentClass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    share: float = Field(default=1.0, gt=0)
    """Fraction of the agents in this class (shares are normalized)."""
    priority: int = 0
    group: str = ""
    """Group for fairness accounting; default: the class name."""
    steps: Dist = Field(default_factory=Dist)
    max_tokens: Dist = Field(default_factory=lambda: Dist(value=32))
    prompt_words: int = Field(default=64, ge=1)
    tool_words: int = Field(default=16, ge=0)
    tool_ms: float = Field(default=5.0, ge=0)
    """Simulated tool wait between LLM calls, in milliseconds (when ``tool`` is unset)."""
    tool: str | None = None
    """A ``[[tools]]`` entry to call between LLM calls instead of waiting ``tool_ms``."""
    tool_calls: int = Field(default=1, ge=1)
    """Calls of ``tool`` per step, made at once (one model reply with that many calls)."""

    @model_validator(mode="before")
    @classmethod
    def _ints_are_fixed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for k in ("steps", "max_tokens"):
                if k in data:
                    data[k] = _dist(data[k])
        return data


class BenchTool(BaseModel):
    """A simulated tool: every call takes ``latency_ms`` and at most ``max_concurrency``
    calls run at once (a rate-limited API, a shared service)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    latency_ms: float = Field(default=20.0, ge=0)
    max_concurrency: int = Field(default=1, ge=1)


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    agents: int = Field(default=100, ge=1)
    arrival: Literal["batch", "poisson"] = "batch"
    load: float = Field(default=0.9, gt=0)
    """``poisson``: arrival rate as a fraction of the engine's capacity."""
    seed: int = 1
    classes: list[AgentClass] = Field(min_length=1)
    engine: dict[str, Any] = Field(default_factory=dict)
    """Sim engine options (``aios.llm.sim.SimEngineConfig``)."""
    kernel: dict[str, Any] = Field(default_factory=dict)
    """Extra ``SchedulerConfig`` fields (time_slice_ms, aging_tokens_per_s...)."""
    window: int | None = Field(default=None, ge=1)
    """Admission window override (default: the kernel's own, slots plus headroom)."""
    tools: list[BenchTool] = Field(default_factory=list)
    """Simulated tools the classes may call (``AgentClass.tool``)."""

    @model_validator(mode="after")
    def _tools_exist(self) -> Workload:
        names = [t.name for t in self.tools]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tools: two tools are named {dup[0]!r}")
        for c in self.classes:
            if c.tool is not None and c.tool not in names:
                raise ValueError(f"class {c.name!r}: tool {c.tool!r} is not in [[tools]] "
                                 f"(defined: {', '.join(names) or 'none'})")
        return self

    def with_agents(self, n: int | None) -> Workload:
        return self if n is None else self.model_copy(update={"agents": n})


@dataclass(frozen=True, slots=True)
class AgentSpec:
    idx: int
    cls: str
    group: str
    priority: int
    arrival_s: float
    steps: int
    max_tokens: tuple[int, ...]
    task: str
    tool_s: float
    tool_words: int
    tool: str | None = None
    tool_calls: int = 1


_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)


def sample_agents(w: Workload, step_full_s: float, slots: int,
                  prefill_s_per_token: float) -> list[AgentSpec]:
    """The agents of one run: the same seed gives the same agents for every system."""
    rng = random.Random(w.seed)
    total = sum(c.share for c in w.classes)
    counts = [round(w.agents * c.share / total) for c in w.classes]
    counts[-1] = max(0, w.agents - sum(counts[:-1]))
    specs: list[AgentSpec] = []
    for cls, n in zip(w.classes, counts, strict=True):
        for _ in range(n):
            steps = cls.steps.sample(rng)
            specs.append(AgentSpec(
                idx=0, cls=cls.name, group=cls.group or cls.name, priority=cls.priority,
                arrival_s=0.0, steps=steps,
                max_tokens=tuple(cls.max_tokens.sample(rng) for _ in range(steps)),
                task=" ".join(rng.choice(_WORDS) for _ in range(cls.prompt_words)),
                tool_s=cls.tool_ms / 1000.0, tool_words=cls.tool_words, tool=cls.tool,
                tool_calls=cls.tool_calls))
    rng.shuffle(specs)
    if w.arrival == "poisson":
        # Work of an average agent at a full batch (decode + uncached prefill), hence the
        # engine's capacity in agents/s; arrivals at `load` times that rate.
        work = [sum(s.max_tokens) * step_full_s / slots
                + (len(s.task.split()) + s.tool_words * s.steps) * prefill_s_per_token
                for s in specs]
        mean_work = sum(work) / len(work)
        rate = w.load / mean_work if mean_work > 0 else math.inf
        t = 0.0
        out = []
        for i, s in enumerate(specs):
            out.append(_replace(s, idx=i, arrival_s=t))
            t += rng.expovariate(rate)
        return out
    return [_replace(s, idx=i) for i, s in enumerate(specs)]


def _replace(s: AgentSpec, **kw: Any) -> AgentSpec:
    d = {f: getattr(s, f) for f in s.__dataclass_fields__}
    d.update(kw)
    return AgentSpec(**d)


def workload_dirs() -> list[Path]:
    """Where named workloads are looked up: ./benchmarks/workloads (your own), then the
    ones shipped inside the package (``aios/bench/workloads``, also in a wheel)."""
    shipped = Path(str(importlib.resources.files("aios.bench") / "workloads"))
    return [Path.cwd() / "benchmarks" / "workloads", shipped]


def load_workload(ref: str) -> Workload:
    """A workload by file path or by name (``react-batch``); errors name the field."""
    path = Path(ref)
    if not path.suffix:
        found = [d / f"{ref}.toml" for d in workload_dirs() if (d / f"{ref}.toml").is_file()]
        if not found:
            names = sorted({p.stem for d in workload_dirs() if d.is_dir()
                            for p in d.glob("*.toml")})
            raise ConfigError(f"unknown workload {ref!r} (available: {', '.join(names)})")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"workload file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Workload.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, where=f"in {path}", unknown="unknown field") from None
