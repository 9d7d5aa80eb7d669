"""The embedding model: WordLlama ``l2_supercat`` (256 dimensions) from its own wheel.

WordLlama's loader looks for a tokenizer under ``<package>/tokenizer/`` and then under
``<cache_dir>/tokenizers/``, downloading it when neither exists, while the wheel ships it
in ``<package>/tokenizers/``. Passing the installed package directory as ``cache_dir``
makes the second place the wheel's own file (weights are found in ``<package>/weights/``
first), and ``disable_download=True`` turns any missing file into an error instead of a
network call.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import numpy as np

from aios.errors import MemoryStoreError

__all__ = ["DIM", "MODEL", "Embedder", "load_embedder"]

MODEL = "wordllama-l2_supercat-256"
DIM = 256


class Embedder:
    """Texts to unit float32 vectors (``DIM`` wide). Thread-safe for reads; call it from a
    worker thread (``anyio.to_thread``), never on the event loop."""

    name = MODEL
    dim = DIM

    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text; a text with no token gets the zero vector (WordLlama's
        own ``norm=True`` would divide 0 by 0)."""
        out = np.asarray(self._model.embed(texts, norm=False), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: np.ndarray = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
        return unit


@functools.cache
def load_embedder() -> Embedder:
    """The WordLlama model from the installed ``wordllama`` package, BLAS on one thread,
    loaded once per process (about 2 s; the model is read-only, so stores share it).
    MemoryStoreError if a file is missing (nothing is downloaded)."""
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as exc:
        raise MemoryStoreError(f"memory store 'vec' needs the wordllama package: {exc}"
                               ) from None
    package = Path(wordllama.__file__).parent
    try:
        model = WordLlama.load(config="l2_supercat", dim=DIM, cache_dir=package,
                               disable_download=True)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise MemoryStoreError(f"memory store 'vec': the WordLlama model shipped in "
                               f"{package} cannot be loaded ({exc}); nothing is downloaded"
                               ) from None
    return Embedder(model)
