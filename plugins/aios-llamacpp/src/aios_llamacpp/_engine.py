"""The blocking core of the llamacpp backend: one ``llama_cpp.Llama`` and its KV cache.

Everything here is synchronous C work; the async backend calls it from one worker thread at
a time and never from the event loop. The engine owns a single invariant that makes
preemption exact: **every KV entry is computed by the canonical schedule** — the prompt in
chunks of ``n_batch`` tokens aligned at position 0, then each completion token alone. The
CPU kernels of llama.cpp give slightly different numbers for a token evaluated inside a
large batch than alone (measured on SmolLM2: logits off by ~1.0 once a batch passes ~25
tokens), so a resumed generation that re-evaluated "prompt + partial answer" in one batch
would drift from the uninterrupted run. :meth:`Engine.sync` therefore reuses cached KV only
up to a boundary both schedules share, and replays the rest the canonical way.

Sampling is not done by llama.cpp (see ``_sampling``), and a state restore is always
followed by an evaluation before logits are read: llama.cpp's sampler aborts the process
when called right after ``load_state`` on some builds.

What this module must never do: run on the event loop, raise anything but ``EngineError``
for an inference failure, or leave the bookkeeping claiming KV content that is not there.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from aios_llamacpp import _snapshot
from aios_llamacpp._grammar import Grammar
from aios_llamacpp._sampling import SamplingParams, sample

__all__ = ["Engine", "EngineError", "LoadOptions", "Restore", "Step", "load_engine"]

# llama-cpp-python builds the model parameters inside Llama.__init__ without exposing
# `use_extra_bufts`; swapping the factory it calls is the only way to set it. The swap is
# process-global, hence the lock (two backends loading at once must not interleave).
_PARAMS_PATCH_LOCK = threading.Lock()


class EngineError(Exception):
    """llama.cpp failed during evaluation (the backend turns it into an aios error)."""


@dataclass(frozen=True, slots=True)
class LoadOptions:
    model_path: str
    n_ctx: int
    n_threads: int
    n_batch: int
    verbose: bool
    use_extra_bufts: bool


@dataclass(frozen=True, slots=True)
class Step:
    token: int
    piece: bytes
    is_eog: bool
    evaluated: int
    """Tokens evaluated to produce the logits this token was sampled from."""


@dataclass(frozen=True, slots=True)
class Restore:
    ok: bool
    reason: str = ""


def load_engine(opts: LoadOptions) -> Engine:
    """Load the GGUF (blocking). Raises ``EngineError`` if llama.cpp refuses it."""
    with _PARAMS_PATCH_LOCK:
        low = llama_cpp.llama_cpp
        original = low.llama_model_default_params

        def params() -> Any:
            p = original()
            # Extra buffer types (weight repacking, AMX tiles) crash on some CPUs and VMs:
            # seen here, a segfault in ggml_backend_amx_mul_mat on a KVM guest advertising
            # AMX. Off by default; an option turns them back on.
            p.use_extra_bufts = opts.use_extra_bufts
            return p

        low.llama_model_default_params = params
        try:
            llm = llama_cpp.Llama(
                model_path=opts.model_path,
                n_ctx=opts.n_ctx,
                n_batch=opts.n_batch,
                n_ubatch=opts.n_batch,
                n_threads=opts.n_threads,
                n_threads_batch=opts.n_threads,
                logits_all=False,
                verbose=opts.verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(str(exc)) from exc
        finally:
            low.llama_model_default_params = original
    return Engine(llm, opts)


class Engine:
    """One loaded model, one context, one sequence in its KV cache at a time."""

    def __init__(self, llm: Any, opts: LoadOptions) -> None:
        self._llm = llm
        self.model_path = opts.model_path
        self.n_batch = opts.n_batch
        # llama.cpp may round the context up (to 256 here); Llama's own token buffer has the
        # size asked for, so that is the real limit.
        self.n_ctx = min(int(llm.n_ctx()), opts.n_ctx)
        self.n_vocab = int(llm.n_vocab())
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._mem = llama_cpp.llama_get_memory(llm.ctx)
        self.metadata: dict[str, str] = dict(llm.metadata)
        self._fingerprint: dict[str, Any] = {
            "model": os.path.abspath(opts.model_path),
            "model_size": os.path.getsize(opts.model_path),
            "n_vocab": self.n_vocab,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
        }
        # What the KV cache holds: token ids, the prompt length of the schedule they were
        # computed with, and the logits after the last of them (None once consumed/unknown).
        self._tokens: list[int] = []
        self._prompt_len = 0
        self._logits: npt.NDArray[np.float32] | None = None
        # Logits right after the prompt, kept while the prompt stays cached: a request with
        # the same prompt then starts without evaluating anything (re-evaluating just its
        # last token would break the canonical schedule, the prompt's last chunk would).
        self._prompt_logits: npt.NDArray[np.float32] | None = None
        self.evaluated_tokens = 0
        self.piece_buf = ctypes.create_string_buffer(64)

    @property
    def llama(self) -> Any:
        """The ``llama_cpp.Llama`` this engine drives."""
        return self._llm

    def clear(self) -> None:
        """Empty the KV cache: the next evaluation starts from position 0."""
        self._forget()

    # -- vocabulary ----------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return [int(t) for t in self._llm.tokenize(text.encode("utf-8"), False, special)]

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    @property
    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = llama_cpp.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else ""

    def eos(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self._vocab))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes of one token as it appears in text (control tokens: empty)."""
        buf = self.piece_buf
        n = int(llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False))
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = int(llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False))
        return bytes(buf.raw[: max(n, 0)])

    # -- evaluation ----------------------------------------------------------------------

    def sync(self, prompt_len: int, seq: Sequence[int]) -> tuple[npt.NDArray[np.float32], int]:
        """Make the KV cache hold ``seq`` (canonically) and return the next-token logits.

        ``seq[:prompt_len]`` is the prompt. Returns the logits and how many tokens had to be
        evaluated for them.
        """
        if not seq:
            raise EngineError("nothing to evaluate")
        if (
            self._logits is not None
            and self._prompt_len == prompt_len
            and len(self._tokens) == len(seq)
            and self._tokens == list(seq)
        ):
            return self._logits, 0
        if (
            self._prompt_logits is not None
            and len(seq) == prompt_len == self._prompt_len
            and len(self._tokens) >= prompt_len
            and self._tokens[:prompt_len] == list(seq)
        ):
            self._truncate(prompt_len)
            self._logits = self._prompt_logits
            return self._logits, 0
        keep = self._reusable(prompt_len, seq)
        try:
            self._truncate(keep)
            if keep < prompt_len or self._prompt_len != prompt_len:
                self._prompt_logits = None  # they belonged to another (or a cut) prompt
            self._prompt_len = prompt_len
            pos = keep
            while pos < prompt_len:
                # Prompt chunks end at multiples of n_batch, wherever evaluation starts.
                end = min(prompt_len, (pos // self.n_batch + 1) * self.n_batch)
                self._decode(seq[pos:end])
                pos = end
                if pos == prompt_len:
                    self._prompt_logits = self._read_logits()
            for i in range(max(pos, prompt_len), len(seq)):
                self._decode(seq[i : i + 1])
        except Exception as exc:
            self._forget()
            if isinstance(exc, EngineError):
                raise
            raise EngineError(f"llama.cpp evaluation failed: {exc}") from exc
        logits = self._read_logits()
        self._logits = logits
        return logits, len(seq) - keep

    def step(
        self, prompt_len: int, seq: Sequence[int], params: SamplingParams, position: int,
        grammar: Grammar | None = None,
    ) -> Step:
        """Sync to ``seq`` and sample the completion token at ``position``.

        With a ``grammar``, the token is one it allows (llama.cpp's shortcut: keep the
        unconstrained draw if allowed, else mask every logit and draw again); the caller
        makes the grammar accept it.
        """
        logits, evaluated = self.sync(prompt_len, seq)
        token = sample(logits, params, position)
        if grammar is not None and not grammar.allows(token):
            masked = grammar.mask(logits)  # a copy: the cached logits stay as they are
            if not np.isfinite(masked).any():
                raise EngineError("the grammar allows no token at this point")
            token = sample(masked, params, position)
        return Step(token, self.piece(token), self.is_eog(token), evaluated)

    def grammar(self, gbnf: str) -> Grammar:
        """A grammar sampler over this model's vocabulary (``GrammarError`` if invalid)."""
        return Grammar(self._vocab, self.n_vocab, gbnf)

    def holds(self, prompt_len: int, seq: Sequence[int]) -> bool:
        return self._prompt_len == prompt_len and self._tokens == list(seq)

    def _reusable(self, prompt_len: int, seq: Sequence[int]) -> int:
        """How many cached tokens can stay: a boundary shared by both schedules."""
        held = len(self._tokens)
        if held <= len(seq) and self._tokens == list(seq[:held]):
            common = held  # the usual case, checked at C speed
        else:
            common = 0
            for a, b in zip(self._tokens, seq, strict=False):
                if a != b:
                    break
                common += 1
        # At least the last token is evaluated again: its logits are what we need.
        limit = min(common, len(seq) - 1)
        if self._prompt_len == prompt_len and common >= prompt_len:
            # Same prompt, same schedule: every position past the prompt is a boundary.
            if limit >= prompt_len:
                return limit
            return (limit // self.n_batch) * self.n_batch
        # Different prompts share only whole n_batch chunks lying inside both prompts.
        bound = min(limit, prompt_len, self._prompt_len)
        return (bound // self.n_batch) * self.n_batch

    def _truncate(self, keep: int) -> None:
        if keep < len(self._tokens):
            llama_cpp.llama_memory_seq_rm(self._mem, -1, keep, -1)
            del self._tokens[keep:]
        if keep < self._prompt_len:
            self._prompt_logits = None  # the prompt is no longer complete in the cache
        self._llm.n_tokens = keep
        self._logits = None

    def _decode(self, batch: Sequence[int]) -> None:
        if len(self._tokens) + len(batch) > self.n_ctx:
            raise EngineError(
                f"context full: {len(self._tokens)} + {len(batch)} tokens > n_ctx {self.n_ctx}"
            )
        # Llama.eval: one llama_decode per n_batch slice (our slices never exceed it); it
        # also keeps Llama.input_ids / n_tokens in step with the KV cache.
        self._llm.eval(list(batch))
        self._tokens.extend(batch)
        self.evaluated_tokens += len(batch)

    def _read_logits(self) -> npt.NDArray[np.float32]:
        ptr = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        if not ptr:
            raise EngineError("llama.cpp returned no logits")
        view = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return np.array(view, dtype=np.float32, copy=True)

    def _forget(self) -> None:
        """The KV content is unknown (a failure mid-way): clear it and the bookkeeping."""
        llama_cpp.llama_memory_clear(self._mem, True)
        self._llm.n_tokens = 0
        self._tokens = []
        self._prompt_len = 0
        self._logits = None
        self._prompt_logits = None

    # -- snapshots -----------------------------------------------------------------------

    def save(self) -> bytes:
        """Snapshot the KV cache (as held now) in the ``_snapshot`` format."""
        state = self._state_bytes()
        header = dict(self._fingerprint, prompt_len=self._prompt_len)
        return _snapshot.pack(header, self._tokens, state)

    def restore(self, blob: bytes, seq: Sequence[int]) -> Restore:
        """Load a snapshot whose tokens are a prefix of ``seq``; verify it really loaded.

        On any failure the cache is left empty and ``Restore(ok=False)`` says why; the
        caller then evaluates from scratch.
        """
        try:
            snap = _snapshot.unpack(blob)
        except ValueError as exc:
            return Restore(False, str(exc))
        header = snap.header
        for key, value in self._fingerprint.items():
            if header.get(key) != value:
                return Restore(False, f"snapshot {key}={header.get(key)!r}, engine {value!r}")
        n = len(snap.tokens)
        prompt_len = header.get("prompt_len")
        if not isinstance(prompt_len, int) or n == 0 or prompt_len > n:
            return Restore(False, "snapshot holds no complete prompt")
        if n > len(seq) or list(seq[:n]) != list(snap.tokens):
            return Restore(False, "snapshot tokens are not a prefix of the resumed sequence")
        # Clear first: a restore that silently does nothing then shows as an empty cache.
        self._forget()
        size = len(snap.state)
        buf = (ctypes.c_uint8 * size).from_buffer_copy(snap.state)
        read = int(llama_cpp.llama_state_set_data(self._llm.ctx, buf, size))
        if read != size:
            self._forget()
            return Restore(False, f"llama_state_set_data read {read} of {size} bytes")
        pos_max = int(llama_cpp.llama_memory_seq_pos_max(self._mem, 0))
        if pos_max != n - 1:
            self._forget()
            return Restore(False, f"KV cache after restore ends at {pos_max}, expected {n - 1}")
        # The strongest check available without re-evaluating: the context, saved again,
        # must give back the very bytes that were loaded.
        if self._state_bytes() != snap.state:
            self._forget()
            return Restore(False, "state read back after restore differs from the snapshot")
        self._tokens = list(snap.tokens)
        self._prompt_len = prompt_len
        self._logits = None
        self._llm.input_ids[:n] = snap.tokens
        self._llm.n_tokens = n
        return Restore(True)

    def _state_bytes(self) -> bytes:
        ctx = self._llm.ctx
        size = int(llama_cpp.llama_state_get_size(ctx))
        buf = (ctypes.c_uint8 * size)()
        n = int(llama_cpp.llama_state_get_data(ctx, buf, size))
        if n > size:
            raise EngineError("llama_state_get_data overflowed its buffer")
        return bytes(memoryview(buf)[:n])

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        self._llm.close()
