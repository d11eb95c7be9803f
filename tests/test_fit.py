"""export.models.fit.EmbeddingAdam: dense below the threshold, lazy sparse Adam above it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from export.models.fit import EmbeddingAdam, SparseEmbeddingConfig


class _Model(nn.Module):
    def __init__(self, n_rows: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ids = nn.Embedding(n_rows, 4)
        self.small = nn.Embedding(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, ids: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
        return self.head(self.ids(ids) + self.small(small)).squeeze(-1)


def _steps(model: _Model, opt, batches) -> None:
    for ids, small in batches:
        opt.zero_grad(set_to_none=True)
        model(ids, small).pow(2).mean().backward()
        opt.step()


def _batches(n_rows: int, n: int = 5):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, n_rows, (8,), generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(n)]


def test_below_threshold_matches_plain_adam():
    a, b = _Model(50), _Model(50)
    batches = _batches(50)
    _steps(a, torch.optim.Adam(a.parameters(), lr=0.01), batches)
    opt = EmbeddingAdam([b], 0.01, sparse=SparseEmbeddingConfig(min_rows=100))
    _steps(b, opt, batches)
    assert opt.n_sparse_tables == 0 and not b.ids.sparse
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_decoupled_matches_adamw():
    a, b = _Model(50), _Model(50)
    batches = _batches(50)
    _steps(a, torch.optim.AdamW(a.parameters(), lr=0.01, weight_decay=0.1), batches)
    _steps(b, EmbeddingAdam([b], 0.01, 0.1, SparseEmbeddingConfig(min_rows=0), decoupled=True), batches)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_large_table_goes_sparse_and_moves_only_batch_rows():
    model = _Model(1000)
    before = model.ids.weight.detach().clone()
    small_before = model.small.weight.detach().clone()
    opt = EmbeddingAdam([model], 0.01, sparse=SparseEmbeddingConfig(min_rows=1000, lr_scale=10.0))
    assert model.ids.sparse and not model.small.sparse and opt.n_sparse_tables == 1
    batches = _batches(1000, n=3)
    _steps(model, opt, batches)
    touched = torch.unique(torch.cat([ids for ids, _ in batches]))
    changed = torch.nonzero((model.ids.weight.detach() != before).any(1)).flatten()
    assert torch.equal(changed, touched)
    assert not torch.equal(model.small.weight.detach(), small_before)  # dense tables still train
    sparse_opt = [o for o in opt.optimizers if isinstance(o, torch.optim.SparseAdam)][0]
    assert sparse_opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_sparse_step_equals_one_lazy_adam_step():
    """The first step of lazy Adam moves each touched row by lr * scale * sign(grad) (m / sqrt(v) = ±1)."""
    model = _Model(1000)
    before = model.ids.weight.detach().clone()
    opt = EmbeddingAdam([model], 0.01, sparse=SparseEmbeddingConfig(min_rows=1000, lr_scale=3.0))
    ids, small = torch.tensor([5, 7]), torch.tensor([0, 1])
    opt.zero_grad()
    model(ids, small).sum().backward()
    grad = model.ids.weight.grad.to_dense()[[5, 7]]
    opt.step()
    moved = model.ids.weight.detach()[[5, 7]] - before[[5, 7]]
    expected = -0.03 * torch.sign(grad)
    assert torch.allclose(moved, expected, atol=1e-6)


def test_shared_parameters_are_stepped_once():
    model = _Model(50)
    opt = EmbeddingAdam([model, model.head], 0.01)
    assert sum(len(g["params"]) for o in opt.optimizers for g in o.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("cfg", [SparseEmbeddingConfig(min_rows=-1), SparseEmbeddingConfig(lr_scale=0.0)])
def test_bad_config_is_refused(cfg):
    with pytest.raises(ValueError, match="min_rows must be >= 0 and lr_scale > 0"):
        EmbeddingAdam([_Model(10)], 0.01, sparse=cfg)
