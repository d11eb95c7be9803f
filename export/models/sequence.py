"""A user-sequence encoder (issue 30): the user's last N items in order → one user state per request.

Two encoders, both over the same input the snapshot serves (``history_len`` item codes, dense id + 1, most
recent LAST, left-padded with 0: ``export.data.history``):

* ``gru``    GRU4Rec: item embeddings → one GRU layer; the state is its last hidden state.
* ``sasrec`` SASRec: item + position embeddings → ``layers`` causal self-attention blocks; the state is the
             output at the last position.

The candidate's score is ``state · item_vec[c]``, the item vectors being the input embeddings (tied, as in
both papers). Training is next-item prediction: every training row is a target, its input the user's
``history_len`` items strictly before it (:func:`export.data.history.history_before`), so the model sees at
training exactly the window serving gives it. The loss is a softmax over the whole catalogue up to
``full_softmax_max_items`` items, above that over the batch's targets plus ``negatives`` uniformly drawn items
(a sampled softmax with the accidental hits masked).

Serving encodes once per request (``state`` from the history) and scores candidates with one gather and one
matrix-vector product (``common.sequence_features.SequenceScorer.scores``); the ONNX graph holds the encoder only.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.data.dataset import Interactions
from export.data.history import history_before, last_n
from export.models.fit import EmbeddingAdam, SparseEmbeddingConfig, fit
from export.models.onnx_export import export_onnx

KINDS = ("gru", "sasrec", "none")   # "none": no sequence encoder, no seq_score column


@dataclass
class SequenceConfig:
    """The sequence encoder and its training (``[sequence]`` in the export config)."""

    # "gru" (GRU4Rec), "sasrec" or "none". GRU: on ML-100K validation (3 seeds) its score as a rank feature
    # gained +0.0036 NDCG@10 at 2.5 SE on the rank row and +0.0048 at 2.7 SE on the final list; SASRec +0.0047
    # (3.2 SE) on the rank row but not better in every seed on the final list, at twice the encoding cost
    # (docs/results/2026-12-06-sequence-ranking.md)
    kind: str = "gru"
    gate: bool = True               # serve the column only where it pays on validation (export.ranking.sequence)
    dim: int = 64
    history_len: int = 20           # the window it reads: at most the snapshot's history_len (two_tower.history_len)
    layers: int = 1                 # sasrec blocks
    heads: int = 1                  # sasrec attention heads
    dropout: float = 0.2
    epochs: int = 8                 # validation next-item NDCG@10 peaked at 7-9 (GRU) and levelled from 6 (SASRec)
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    full_softmax_max_items: int = 50_000
    negatives: int = 2048           # sampled-softmax negatives per batch above full_softmax_max_items
    sparse: SparseEmbeddingConfig = field(default_factory=SparseEmbeddingConfig)   # large item tables
    seed: int = 0
    # torch threads while the encoder trains (the export's ``threads`` again afterwards): a GRU step's ops are
    # too small to split, and two threads spin at every barrier when a neighbour holds a core. Measured on the
    # 2-core VM at load 5: 0.07 s wall per batch of 256 with 1 thread against 0.16-0.21 s with 2; inside a full
    # export at load 10-15, 2 threads took ~70 min for the two cuts' encoders
    threads: int = 1

    def validate(self) -> None:
        self.sparse.validate()
        if self.kind not in KINDS:
            raise ValueError(f"sequence.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.dim < 1 or self.history_len < 1 or self.layers < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError("sequence: dim, history_len, layers, heads must be >= 1 and heads must divide dim")
        if self.threads < 1:
            raise ValueError(f"sequence.threads must be >= 1, got {self.threads}")
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ValueError("sequence: epochs >= 1, batch_size >= 2 and lr > 0")


class _Block(nn.Module):
    """One pre-norm causal self-attention block (written out: plain MatMuls in ONNX)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)   # [B, h, n, d/h] each
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h) + bias, dim=-1)
        x = x + self.drop(self.out((att @ v).transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """``hist`` int64 [B, L] item codes (most recent last, 0 = padding) → ``state`` float32 [B, dim]."""

    def __init__(self, n_items: int, cfg: SequenceConfig) -> None:
        super().__init__()
        self.kind, self.dim, self.history_len = cfg.kind, cfg.dim, cfg.history_len
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(cfg.dim))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.kind == "gru":
            self.gru = nn.GRU(cfg.dim, cfg.dim, batch_first=True)
        else:
            self.pos_emb = nn.Parameter(torch.randn(cfg.history_len, cfg.dim) * 0.02)
            self.blocks = nn.ModuleList([_Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers)])
            self.norm = nn.LayerNorm(cfg.dim)
            n = cfg.history_len
            # additive attention masks (constants in the graph): no key after the query; padding keys closed,
            # except a query's own position (a padded query row would otherwise be all -inf, NaN)
            self.register_buffer("causal", torch.triu(torch.full((n, n), -1e9), diagonal=1), persistent=False)
            self.register_buffer("not_self", 1.0 - torch.eye(n), persistent=False)

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.item_emb(hist))                                 # [B, L, d]
        if self.kind == "gru":
            out, _ = self.gru(x)
            return out[:, -1]
        n = hist.shape[1]
        x = x + self.pos_emb[-n:]
        pad = (hist == 0).to(x.dtype).unsqueeze(1).unsqueeze(1)            # [B, 1, 1, L] keys that are padding
        bias = self.causal[-n:, -n:] + pad * self.not_self[-n:, -n:] * -1e9
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)[:, -1]

    def item_vectors(self) -> torch.Tensor:
        """float32 [n_items, dim]: the item side of the score (row i is dense item i)."""
        return self.item_emb.weight[1:]

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """float32 [len(items), dim]: the item side for dense ids ``items``, through the embedding's forward, so a
        table trained sparse (``sparse.min_rows``) gets a sparse gradient; indexing ``item_vectors()`` would give
        it a dense one, which SparseAdam refuses."""
        return self.item_emb(items + 1)


def train_sequence(n_items: int, train: Interactions, n_users: int, cfg: SequenceConfig,
                   on_epoch=None) -> tuple[SequenceEncoder, dict]:
    """Train an encoder on ``train``'s ordered per-user histories (next-item prediction; see the module
    docstring). ``on_epoch(model, epoch)`` runs after each epoch, the model in eval mode. Returns the encoder
    in eval mode and a log (per-epoch loss, rows, seconds)."""
    cfg.validate()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = SequenceEncoder(n_items, cfg)
    opt = EmbeddingAdam([model], cfg.lr, cfg.weight_decay, cfg.sparse, decoupled=True)
    hist = history_before(train, n_users, cfg.history_len)
    rows = np.flatnonzero(hist[:, -1] > 0)            # a target with no history teaches nothing about sequences
    hist_t = torch.from_numpy(hist[rows].astype(np.int64))
    target = torch.from_numpy(train.item[rows].astype(np.int64))
    full = n_items <= cfg.full_softmax_max_items
    all_items = torch.arange(n_items)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor | None:
        if idx.numel() < 2:
            return None
        state = model(hist_t[idx])
        y = target[idx]
        if full:
            return F.cross_entropy(state @ model.item_rows(all_items).T, y)
        neg = torch.randint(0, n_items, (cfg.negatives,), generator=gen)
        cand = torch.cat([y, neg])
        logits = state @ model.item_rows(cand).T
        hit = y.unsqueeze(1) == cand.unsqueeze(0)
        hit[:, :y.numel()].fill_diagonal_(False)
        return F.cross_entropy(logits.masked_fill(hit, float("-inf")), torch.arange(y.numel()))

    def epoch_done(epoch: int) -> None:
        if on_epoch is not None:
            model.eval()
            on_epoch(model, epoch)
            model.train()

    model.train()
    losses = fit(opt, int(rows.size), cfg.batch_size, cfg.epochs, gen, batch_loss, epoch_done)
    model.eval()
    return model, {"kind": cfg.kind, "dim": cfg.dim, "epoch_loss": [round(x, 4) for x in losses],
                   "n_examples": int(rows.size), "softmax": "full" if full else f"sampled ({cfg.negatives})",
                   "seconds": round(time.perf_counter() - t0, 2)}


def user_states(model: SequenceEncoder, hist: np.ndarray, batch: int = 4096) -> np.ndarray:
    """float32 [U, dim]: the state of each history row (codes, most recent last)."""
    out = []
    with torch.inference_mode():
        for s in range(0, hist.shape[0], batch):
            out.append(model(torch.from_numpy(np.asarray(hist[s:s + batch], np.int64))).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def item_vectors(model: SequenceEncoder) -> np.ndarray:
    """float32 [n_items, dim] (a copy)."""
    with torch.no_grad():
        return model.item_vectors().detach().numpy().astype(np.float32).copy()



def next_item_ndcg(model: SequenceEncoder, history: Interactions, truth: Interactions, n_users: int,
                   history_len: int, k: int = 10, max_users: int = 0, seed: int = 0,
                   block_cells: int = 1 << 25) -> np.ndarray:
    """The encoder alone as a recommender: per user with ``truth`` rows (a seeded sample of ``max_users`` of
    them; 0: all), NDCG@k of its top-k over the whole catalogue (items in ``history`` excluded) against
    ``truth``'s items; float64 [users]. Scored in blocks of users of at most ``block_cells`` scores (128 MB):
    every user at once would be 368 GiB at 10^5 users and 10^6 items."""
    from export.evaluation.metrics import ndcg_per_user

    users = np.unique(truth.user)
    if max_users and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    states = user_states(model, last_n(history, n_users, history_len)[users])
    items = item_vectors(model)
    pos = np.full(n_users, -1, np.int64)
    pos[users] = np.arange(users.size)
    rows = pos[history.user]
    seen = rows >= 0
    seen_row, seen_item = rows[seen], history.item[seen].astype(np.int64)
    top = np.empty((users.size, min(k, items.shape[0])), np.int64)
    step = max(1, block_cells // max(1, items.shape[0]))
    for s in range(0, users.size, step):
        scores = states[s:s + step] @ items.T                          # [block, n_items]
        in_block = (seen_row >= s) & (seen_row < s + step)
        scores[seen_row[in_block] - s, seen_item[in_block]] = -np.inf
        part = np.argpartition(-scores, top.shape[1] - 1, axis=1)[:, :top.shape[1]]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top[s:s + step] = np.take_along_axis(part, order, axis=1)
    t_keep = pos[truth.user] >= 0
    t_user, t_item = truth.user[t_keep], truth.item[t_keep].astype(np.int64)
    order = np.argsort(t_user, kind="stable")
    t_user, t_item = t_user[order], t_item[order]
    indptr = np.r_[np.searchsorted(t_user, users), t_user.size].astype(np.int64)
    return ndcg_per_user(top, indptr, t_item, k)


def export_sequence_onnx(model: SequenceEncoder, path: str) -> None:
    """The encoder as ONNX: ``hist`` int64 [batch, history_len] → ``state`` float32 [batch, dim]."""
    dummy = torch.zeros((2, model.history_len), dtype=torch.int64)
    dummy[:, -3:] = 1
    with warnings.catch_warnings():   # the GRU's initial state is zeros of the batch's size: no h0 input needed
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        export_onnx(model, (dummy,), path, ["hist"], ["state"])


def export_sequence(model: SequenceEncoder, out_dir) -> None:
    """The served files in a snapshot layout: the encoder (``common.sequence_features.SEQUENCE_FILE``) and the
    item vectors (``SEQUENCE_ITEMS_FILE``)."""
    from pathlib import Path

    from common.sequence_features import SEQUENCE_FILE, SEQUENCE_ITEMS_FILE

    out = Path(out_dir)
    (out / SEQUENCE_FILE).parent.mkdir(parents=True, exist_ok=True)
    export_sequence_onnx(model, str(out / SEQUENCE_FILE))
    np.save(out / SEQUENCE_ITEMS_FILE, item_vectors(model), allow_pickle=False)
