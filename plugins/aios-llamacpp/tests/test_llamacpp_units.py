"""Unit tests of the pure parts of the llamacpp backend: text stream, sampler, snapshots."""

from __future__ import annotations

import random

import numpy as np
import pytest

from aios_llamacpp import _snapshot
from aios_llamacpp._sampling import SamplingParams, sample
from aios_llamacpp._text import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.feed(p) for p in pieces]


def test_multibyte_character_split_across_tokens() -> None:
    s = TextStream()
    # "é" is C3 A9, "€" is E2 82 AC: split across pieces, emitted only when complete.
    assert feed_all(s, [b"caf\xc3", b"\xa9 ", b"\xe2", b"\x82", b"\xac!"]) == [
        "caf", "é ", "", "", "€!"
    ]
    assert s.finish() == ""


def test_incomplete_tail_is_replaced_at_the_end() -> None:
    s = TextStream()
    assert s.feed(b"ok\xe2\x82") == "ok"
    assert s.finish() == "\ufffd"


def test_text_is_a_function_of_the_bytes_not_of_the_split() -> None:
    rng = random.Random(0)
    data = "naïve café — 東京 🐉 end".encode() + b"\xff\xfe tail"
    expected = data.decode("utf-8", errors="replace")
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        s = TextStream(stops=["zzz"])
        out = "".join(feed_all(s, pieces)) + s.finish()
        assert out == expected


def test_stop_string_is_held_back_then_cut() -> None:
    s = TextStream(stops=["END"])
    assert s.feed(b"abcE") == "abc"
    assert s.feed(b"N") == ""
    assert s.feed(b"D and more") == ""
    assert s.stopped
    assert s.emitted == "abc"
    assert s.feed(b"ignored") == ""
    assert s.finish() == ""


def test_near_miss_is_released() -> None:
    s = TextStream(stops=["END"])
    assert s.feed(b"abEN") == "ab"
    assert s.feed(b"x") == "ENx"
    assert not s.stopped


def test_earliest_of_several_stops_wins() -> None:
    s = TextStream(stops=["world", "lo w"])
    assert s.feed(b"hello world") == "hel"
    assert s.stopped


def test_held_back_tail_is_flushed_when_the_generation_ends() -> None:
    s = TextStream(stops=["END"])
    assert s.feed(b"xyzEN") == "xyz"
    assert s.finish() == "EN"


def test_greedy_is_argmax() -> None:
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    assert sample(logits, SamplingParams(temperature=0.0), 0) == 1
    tie = np.array([1.0, 5.0, 5.0], dtype=np.float32)
    assert sample(tie, SamplingParams(temperature=0.0), 0) == 1


def test_sampling_depends_only_on_seed_and_position() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(1000).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=42)
    draws = [sample(logits, params, i) for i in range(200)]
    assert draws == [sample(logits, params, i) for i in range(200)]
    assert len(set(draws)) > 50  # really random across positions
    other = SamplingParams(temperature=1.0, seed=43)
    assert draws != [sample(logits, other, i) for i in range(200)]
    # Negative and huge seeds are fine.
    sample(logits, SamplingParams(temperature=1.0, seed=-5), 0)
    sample(logits, SamplingParams(temperature=1.0, seed=1 << 80), 0)


def test_truncation_parameters() -> None:
    logits = np.array([0.0, 1.0, 4.0, 3.9, 0.5], dtype=np.float32)
    for params in (
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.0, top_p=1e-6),
        SamplingParams(temperature=1.0, min_p=1.0),
    ):
        assert {sample(logits, params, i) for i in range(100)} == {2}
    two = SamplingParams(temperature=1.0, top_k=2)
    assert {sample(logits, two, i) for i in range(300)} == {2, 3}


def test_snapshot_roundtrip_and_corruption() -> None:
    blob = _snapshot.pack({"model": "m", "prompt_len": 2}, [5, 6, 7], b"state-bytes")
    snap = _snapshot.unpack(blob)
    assert snap.tokens == (5, 6, 7)
    assert snap.state == b"state-bytes"
    assert snap.header["model"] == "m"
    with pytest.raises(ValueError, match="magic"):
        _snapshot.unpack(b"nope" + blob)
    with pytest.raises(ValueError, match="length"):
        _snapshot.unpack(blob[:-1])
    with pytest.raises(ValueError, match="corrupt"):
        _snapshot.unpack(blob[:-1] + b"X")
