"""DeepFM ranking model over the shared rank feature schema.

Inputs are exactly what :func:`common.rank_features.assemble` produces:
``sparse`` int64 [B, F] (one code per field) and ``bag`` float32 [B, G]
(multi-hot). The bag is treated as one more field whose embedding is the mean
of its active entries' embeddings. The output is a probability (the sigmoid
is inside the model) so the exported ONNX graph needs no post-processing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.rank_features import RankSchema, assemble, context_codes
from export.data.dataset import Dataset, Interactions
from export.models.field_codes import bag_weights, field_rows, register_field_offsets
from export.models.fit import EmbeddingAdam, SparseEmbeddingConfig, fit
from export.models.onnx_export import export_onnx


@dataclass
class DeepFMConfig:
    """Hyper-parameters of DeepFM and its training."""

    embed_dim: int = 16
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 2048
    lr: float = 2e-3
    weight_decay: float = 0.0
    sparse: SparseEmbeddingConfig = field(default_factory=SparseEmbeddingConfig)  # large id tables
    neg_per_pos: int = 1          # sampled unseen items per positive row
    min_positive_rating: float = 4.0
    seed: int = 0


class DeepFM(nn.Module):
    """First-order + FM second-order + DNN over F sparse fields and one bag field."""

    def __init__(self, schema: RankSchema, cfg: DeepFMConfig) -> None:
        super().__init__()
        self.n_fields = schema.n_fields
        self.n_bag = schema.n_bag
        k = cfg.embed_dim
        total = register_field_offsets(self, schema.field_vocab)  # one table for all fields
        self.embed = nn.Embedding(total, k)
        self.linear = nn.Embedding(total, 1)
        nn.init.normal_(self.embed.weight, std=0.01)
        nn.init.zeros_(self.linear.weight)
        self.bag_embed = nn.Parameter(torch.randn(max(self.n_bag, 1), k) * 0.01)
        self.bag_linear = nn.Parameter(torch.zeros(max(self.n_bag, 1)))
        self.bias = nn.Parameter(torch.zeros(()))
        layers: list[nn.Module] = []
        n_in = (self.n_fields + 1) * k
        for h in cfg.hidden:
            layers += [nn.Linear(n_in, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            n_in = h
        layers.append(nn.Linear(n_in, 1))
        self.dnn = nn.Sequential(*layers)

    def logits(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores float32 [B] (training uses these for a stable BCE)."""
        idx = field_rows(self, sparse)
        emb = self.embed(idx)                                    # [B, F, k]
        if self.n_bag > 0:
            # Weighted mean over the active entries; an empty bag gives 0 / 1 = 0.
            w = bag_weights(bag)                                 # [B, G]
            bag_emb = w @ self.bag_embed                         # [B, k]
            bag_lin = w @ self.bag_linear                        # [B]
        else:
            bag_emb = torch.zeros_like(emb[:, 0])
            bag_lin = torch.zeros_like(emb[:, 0, 0])
        fields = torch.cat([emb, bag_emb.unsqueeze(1)], dim=1)  # [B, F+1, k]
        first = self.linear(idx).sum(dim=(1, 2)) + bag_lin
        s = fields.sum(1)
        fm = 0.5 * (s * s - (fields * fields).sum(1)).sum(1)
        deep = self.dnn(fields.flatten(1)).squeeze(-1)
        return self.bias + first + fm + deep

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        """sparse int64 [B, F], bag float32 [B, G] → click probability float32 [B]."""
        return torch.sigmoid(self.logits(sparse, bag))


def _sample_unseen(
    users: np.ndarray, n_items: int, seen_keys: np.ndarray, rng: np.random.Generator, max_rounds: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """One uniform item per entry of ``users`` that the user never interacted with.

    Rejection sampling, vectorised per round. Returns (items, ok): entries
    still unresolved after ``max_rounds`` (a user who has seen nearly every
    item) have ok = False and must be dropped.
    """
    items = rng.integers(0, n_items, size=users.shape[0])
    todo = np.arange(users.shape[0])
    for _ in range(max_rounds):
        keys = users[todo].astype(np.int64) * n_items + items[todo]
        bad = todo[np.isin(keys, seen_keys)]
        if bad.size == 0:
            todo = bad
            break
        items[bad] = rng.integers(0, n_items, size=bad.size)
        todo = bad
    ok = np.ones(users.shape[0], dtype=bool)
    if todo.size:
        keys = users[todo].astype(np.int64) * n_items + items[todo]
        ok[todo[np.isin(keys, seen_keys)]] = False
    return items, ok


def make_rank_examples(
    ds: Dataset,
    inter: Interactions,
    schema: RankSchema,
    neg_per_pos: int,
    seed: int,
    min_positive_rating: float = 4.0,
    known: Interactions | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled ranking examples from an interaction log.

    Every row of ``inter`` becomes one example, label 1 when its rating is
    >= ``min_positive_rating`` and 0 otherwise (seen but disliked). Each
    positive row also yields ``neg_per_pos`` examples with label 0 for items
    the user never interacted with in ``known`` (default: ``inter`` itself; never
    pass rows the model may not know, such as the test part) (uniformly sampled), with the positive row's timestamp as context. Sampling depends
    only on ``seed``, so metrics are comparable across runs.

    Returns ``sparse`` int64 [M, F], ``bag`` float32 [M, G], ``label`` float32 [M];
    the first ``len(inter)`` rows are the log's rows in order, then the
    sampled negatives.
    """
    rng = np.random.default_rng(seed)
    label = (inter.rating >= min_positive_rating).astype(np.float32)
    users = inter.user.astype(np.int64)
    items = inter.item.astype(np.int64)
    ts = inter.timestamp.astype(np.int64)

    pos = np.flatnonzero(label > 0)
    neg_src = np.repeat(pos, neg_per_pos)
    # only what the model may know: a held-out row must not shape the training negatives (issue 11)
    all_inter = known if known is not None else inter
    seen_keys = np.unique(all_inter.user.astype(np.int64) * ds.n_items + all_inter.item.astype(np.int64))
    neg_items, ok = _sample_unseen(users[neg_src], ds.n_items, seen_keys, rng)
    neg_src, neg_items = neg_src[ok], neg_items[ok]

    u = np.concatenate([users, users[neg_src]])
    i = np.concatenate([items, neg_items])
    t = np.concatenate([ts, ts[neg_src]])
    y = np.concatenate([label, np.zeros(neg_src.shape[0], dtype=np.float32)])
    hour, weekday = context_codes(t)
    sparse, bag = assemble(
        schema,
        u + 1,
        ds.user_cat.reshape(ds.n_users, -1)[u],
        i + 1,
        ds.item_cat.reshape(ds.n_items, -1)[i],
        ds.item_bag.reshape(ds.n_items, -1)[i],
        hour,
        weekday,
    )
    return sparse, bag, y


def train_deepfm(
    ds: Dataset, train: Interactions, cfg: DeepFMConfig, schema: RankSchema, known: Interactions | None = None
) -> tuple[DeepFM, dict]:
    """Train DeepFM with BCE and Adam on :func:`make_rank_examples` of ``train`` (negatives avoid ``known``).

    Returns the model in eval mode and a log with per-epoch mean loss.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sparse, bag, label = make_rank_examples(
        ds, train, schema, cfg.neg_per_pos, cfg.seed, cfg.min_positive_rating, known=known
    )
    x = torch.from_numpy(sparse)
    b = torch.from_numpy(bag)
    y = torch.from_numpy(label)
    model = DeepFM(schema, cfg)
    opt = EmbeddingAdam([model], cfg.lr, cfg.weight_decay, cfg.sparse)
    n = y.shape[0]
    log: dict = {"epoch_loss": [], "n_examples": n, "positive_rate": float(label.mean()) if n else 0.0}
    model.train()
    log["epoch_loss"] = fit(opt, n, cfg.batch_size, cfg.epochs, gen,
                            lambda idx: F.binary_cross_entropy_with_logits(model.logits(x[idx], b[idx]), y[idx]))
    model.eval()
    log["seconds"] = time.perf_counter() - t0
    return model, log


@torch.no_grad()
def predict(model: DeepFM, sparse: np.ndarray, bag: np.ndarray, batch_size: int = 16384) -> np.ndarray:
    """Probabilities float32 [M] for assembled inputs, in eval mode."""
    was_training = model.training
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(sparse, dtype=np.int64))
    b = torch.from_numpy(np.ascontiguousarray(bag, dtype=np.float32))
    out = [model(x[s:s + batch_size], b[s:s + batch_size]) for s in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def export_deepfm_onnx(model: DeepFM, path: str, n_fields: int, n_bag: int) -> None:
    """Write DeepFM as ONNX (opset 17, TorchScript exporter).

    Inputs ``sparse`` int64 [B, F] and ``bag`` float32 [B, G]; output ``prob``
    float32 [B]; the batch axis is dynamic.
    """
    dummy = (torch.zeros((2, n_fields), dtype=torch.int64), torch.zeros((2, n_bag), dtype=torch.float32))
    export_onnx(model, dummy, path, ["sparse", "bag"], ["prob"])
