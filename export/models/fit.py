"""The mini-batch training loop and optimizer shared by every model in ``export``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass
class SparseEmbeddingConfig:
    """Which id-embedding tables train with sparse gradients, and how fast (see :class:`EmbeddingAdam`).

    ``lr_scale``: SparseAdam moves a row only in steps whose batch holds it, while dense Adam's momentum
    keeps moving it for ~1 / (1 - beta1) = 10 steps after each touch, so a rarely seen row moved about 10x
    less. Measured on the synthetic catalogue (1 epoch, 300k rows): two-tower exact recall@200 at 10^5
    items dense 0.286, sparse x1 0.237, x10 0.339; at 10^6 dense 0.109 (132 s), x1 0.105, x10 0.115 (10 s);
    MMoE student click AUC at 10^6 dense 0.620, x1 0.596, x10 0.638.
    """

    min_rows: int = 100_000    # tables with at least this many rows go sparse; 0: every table stays dense
    lr_scale: float = 10.0     # SparseAdam lr = model lr x this

    def validate(self) -> None:
        if self.min_rows < 0 or not self.lr_scale > 0:
            raise ValueError("sparse: min_rows must be >= 0 and lr_scale > 0")


class EmbeddingAdam:
    """Adam over a model's dense parameters plus SparseAdam over its large id-embedding tables.

    A dense Adam step reads and writes every row of every table (and backward materialises a dense
    gradient of the table's size), so at 10^6 items one step costs ~10^8 float updates while a batch
    touches a few thousand rows. Tables with at least ``sparse.min_rows`` rows are switched to sparse
    gradients (``nn.Embedding.sparse``) and stepped by ``torch.optim.SparseAdam`` ("lazy" Adam: only the
    rows in the batch, and their moments, move) at ``lr * sparse.lr_scale``. SparseAdam has no weight
    decay, so those tables get none. Tables under the threshold (every table of ML-100K) train exactly as
    with plain Adam (AdamW when ``decoupled``).
    """

    def __init__(self, modules: Iterable[nn.Module], lr: float, weight_decay: float = 0.0,
                 sparse: SparseEmbeddingConfig | None = None, decoupled: bool = False) -> None:
        sparse = sparse or SparseEmbeddingConfig(min_rows=0)
        sparse.validate()
        modules = list(modules)
        sparse_ids: set[int] = set()
        if sparse.min_rows > 0:
            for module in modules:
                for m in module.modules():
                    if isinstance(m, nn.Embedding) and m.num_embeddings >= sparse.min_rows:
                        m.sparse = True
                        sparse_ids.add(id(m.weight))
        seen: set[int] = set()
        dense_params, sparse_params = [], []
        for module in modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    (sparse_params if id(p) in sparse_ids else dense_params).append(p)
        adam = torch.optim.AdamW if decoupled else torch.optim.Adam
        self.optimizers: list[torch.optim.Optimizer] = []
        if dense_params:
            self.optimizers.append(adam(dense_params, lr=lr, weight_decay=weight_decay))
        if sparse_params:
            self.optimizers.append(torch.optim.SparseAdam(sparse_params, lr=lr * sparse.lr_scale))
        self.n_sparse_tables = len(sparse_params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


def fit(opt: torch.optim.Optimizer | EmbeddingAdam, n: int, batch_size: int, epochs: int, gen: torch.Generator,
        batch_loss: Callable[[torch.Tensor], torch.Tensor | None],
        on_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Shuffle ``n`` rows each epoch and step ``opt`` on ``batch_loss(row_indices)``.

    ``batch_loss`` returns None to skip a batch; ``on_epoch(epoch)`` (1-based) runs after each epoch.
    Returns the mean loss of each epoch.
    """
    losses = []
    for epoch in range(epochs):
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
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return losses
