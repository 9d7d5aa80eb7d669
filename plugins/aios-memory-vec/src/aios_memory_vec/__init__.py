"""Hybrid memory search for aios: BM25 fused with WordLlama vectors in sqlite-vec.

Importing this package pins the BLAS libraries that numpy may load to one thread (the
embedding of a few words gains nothing from more, and the kernel shares the machine with
its agents). The variables only take effect if numpy is not loaded yet;
:func:`aios_memory_vec.embed.load_embedder` also limits already-loaded pools through
``threadpoolctl`` when it is installed.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from aios_memory_vec.embed import Embedder, load_embedder  # noqa: E402
from aios_memory_vec.store import VecMemoryStore  # noqa: E402

__all__ = ["Embedder", "VecMemoryStore", "load_embedder"]
