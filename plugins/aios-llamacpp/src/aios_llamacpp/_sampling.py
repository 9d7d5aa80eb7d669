"""Token sampling from a logits vector, deterministic per (seed, position).

Sampling is done here in numpy rather than by llama.cpp's sampler chain for two reasons:
the random draw for the token at completion position ``i`` depends only on ``(seed, i)``,
so a generation resumed at any token draws exactly what the uninterrupted one would have
drawn; and llama.cpp's sampler must not be called right after a state restore (it aborts
the process on some builds), which this module never needs.

This module must never touch the model: it sees one float vector and returns one id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SamplingParams", "sample"]

# Tokens whose logit is this far below the best one carry less than e^-50 of its weight
# (after temperature); dropping them keeps sorting cheap on a 50k vocabulary without
# changing any draw that matters.
_LOGIT_WINDOW = 50.0


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int = 0


def sample(logits: npt.NDArray[np.float32], params: SamplingParams, position: int) -> int:
    """Pick the next token. ``position`` is the index of that token in the completion."""
    if params.temperature <= 0.0:
        # Greedy; ties go to the lowest id (np.argmax returns the first maximum).
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / params.temperature
    best = float(x.max())
    ids = np.flatnonzero(x >= best - _LOGIT_WINDOW)
    vals = x[ids]
    # Highest logit first, ties by token id: a total order, so the result is reproducible.
    order = np.lexsort((ids, -vals))
    ids, vals = ids[order], vals[order]
    if params.top_k > 0:
        ids, vals = ids[: params.top_k], vals[: params.top_k]
    probs = np.exp(vals - vals[0])
    probs /= probs.sum()
    keep = len(probs)
    if params.top_p < 1.0:
        # Smallest prefix whose mass reaches top_p (at least one token).
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1)
    if params.min_p > 0.0:
        keep = min(keep, max(1, int(np.count_nonzero(probs >= params.min_p * probs[0]))))
    ids, probs = ids[:keep], probs[:keep]
    cdf = np.cumsum(probs)
    rng = np.random.default_rng([params.seed % (1 << 64), position])
    u = float(rng.random()) * float(cdf[-1])
    i = min(int(np.searchsorted(cdf, u, side="right")), len(ids) - 1)
    return int(ids[i])
