"""Config inputs that are wrong: every error names the real cause (the key, the
environment variable, the index, the file, the URL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import aios
from aios.cli import _load_config
from aios.llm.server import serve_sim


def _config(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "aios.toml"
    f.write_text(text)
    return f


ONE_MODEL = '[[llm]]\nname = "default"\nbackend = "sim"\n'


# -- a section of the wrong shape ---------------------------------------------------------


def test_llm_object_instead_of_a_list() -> None:
    with pytest.raises(aios.ConfigError) as ei:
        aios.KernelConfig(llm=aios.LLMConfig())  # type: ignore[arg-type]
    msg = str(ei.value)
    assert "must be a list" in msg and "llm" in (ei.value.key or "")
    assert "llm.0" not in msg and "also" not in msg  # one problem, not 12 bogus ones


def test_llm_table_instead_of_array_of_tables_in_toml(tmp_path: Path) -> None:
    f = _config(tmp_path, '[llm]\nname = "default"\nbackend = "sim"\n')
    with pytest.raises(aios.ConfigError, match=r"must be a list.*\[\[llm\]\]") as ei:
        aios.KernelConfig.from_toml(f, env={})
    assert ei.value.key == "llm"
    with pytest.raises(aios.ConfigError, match=r"\[\[mcp\]\]"):
        aios.KernelConfig.from_dict({"mcp": {"name": "x", "command": "y"}})


# -- environment overrides ----------------------------------------------------------------


def test_env_index_beyond_the_list_names_variable_and_index(tmp_path: Path) -> None:
    f = _config(tmp_path, ONE_MODEL)
    with pytest.raises(aios.ConfigError) as ei:
        aios.KernelConfig.from_toml(f, env={"AIOS_LLM__3__MODEL": "x"})
    msg = str(ei.value)
    assert "AIOS_LLM__3__MODEL" in msg and "index 3" in msg
    assert "duplicate" not in msg
    assert "entries 0..0" in msg and "new entry takes index 1" in msg


def test_env_adds_the_next_entry_in_numeric_order(tmp_path: Path) -> None:
    # The next index adds an entry; the order of the variables does not matter, and
    # index 10 sorts after 2 (as numbers, not as text).
    env = {f"AIOS_LLM__{i}__NAME": f"m{i}" for i in reversed(range(12))}
    c = aios.KernelConfig.from_env(env)
    assert [m.name for m in c.llm] == [f"m{i}" for i in range(12)]
    f = _config(tmp_path, ONE_MODEL)
    c = aios.KernelConfig.from_toml(f, env={"AIOS_LLM__1__NAME": "b", "AIOS_LLM__1__MODEL": "m"})
    assert [(m.name, m.model) for m in c.llm] == [("default", ""), ("b", "m")]


def test_unknown_env_key_names_the_variable(tmp_path: Path) -> None:
    f = _config(tmp_path, ONE_MODEL)
    with pytest.raises(aios.ConfigError, match="environment variable AIOS_TOKEN") as ei:
        aios.KernelConfig.from_toml(f, env={"AIOS_TOKEN": "abc"})
    assert ei.value.key == "token" and "unknown key" in str(ei.value)


def test_bad_env_value_names_the_variable_and_file_errors_do_not(tmp_path: Path) -> None:
    f = _config(tmp_path, ONE_MODEL + "max_concurrency = 0\n")
    with pytest.raises(aios.ConfigError) as ei:
        aios.KernelConfig.from_toml(f, env={"AIOS_SCHEDULER__TIME_SLICE_MS": "5"})
    assert "environment variable" not in str(ei.value)  # the file's own mistake
    f = _config(tmp_path, ONE_MODEL)
    with pytest.raises(aios.ConfigError, match="AIOS_SCHEDULER__TIME_SLICE_MS"):
        aios.KernelConfig.from_toml(f, env={"AIOS_SCHEDULER__TIME_SLICE_MS": "-5"})


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"AIOS_LLM__X__MODEL": "m"}, r"AIOS_LLM__X__MODEL: llm is a list, expected an index"),
        ({"AIOS_SCHEDULER__POLICY__X": "1"}, r"AIOS_SCHEDULER__POLICY__X: scheduler.policy is"),
        ({"AIOS_SCHEDULER____POLICY": "las"}, r"AIOS_SCHEDULER____POLICY: an empty key"),
    ],
)
def test_malformed_env_paths_name_the_variable(
    tmp_path: Path, env: dict[str, str], match: str
) -> None:
    f = _config(tmp_path, ONE_MODEL + '[scheduler]\npolicy = "fifo"\n')
    with pytest.raises(aios.ConfigError, match=match):
        aios.KernelConfig.from_toml(f, env=env)


def test_env_overrides_apply_without_a_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIOS_CONFIG", raising=False)
    monkeypatch.setenv("AIOS_SCHEDULER__POLICY", "las")
    monkeypatch.setenv("AIOS_LLM__0__BACKEND", "sim")
    cfg = _load_config(None, None, None)
    assert cfg.scheduler.policy == "las"
    assert [m.backend for m in cfg.llm] == ["sim"]
    assert aios.KernelConfig.from_env({}) == aios.KernelConfig()


# -- the config file itself ---------------------------------------------------------------


def test_config_file_not_utf8_or_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "latin1.toml"
    f.write_bytes('[scheduler]\npolicy = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(aios.ConfigError, match=r"latin1\.toml is not UTF-8"):
        aios.KernelConfig.from_toml(f, env={})
    with pytest.raises(aios.ConfigError, match="is a directory"):
        aios.KernelConfig.from_toml(tmp_path, env={})


# -- a base_url without /v1 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hinted"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.0.0.1:8000/", True),
        ("http://host/api", True),
        ("http://127.0.0.1:8000/v1", False),
        ("http://127.0.0.1:8000/v1/", False),
        ("https://host/openai/v1", False),
        (None, False),
    ],
)
def test_base_url_hint(url: str | None, hinted: bool) -> None:
    from aios.llm.openai_backend import _base_url_hint

    hint = _base_url_hint(url)
    assert bool(hint) == hinted
    if hinted:
        assert url is not None and f"{url.rstrip('/')}/v1" in hint


@contextlib.asynccontextmanager
async def _serve() -> AsyncIterator[str]:
    ready = anyio.Event()
    urls: list[str] = []

    def started(url: str) -> None:
        urls.append(url)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_sim("127.0.0.1", 0, started=started))
        await ready.wait()
        try:
            yield urls[0]
        finally:
            tg.cancel_scope.cancel()


async def test_base_url_without_v1_says_so_in_the_404() -> None:
    async with _serve() as url:
        root = url.removesuffix("/v1")
        cfg = aios.KernelConfig(
            autoload_plugins=True,
            llm=[aios.LLMConfig(backend="openai", base_url=root, model="sim", max_retries=0)],
        )

        async def ask(ctx: aios.Context) -> Any:
            try:
                return await ctx.llm.chat([{"role": "user", "content": "hi"}], max_tokens=2)
            except aios.ModelNotFound as exc:
                return exc

        async with aios.Kernel(cfg) as kernel:
            result = await kernel.spawn(ask).wait()
        assert isinstance(result, aios.ModelNotFound)
        assert f"{root}/v1" in str(result) and "has no /v1 path" in str(result)
