"""Score fusion: one number per item from several task probabilities."""
from __future__ import annotations

import numpy as np


def weighted_product(task_scores: np.ndarray, task_names: list[str], weights: dict[str, float]) -> np.ndarray:
    """``prod_t p_t ** w_t`` computed as ``exp(sum_t w_t log p_t)``; [n, T] → [n] float32.

    Probabilities are clipped away from 0 so a single zero does not erase the other tasks.
    """
    w = np.array([weights.get(name, 0.0) for name in task_names], dtype=np.float32)
    logp = np.log(np.clip(task_scores, 1e-7, 1.0))
    return np.exp(logp @ w).astype(np.float32)
