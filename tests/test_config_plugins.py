"""Config (code, TOML, environment), plugin discovery, and the public API surface."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import aios
from aios.plugins import PluginRegistry


def test_toml_with_env_override(tmp_path: Path) -> None:
    f = tmp_path / "aios.toml"
    f.write_text(
        '[scheduler]\npolicy = "las"\n\n[[llm]]\nname = "default"\nbackend = "sim"\n'
        "max_concurrency = 4\n"
    )
    c = aios.KernelConfig.from_toml(f, env={"AIOS_SCHEDULER__TIME_SLICE_MS": "50",
                                            "AIOS_LLM__0__MODEL": "m"})
    assert c.scheduler.policy == "las" and c.scheduler.time_slice_ms == 50
    assert c.llm[0].max_concurrency == 4 and c.llm[0].model == "m"
    assert c.llm[0].effective_window > 4  # headroom over the engine's slots


def test_typo_in_toml_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "aios.toml"
    f.write_text('[scheduler]\npolcy = "las"\n')
    with pytest.raises(aios.ConfigError, match=r"scheduler\.polcy: unknown key") as ei:
        aios.KernelConfig.from_toml(f, env={})
    assert ei.value.key == "scheduler.polcy"


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[scheduler\n")
    with pytest.raises(aios.ConfigError, match="not valid TOML"):
        aios.KernelConfig.from_toml(f, env={})
    with pytest.raises(aios.ConfigError, match="not found"):
        aios.KernelConfig.from_toml(tmp_path / "nope.toml", env={})


def test_duplicate_llm_names_rejected() -> None:
    with pytest.raises(aios.ConfigError, match="duplicate llm names"):
        aios.KernelConfig(llm=[aios.LLMConfig(name="a"), aios.LLMConfig(name="a")])


def test_builtins_are_registered_as_entry_points() -> None:
    reg = PluginRegistry()
    assert {"fifo", "priority", "las", "fair", "rr"} <= set(reg.names("aios.schedulers"))
    assert {"sim", "openai"} <= set(reg.names("aios.llm_backends"))
    dists = {i.distribution for i in reg.report() if i.name in ("fifo", "sim")}
    assert dists == {"aios"}


def test_broken_plugin_is_reported_by_name_and_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[aios.schedulers]\nlottery = no_such_module_xyz:Lottery\n"
        "[aios.llm_backends]\nnotabackend = builtins:dict\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = PluginRegistry()
    bad = {i.name: i for i in reg.report() if not i.ok}
    assert "failed to import" in (bad["lottery"].error or "")
    assert bad["lottery"].distribution == "broken-plugin"
    assert "subclass of aios.llm.base.LLMBackend" in (bad["notabackend"].error or "")
    assert "fifo" in reg.names("aios.schedulers")
    with pytest.raises(aios.PluginError, match="lottery"):
        reg.get("aios.schedulers", "lottery")
    assert "no_such_module_xyz" not in sys.modules


def test_autoload_off_knows_only_extra_plugins() -> None:
    from aios.scheduler.policies import FifoPolicy

    reg = PluginRegistry(autoload=False, extra={"aios.schedulers": {"mine": FifoPolicy}})
    assert reg.names("aios.schedulers") == ["mine"]
    assert reg.names("aios.llm_backends") == []


def test_public_api_is_small_complete_and_has_no_private_names() -> None:
    exported = set(aios.__all__)
    assert len(exported) < 60
    assert all(not n.startswith("_") or n == "__version__" for n in exported)
    for name in exported:
        assert hasattr(aios, name), name
    public_in_module = {n for n, v in vars(aios).items()
                        if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public_in_module <= exported


def test_every_error_is_an_aios_error() -> None:
    import aios.errors as e

    for name in e.__all__:
        assert issubclass(getattr(e, name), aios.AIOSError)


def test_aios_plugins_lists_builtins_and_fails_on_a_broken_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from aios.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "fifo" in out
    assert "sim" in out
    dist = tmp_path / "bad_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[aios.schedulers]\nlottery = nope_mod_q:L\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plugins"]) == 1
    assert "lottery" in capsys.readouterr().out
