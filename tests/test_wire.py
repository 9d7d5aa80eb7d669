"""The one HTTP status <-> error table, both directions, and sim-serve using it."""

from __future__ import annotations

import httpx
import pytest

import aios
from aios.llm.wire import WIRE, error_class_from_wire, error_to_wire
from aios.testing import sim_server


@pytest.mark.parametrize(("cls", "wire"), WIRE)
def test_every_error_round_trips(cls: type[aios.AIOSError], wire: object) -> None:
    exc = cls("x")
    out = error_to_wire(exc)
    assert out == wire
    assert error_class_from_wire(out.status, out.code) is cls


@pytest.mark.parametrize(("status", "cls"), [
    (429, aios.RateLimited), (404, aios.ModelNotFound), (500, aios.BackendUnavailable),
    (503, aios.BackendUnavailable), (408, aios.BackendUnavailable), (422, aios.LLMError),
])
def test_status_alone_from_foreign_servers(status: int, cls: type[aios.AIOSError]) -> None:
    assert error_class_from_wire(status, "something_else") is cls


def test_unknown_errors_are_500() -> None:
    assert error_to_wire(ValueError("x")).status == 500


def test_sim_serve_answers_429_from_the_table() -> None:
    with sim_server("--slots", "1", "--queue-cap", "0", "--time-scale", "1") as srv:
        body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2000}
        with httpx.Client(timeout=10) as c, c.stream(
                "POST", f"{srv.base_url}/chat/completions",
                json={**body, "stream": True}) as held:
            assert held.status_code == 200
            r = c.post(f"{srv.base_url}/chat/completions", json=body)
    wire = error_to_wire(aios.RateLimited("x"))
    assert r.status_code == wire.status
    assert r.json()["error"]["code"] == wire.code
    assert error_class_from_wire(r.status_code, r.json()["error"]["code"]) is aios.RateLimited
