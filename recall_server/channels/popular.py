"""Most popular items in the training period: coverage, and the fallback when nothing else fires.

The list (``popular.npy``) is core state: the gateway's own fallback reads it too.
"""
from __future__ import annotations

import numpy as np

from recall_server.channels import RecallQuery, ranked


def recall(state, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` popular items plus as many as may be excluded."""
    return ranked(state.popular[: k + query.exclude.size])
