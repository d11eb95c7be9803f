"""DIN-style target attention inside the MMoE (issue 30, candidate (b)): the candidate attends to the user's
last N items.

The MMoE (``export.models.mmoe``) reads no id embeddings (``use_ids`` off: learned ids over-fitted), so the
attention reads fixed item vectors: a frozen table (the sequence encoder's, ``export.models.sequence``), row 0
the padding. Per row, with ``c`` the candidate's vector and ``h_1..h_N`` the history's (most recent last):

    a_j  = softmax_j( (c Wq) . (h_j Wk + p_j) / sqrt(a) )      over the non-padding history items
    out  = [ sum_j a_j (h_j Wv),  c . sum_j a_j h_j ]          (``out_dim`` + 1 columns)

``out`` joins the MMoE's input beside the embeddings and the dense features. The keys and values depend on the
history only, so serving could compute them once per request; here they are computed per row.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.rank_features import RankSchema
from export.models.fit import EmbeddingAdam, fit
from export.models.mmoe import MMoE, MMoEConfig, fit_dense_scaling, mmoe_loss, scale_dense
from export.models.field_codes import bag_weights, field_rows


class TargetAttentionMMoE(MMoE):
    """An MMoE whose input also holds the candidate's attention over the history (module docstring)."""

    def __init__(self, schema: RankSchema, cfg: MMoEConfig, item_vecs: np.ndarray, history_len: int,
                 n_dense: int = 0, att_dim: int = 16, out_dim: int = 8) -> None:
        super().__init__(schema, cfg, n_dense=n_dense)
        d = item_vecs.shape[1]
        self.register_buffer("item_table", torch.cat([torch.zeros(1, d), torch.as_tensor(item_vecs, dtype=torch.float32)]))
        self.att_dim = att_dim
        self.wq = nn.Linear(d, att_dim, bias=False)
        self.wk = nn.Linear(d, att_dim, bias=False)
        self.wv = nn.Linear(d, out_dim, bias=False)
        self.pos = nn.Parameter(torch.zeros(history_len, att_dim))
        n_in = (self.n_fields + 1) * cfg.embed_dim + n_dense + out_dim + 1
        self.experts = nn.Linear(n_in, cfg.n_experts * cfg.expert_hidden)
        self.gates = nn.Linear(n_in, self.n_tasks * cfg.n_experts)

    def set_item_vectors(self, item_vecs: np.ndarray) -> None:
        """Swap the frozen table (another cut's encoder) in place."""
        self.item_table.copy_(torch.cat([torch.zeros(1, item_vecs.shape[1]),
                                         torch.as_tensor(item_vecs, dtype=torch.float32)]))

    def attention(self, item_code: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """[B, out_dim + 1] for candidate codes [B] and history codes [B, N]."""
        n_rows = self.item_table.shape[0]
        c = self.item_table[torch.where((item_code >= 0) & (item_code < n_rows), item_code, 0)]
        h = self.item_table[torch.where((hist >= 0) & (hist < n_rows), hist, 0)]          # [B, N, d]
        keys = self.wk(h) + self.pos[-hist.shape[1]:]
        logits = (keys @ self.wq(c).unsqueeze(-1)).squeeze(-1) / math.sqrt(self.att_dim)  # [B, N]
        logits = logits.masked_fill(hist <= 0, -1e4)
        att = torch.softmax(logits, dim=-1) * (hist > 0)
        pooled = (att.unsqueeze(-1) * h).sum(1)                                          # [B, d]
        return torch.cat([self.wv(pooled), (pooled * c).sum(-1, keepdim=True)], dim=1)

    def logits(self, sparse: torch.Tensor, bag: torch.Tensor, dense: torch.Tensor | None = None,
               hist: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(field_rows(self, sparse))
        bag_emb = bag_weights(bag) @ self.bag_embed if self.n_bag > 0 else torch.zeros_like(emb[:, 0])
        x = torch.cat([emb, bag_emb.unsqueeze(1)], dim=1).flatten(1)
        if self.n_dense:
            x = torch.cat([x, scale_dense(self, dense)], dim=1)
        x = torch.cat([x, self.attention(sparse[:, 1], hist)], dim=1)
        ex = self.drop(F.relu(self.experts(x))).reshape(-1, self.n_experts, self.expert_hidden)
        g = torch.softmax(self.gates(x).reshape(-1, self.n_tasks, self.n_experts), dim=-1)
        mixed = (g.unsqueeze(-1) * ex.unsqueeze(1)).sum(2)
        return torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)


@torch.no_grad()
def din_probs(model: TargetAttentionMMoE, sparse: np.ndarray, bag: np.ndarray, dense: np.ndarray,
              hist_rows: np.ndarray, batch: int = 16384) -> np.ndarray:
    """Task probabilities [R, T]; ``hist_rows`` int [R, N] (each row's history codes)."""
    was = model.training
    model.eval()
    out = []
    for s in range(0, sparse.shape[0], batch):
        sl = slice(s, s + batch)
        out.append(torch.sigmoid(model.logits(torch.as_tensor(np.ascontiguousarray(sparse[sl], np.int64)),
                                              torch.as_tensor(np.ascontiguousarray(bag[sl], np.float32)),
                                              torch.as_tensor(np.ascontiguousarray(dense[sl], np.float32)),
                                              torch.as_tensor(np.ascontiguousarray(hist_rows[sl], np.int64)))))
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, model.n_tasks), np.float32)


def train_din(schema: RankSchema, cfg: MMoEConfig, examples: tuple, dense: np.ndarray, hist_rows: np.ndarray,
              item_vecs: np.ndarray, on_epoch=None) -> tuple[TargetAttentionMMoE, dict]:
    """Train the target-attention MMoE on labelled examples (as ``train_mmoe`` without a teacher)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sparse, bag, labels = examples
    x, b = torch.from_numpy(sparse), torch.from_numpy(bag)
    d = torch.from_numpy(np.ascontiguousarray(dense, np.float32))
    hh = torch.from_numpy(np.ascontiguousarray(hist_rows, np.int64))
    y = {k: torch.from_numpy(v) for k, v in labels.items()}
    model = TargetAttentionMMoE(schema, cfg, item_vecs, hist_rows.shape[1], n_dense=dense.shape[1])
    fit_dense_scaling(model, dense)
    opt = EmbeddingAdam([model], cfg.lr, cfg.weight_decay, cfg.sparse)
    model.train()
    losses = fit(opt, x.shape[0], cfg.batch_size, cfg.epochs, gen, lambda idx: mmoe_loss(
        model.logits(x[idx], b[idx], d[idx], hh[idx]), {k: v[idx] for k, v in y.items()}),
        on_epoch=(lambda epoch: on_epoch(model, epoch)) if on_epoch else None)
    model.eval()
    return model, {"epoch_loss": losses, "seconds": round(time.perf_counter() - t0, 2)}
