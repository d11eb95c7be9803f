"""The mini-batch training loop shared by every model in ``export``."""
from __future__ import annotations

from typing import Callable

import torch


def fit(opt: torch.optim.Optimizer, n: int, batch_size: int, epochs: int, gen: torch.Generator,
        batch_loss: Callable[[torch.Tensor], torch.Tensor | None]) -> list[float]:
    """Shuffle ``n`` rows each epoch and step ``opt`` on ``batch_loss(row_indices)``.

    ``batch_loss`` returns None to skip a batch. Returns the mean loss of each epoch.
    """
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for start in range(0, n, batch_size):
            loss = batch_loss(perm[start:start + batch_size])
            if loss is None:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        losses.append(total / max(steps, 1))
    return losses
