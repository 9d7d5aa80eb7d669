"""CLI errors: one line naming the problem, exit code 2, no traceback (``--debug`` shows
it), every argument checked before any work starts."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

import aios
from aios.cli import main
from aios.plugins import PluginRegistry

ROOT = Path(__file__).parents[1]
SIM = '[[llm]]\nname = "default"\nbackend = "sim"\n'


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``aios argv``; (exit code, stdout, stderr). argparse errors exit via SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The command fails with exit code 2 and exactly one line on stderr; returns it."""
    code, _, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def agent_file(tmp_path: Path) -> Path:
    f = tmp_path / "agent.py"
    f.write_text("async def hi(ctx):\n    return 'hi'\n\ndef sync(ctx):\n    return 1\n\n"
                 "NAMES = ['a']\n")
    return f


@pytest.fixture
def sim_config(tmp_path: Path) -> Path:
    f = tmp_path / "sim.toml"
    f.write_text(SIM)
    return f


# -- sim-serve ----------------------------------------------------------------------------


def test_sim_serve_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error(capsys, "sim-serve", "--port", str(port))
    assert f"127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_sim_serve_port_out_of_range(capsys: pytest.CaptureFixture[str], port: str) -> None:
    line = one_error(capsys, "sim-serve", "--port", port)
    assert "--port" in line and "not a port number" in line


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--debug", "sim-serve", "--port", "99999"],
                 ["sim-serve", "--port", "99999", "--debug"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2
        assert "Traceback" in err
        assert err.strip().splitlines()[-1].startswith("aios: error: --port")


def test_one_line_unwraps_exception_groups() -> None:
    from aios.cli import _one_line

    group = ExceptionGroup("unhandled errors in a TaskGroup",
                           [ExceptionGroup("inner", [aios.ConfigError("boom", key="port")])])
    assert _one_line(group) == "port: boom"
    assert "RuntimeError: x" in _one_line(RuntimeError("x\ny"))
    assert "\n" not in _one_line(RuntimeError("x\ny"))
    assert _one_line(FileNotFoundError(2, "No such file or directory", "f.txt")) == \
        "No such file or directory: f.txt"


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "required: command" in one_error(capsys)
    line = one_error(capsys, "run")
    assert "required: agent (see aios run --help)" in line  # args are optional
    assert "invalid choice" in one_error(capsys, "run", "a.py:f", "--log", "loud")


# -- run: the agent reference ---------------------------------------------------------------


def test_run_attribute_that_is_not_a_function(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, "run", f"{ROOT / 'agents' / 'qa.py'}:QUESTIONS")
    assert "QUESTIONS" in line and "async function" in line and "list" in line


@pytest.mark.parametrize(("attr", "match"), [
    ("sync", "must be an async function"),
    ("NAMES", "async function"),
    ("nope", "has no attribute 'nope'"),
])
def test_run_bad_agent_attributes(capsys: pytest.CaptureFixture[str], agent_file: Path,
                                  sim_config: Path, attr: str, match: str) -> None:
    line = one_error(capsys, "run", f"{agent_file}:{attr}", "--config", str(sim_config))
    assert match in line


def test_run_agent_file_with_a_syntax_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sim_config: Path
) -> None:
    f = tmp_path / "broken.py"
    f.write_text("async def hi(ctx):\n    return (\n\nx = 1\n")
    line = one_error(capsys, "run", f"{f}:hi", "--config", str(sim_config))
    assert "syntax error at line" in line and str(f) in line


@pytest.mark.parametrize(("body", "match"), [
    ("import sys\nsys.exit(3)\n", r"called sys.exit\(3\)"),
    ("import no_such_module_for_aios_test\n", "ModuleNotFoundError"),
    ("raise RuntimeError('setup failed')\n", "RuntimeError: setup failed"),
])
def test_run_agent_file_whose_import_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sim_config: Path, body: str, match: str
) -> None:
    f = tmp_path / "bad_import.py"
    f.write_text(body + "async def hi(ctx):\n    return 1\n")
    line = one_error(capsys, "run", f"{f}:hi", "--config", str(sim_config))
    assert str(f) in line
    assert re.search(match, line), line


def test_run_agent_that_cannot_take_the_arguments(
    capsys: pytest.CaptureFixture[str], agent_file: Path, sim_config: Path
) -> None:
    line = one_error(capsys, "run", f"{agent_file}:hi", "extra", "--config", str(sim_config))
    assert "cannot take" in line and "'extra'" in line


# -- run: numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "match"), [
    (["--priorities", "a,b"], r"'a' in 'a,b' is not an integer"),
    (["--priorities", "1,,2"], "is not an integer"),
    (["-n", "-3"], "at least 1, got -3"),
    (["-n", "0"], "at least 1, got 0"),
    (["-n", "two"], "'two' is not an integer"),
    (["-n", "100000"], "at most 10,000 agents, got 100,000"),
])
def test_run_bad_numbers(capsys: pytest.CaptureFixture[str], agent_file: Path,
                         argv: list[str], match: str) -> None:
    line = one_error(capsys, "run", f"{agent_file}:hi", *argv)
    assert re.search(match, line), line


def test_run_good_numbers_work(capsys: pytest.CaptureFixture[str], agent_file: Path,
                               sim_config: Path) -> None:
    code, out, err = cli(capsys, "run", f"{agent_file}:hi", "-n", "3", "--priorities", "1,0",
                         "--config", str(sim_config))
    assert code == 0, err
    assert out.count(": hi") == 3


# -- run: the config file -----------------------------------------------------------------


def test_run_config_not_utf8_or_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, agent_file: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[scheduler]\npolicy = \"\xff\xfe\"\n")
    line = one_error(capsys, "run", f"{agent_file}:hi", "--config", str(bad))
    assert "not UTF-8" in line and str(bad) in line
    line = one_error(capsys, "run", f"{agent_file}:hi", "--config", str(tmp_path))
    assert "is a directory" in line


def test_run_env_variable_is_named(capsys: pytest.CaptureFixture[str], agent_file: Path,
                                   sim_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_TOKEN", "abc")
    line = one_error(capsys, "run", f"{agent_file}:hi", "--config", str(sim_config))
    assert "AIOS_TOKEN" in line


def test_run_unknown_policy_before_the_agent_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sim_config: Path
) -> None:
    marker = tmp_path / "ran"
    f = tmp_path / "agent.py"
    f.write_text(f"async def hi(ctx):\n    open({str(marker)!r}, 'w').close()\n")
    line = one_error(capsys, "run", f"{f}:hi", "--config", str(sim_config), "--policy", "nope")
    assert "unknown scheduling policy 'nope'" in line
    assert not marker.exists()


# -- bench --------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "match"), [
    # the value parsed (an age "5 hours ago"), so the error is about the missing state
    (["--since", "-5h"], "aios: error: --state: state database not found"),
    (["--since=-5h"], "aios: error: --state: state database not found"),
    (["--since", "-1.5d"], "aios: error: --state: state database not found"),
    (["--since", "-5x"], "--since '-5x': give Unix seconds"),
])
def test_audit_since_takes_a_negative_age(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          argv: list[str], match: str) -> None:
    line = one_error(capsys, "audit", "--state", str(tmp_path / "none.db"), *argv)
    assert match in line, line


def test_sim_serve_engine_errors_say_error(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, "sim-serve", "--port", "0", "--slots", "0")
    assert line.startswith("aios sim-serve: error: slots:"), line


def test_bench_zero_agents(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, "bench", "react-batch", "--agents", "0")
    assert "--agents" in line and "at least 1" in line


def test_bench_unwritable_out_is_checked_before_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aios.bench.cli as bench_cli

    ran: list[object] = []
    monkeypatch.setattr(bench_cli, "_bench", lambda *a: ran.append(a))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_error(capsys, "bench", "react-batch", "--out", str(blocker / "out"))
    assert "--out" in line and str(blocker / "out") in line
    line = one_error(capsys, "bench", "react-batch", "--out", str(blocker))
    assert "is a file, not a directory" in line
    assert ran == []


def test_bench_slots_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, "bench", "react-batch", "--slots", "0")
    assert "--slots" in line


# -- plugins ------------------------------------------------------------------------------


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_body: str) -> None:
    dist = tmp_path / "exiting_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: exiting-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[aios.schedulers]\nquitter = aios_quitter_mod:P\n")
    (tmp_path / "aios_quitter_mod.py").write_text(module_body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "aios_quitter_mod", raising=False)


def test_plugin_calling_sys_exit_is_reported_not_fatal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugin(tmp_path, monkeypatch, "import sys\nsys.exit(3)\n")
    code, out, _ = cli(capsys, "plugins")
    assert code == 1  # the documented status of a broken plugin, not the plugin's 3
    assert "quitter" in out and "SystemExit" in out
    assert "fifo" in out


def test_plugin_raising_a_base_exception_leaves_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugin(tmp_path, monkeypatch, "class Odd(BaseException):\n    pass\nraise Odd('no')\n")
    reg = PluginRegistry()
    bad = {i.name: i.error for i in reg.report() if not i.ok}
    assert "Odd: no" in (bad["quitter"] or "")
    assert "fifo" in reg.names("aios.schedulers")
