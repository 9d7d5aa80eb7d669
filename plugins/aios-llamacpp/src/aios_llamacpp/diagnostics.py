"""Public diagnostics of a running :class:`~aios_llamacpp.LlamaCppBackend`.

For benchmarks and tests that need to look under the backend: the prompt tokens a call
becomes, an empty KV cache before a timed run, a recompute timed alone, and a plain
llama-cpp-python ``Llama`` with the same file and settings to compare against ("the
kernel's output equals calling llama-cpp-python directly on this machine"). Nothing
here is needed to run agents.

Every call runs on the backend's own model thread (this llama.cpp build uses OpenMP, which
keeps a thread pool per calling thread: a second calling thread slows every decode about
3x), under the backend's lock, so using it next to running generations is safe; it does
change what the KV cache holds, hence the timing of the next step. What this module must
never do: load the model on the event loop, or free a ``Llama`` it did not load.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from aios.syscalls import LLMChat
from aios_llamacpp._engine import Engine, LoadOptions, load_engine
from aios_llamacpp._sampling import SamplingParams
from aios_llamacpp.backend import LlamaCppBackend

__all__ = ["Diagnostics", "Reference", "Settings"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the backend's model runs with (n_ctx in tokens, n_batch in tokens per decode)."""

    model_path: str
    n_ctx: int
    n_batch: int
    n_threads: int
    use_extra_bufts: bool


@dataclass(frozen=True, slots=True)
class Reference:
    """What llama-cpp-python's own ``create_completion`` produced for a call."""

    text: str
    completion_tokens: int
    finish_reason: str


class Diagnostics:
    """Diagnostics of one started backend; ``async with`` closes the reference model.

    >>> async with Diagnostics(backend) as diag:  # doctest: +SKIP
    ...     ref = await diag.reference_completion(call)
    """

    def __init__(self, backend: LlamaCppBackend) -> None:
        self._b = backend
        self._ref: Engine | None = None

    async def __aenter__(self) -> Diagnostics:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Free the reference model, if one was loaded (the backend stays as it is)."""
        ref, self._ref = self._ref, None
        if ref is not None:
            await self._b._run(ref.close)

    # -- the backend's own model ---------------------------------------------------------

    async def settings(self) -> Settings:
        """The model file and the settings it was loaded with (loads it if needed)."""
        engine = await self._b._ready()
        opts = self._b.options
        return Settings(model_path=engine.model_path, n_ctx=engine.n_ctx,
                        n_batch=engine.n_batch, n_threads=opts.n_threads or os.cpu_count() or 1,
                        use_extra_bufts=opts.use_extra_bufts)

    async def run_on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking ``fn(*args)`` on the backend's llama.cpp thread, under its lock."""
        await self._b._ready()
        async with self._b._lock:
            return await self._b._run(fn, *args)

    async def model_thread_id(self) -> int:
        """The OS thread id every llama.cpp call of this backend runs on."""
        return await self.run_on_model_thread(threading.get_ident)

    async def prompt_tokens(self, call: LLMChat) -> list[int]:
        """The token ids the backend's chat template makes of ``call`` (tools included)."""
        engine = await self._b._ready()
        return await self.run_on_model_thread(self._b._format, engine, call)

    async def clear_cache(self) -> None:
        """Empty the KV cache: the next generation prefills its whole prompt."""
        engine = await self._b._ready()
        await self.run_on_model_thread(engine.clear)

    async def recompute(self, tokens: Sequence[int], prompt_len: int | None = None) -> int:
        """Evaluate ``tokens`` from an empty cache the way a resume without KV does (the
        first ``prompt_len`` — default all — in n_batch chunks, the rest one by one) and
        return the greedy next token. Time it to get the cost a KV snapshot saves."""
        engine = await self._b._ready()
        n = len(tokens) if prompt_len is None else prompt_len

        def recompute() -> int:
            engine.clear()
            return engine.step(n, list(tokens), SamplingParams(), 0).token

        return await self.run_on_model_thread(recompute)

    # -- llama-cpp-python directly -------------------------------------------------------

    async def reference_llama(self) -> Any:
        """A ``llama_cpp.Llama`` on the same GGUF with the backend's n_ctx, n_batch,
        n_threads and buffer settings, loaded once (freed by :meth:`aclose`). Call it only
        through :meth:`run_on_model_thread`."""
        if self._ref is None:
            st = await self.settings()
            load = LoadOptions(model_path=st.model_path, n_ctx=self._b.options.n_ctx,
                               n_threads=st.n_threads, n_batch=st.n_batch, verbose=False,
                               use_extra_bufts=st.use_extra_bufts)
            self._ref = await self._b._run(load_engine, load)
        return self._ref.llama

    async def reference_completion(self, call: LLMChat) -> Reference:
        """Greedy ``create_completion`` of llama-cpp-python on ``call``'s prompt tokens,
        from an empty cache, with the call's ``max_tokens`` (default: the backend's) and
        stop strings. Only greedy calls (``temperature=0``) are comparable: at other
        temperatures the backend samples in its own resumable way."""
        if call.temperature != 0:
            raise ValueError("reference_completion compares greedy calls: set temperature=0")
        llama = await self.reference_llama()
        prompt = await self.prompt_tokens(call)
        max_tokens = call.max_tokens or self._b.options.max_tokens

        def complete() -> Reference:
            llama.reset()
            r = llama.create_completion(prompt, max_tokens=max_tokens, temperature=0.0,
                                        repeat_penalty=1.0, stop=call.stop or [])
            choice = r["choices"][0]
            return Reference(choice["text"], int(r["usage"]["completion_tokens"]),
                             str(choice["finish_reason"]))

        return await self.run_on_model_thread(complete)
