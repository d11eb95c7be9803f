"""Two-tower retrieval model: a user tower and an item tower in one space.

Both towers output L2-normalised vectors, so the recall server's inner
product is a cosine similarity. The model is trained on implicit feedback
(every training interaction is a positive) with an in-batch sampled softmax
and log-Q correction for item popularity.

Cold start: ids are randomly replaced by the unknown code 0 during training,
so a user or item the model has never seen (code 0 at serving time) still
gets a useful vector from its categorical features (and, for users, history).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.data.dataset import Dataset, Interactions
from export.models.field_codes import bag_weights, field_rows, register_field_offsets, valid_codes
from export.models.fit import EmbeddingAdam, SparseEmbeddingConfig, fit
from export.models.onnx_export import export_onnx
from export.data.history import history_before


@dataclass
class TwoTowerConfig:
    """Hyper-parameters of the two-tower model and its training."""

    dim: int = 64                 # output (retrieval) dimension, also the embedding size
    hidden: int = 128             # hidden width of each tower's MLP
    history_len: int = 20         # items in the user's history window
    epochs: int = 6
    batch_size: int = 512
    lr: float = 3e-3
    temperature: float = 0.05
    weight_decay: float = 0.0
    sparse: SparseEmbeddingConfig = field(default_factory=SparseEmbeddingConfig)  # large id tables
    # rows of the user sample the towers train on; 0: ExportConfig.max_train_rows. At 10^6 items most items
    # have one or two rows in all, so the towers need more of the log than the rankers (issue 16)
    max_train_rows: int = 0
    id_dropout: float = 0.1       # probability of replacing an id by the unknown code 0
    logq_correction: bool = True  # subtract log(item sampling prob) from in-batch logits
    # mixed negative sampling: this many items drawn uniformly from the catalogue per batch join the in-batch
    # negatives, so rarely sampled items also meet users as negatives (0: in-batch negatives only)
    uniform_negatives: int = 0
    seed: int = 0


class _FieldEmbedding(nn.Module):
    """One embedding per categorical field, stored as a single offset table."""

    def __init__(self, vocab: list[int], dim: int) -> None:
        super().__init__()
        self.n_fields = len(vocab)
        self.table = nn.Embedding(max(register_field_offsets(self, vocab), 1), dim)
        nn.init.normal_(self.table.weight, std=0.05)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 [B, Fn] → float32 [B, Fn * dim]."""
        e = self.table(field_rows(self, codes))
        return e.flatten(1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class UserTower(nn.Module):
    """User id, user categorical fields and item history → unit vector."""

    def __init__(self, n_users: int, user_cat_vocab: list[int], n_items: int, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.user_cat_vocab = [int(v) for v in user_cat_vocab]
        self.history_len = int(cfg.history_len)
        d = cfg.dim
        self.user_id = nn.Embedding(self.n_users + 1, d)
        nn.init.normal_(self.user_id.weight, std=0.05)
        self.user_cat = _FieldEmbedding(self.user_cat_vocab, d)
        # The history has its own item table: the item tower's ids are a
        # different role (candidate vs context) and sharing would couple them.
        self.hist_item = nn.Embedding(self.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.hist_item.weight, std=0.05)
        with torch.no_grad():
            self.hist_item.weight[0].zero_()
        self.mlp = _mlp(d * (2 + len(self.user_cat_vocab)), cfg.hidden, d)

    def forward(self, user_code: torch.Tensor, user_cat: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """user_code int64 [B], user_cat int64 [B, Fu], hist int64 [B, N] → float32 [B, dim], unit norm."""
        uid = self.user_id(valid_codes(user_code, self.n_users + 1))
        cat = self.user_cat(user_cat)
        h = valid_codes(hist, self.n_items + 1)
        mask = (h > 0).to(torch.float32).unsqueeze(-1)
        # Masked mean: padding is excluded from the count; an empty history
        # gives 0 / 1 = zeros instead of NaN.
        hist_mean = (self.hist_item(h) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out = self.mlp(torch.cat([uid, cat, hist_mean], dim=1))
        return F.normalize(out, dim=-1)


class ItemTower(nn.Module):
    """Item id, item categorical fields, multi-hot bag and (when the data has one) the dense content vector
    (``Dataset.item_content``, through a linear layer) → unit vector. The content vector makes the features-only
    vector (id code 0) of every item its own, where categorical fields alone give many items one vector.

    After :func:`train_two_tower`, ``train_counts`` (int64 [n_items]) holds each item's rows in the training
    sample: an item with none kept its random id embedding."""

    def __init__(self, n_items: int, item_cat_vocab: list[int], n_bag: int, cfg: TwoTowerConfig,
                 content_dim: int = 0) -> None:
        super().__init__()
        self.train_counts: np.ndarray | None = None   # set by train_two_tower
        self.n_items = int(n_items)
        self.item_cat_vocab = [int(v) for v in item_cat_vocab]
        self.n_bag = int(n_bag)
        self.content_dim = int(content_dim)
        d = cfg.dim
        self.item_id = nn.Embedding(self.n_items + 1, d)
        nn.init.normal_(self.item_id.weight, std=0.05)
        self.item_cat = _FieldEmbedding(self.item_cat_vocab, d)
        # Bag embedding = mean of the embeddings of the bag's active entries,
        # i.e. a bias-free linear layer over the count-normalised multi-hot.
        self.bag = nn.Linear(max(self.n_bag, 1), d, bias=False)
        self.mlp = _mlp(d * (2 + len(self.item_cat_vocab) + (self.content_dim > 0)), cfg.hidden, d)
        # built last, and only with content, so a tower without it initialises as it always did
        self.content = nn.Linear(self.content_dim, d) if self.content_dim > 0 else None

    def forward(self, item_code: torch.Tensor, item_cat: torch.Tensor, item_bag: torch.Tensor,
                item_content: torch.Tensor | None = None) -> torch.Tensor:
        """item_code int64 [B], item_cat int64 [B, Fi], item_bag float32 [B, G], item_content float32 [B, C]
        (required when the tower has ``content_dim``) → float32 [B, dim], unit norm."""
        iid = self.item_id(valid_codes(item_code, self.n_items + 1))
        cat = self.item_cat(item_cat)
        if self.n_bag > 0:
            bag = self.bag(bag_weights(item_bag))
        else:
            bag = torch.zeros_like(iid)
        parts = [iid, cat, bag]
        if self.content is not None:
            parts.append(self.content(item_content))
        out = self.mlp(torch.cat(parts, dim=1))
        return F.normalize(out, dim=-1)


def content_dim(ds: Dataset) -> int:
    """Width of the dataset's item content vectors (0: it has none)."""
    content = ds.item_content
    return 0 if content is None else int(content.shape[1])


def item_content(ds: Dataset) -> torch.Tensor | None:
    """The dataset's item content vectors as float32 [n_items, C], or None."""
    content = ds.item_content
    if content is None:
        return None
    if content.shape[0] != ds.n_items:
        raise ValueError(f"item_content has {content.shape[0]} rows, dataset has {ds.n_items} items")
    return torch.from_numpy(np.ascontiguousarray(content, np.float32))


def in_batch_loss(u_vec: torch.Tensor, i_vec: torch.Tensor, i: torch.Tensor, cand: torch.Tensor,
                  log_q: torch.Tensor, cfg: TwoTowerConfig, n_items: int) -> torch.Tensor:
    """Softmax over the batch's positives ``i`` (then any uniform negatives: ``cand`` is ``i`` followed by them),
    row r's label its own positive; ``i_vec`` the vectors of ``cand``. With ``logq_correction`` each logit
    loses the log of its candidate's expected count among the negatives (popular items are drawn as in-batch
    negatives more often than the softmax assumes)."""
    b = i.numel()
    logits = u_vec @ i_vec.T / cfg.temperature
    if cfg.logq_correction and cfg.uniform_negatives > 0:
        # log of each candidate's expected count among the batch's negatives, over both draws
        q = torch.exp(log_q[cand]) * b + cfg.uniform_negatives / n_items
        logits = logits - torch.log(q).unsqueeze(0)
    elif cfg.logq_correction:
        logits = logits - log_q[i].unsqueeze(0)
    # Another row (or drawn negative) with the same positive item is not a negative.
    dup = i.unsqueeze(1) == cand.unsqueeze(0)
    dup[:, :b].fill_diagonal_(False)
    return F.cross_entropy(logits.masked_fill(dup, float("-inf")), torch.arange(b))


def _drop_ids(codes: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace each code by 0 with probability ``p`` (cold-start training)."""
    if p <= 0:
        return codes
    keep = torch.rand(codes.shape, generator=gen) >= p
    return codes * keep


def train_two_tower(
    ds: Dataset, train: Interactions, cfg: TwoTowerConfig
) -> tuple[UserTower, ItemTower, dict]:
    """Train both towers on ``train`` (every row is a positive).

    Each row's user input is the user's history strictly before that row
    (:func:`export.data.history.history_before`), so training matches serving,
    where the tower sees the history up to "now". Loss: softmax over the
    in-batch items with temperature, minus log of each item's sampling
    probability (its share of training rows) so popular items, which appear
    as in-batch negatives more often, are not pushed down for it. Other rows
    whose positive is the same item are masked out as negatives.

    Returns the towers in eval mode and a log with per-epoch mean loss.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    user_tower = UserTower(ds.n_users, ds.user_cat_vocab, ds.n_items, cfg)
    item_tower = ItemTower(ds.n_items, ds.item_cat_vocab, len(ds.item_bag_names), cfg, content_dim(ds))
    opt = EmbeddingAdam([user_tower, item_tower], cfg.lr, cfg.weight_decay, cfg.sparse, decoupled=True)

    users = torch.from_numpy(train.user.astype(np.int64))
    items = torch.from_numpy(train.item.astype(np.int64))
    hist = torch.from_numpy(history_before(train, ds.n_users, cfg.history_len).astype(np.int64))
    user_cat = torch.from_numpy(ds.user_cat.astype(np.int64)).reshape(ds.n_users, -1)
    item_cat = torch.from_numpy(ds.item_cat.astype(np.int64)).reshape(ds.n_items, -1)
    item_bag = torch.from_numpy(ds.item_bag.astype(np.float32)).reshape(ds.n_items, -1)
    content = item_content(ds)
    counts = np.bincount(train.item, minlength=ds.n_items).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / max(len(train), 1)).astype(np.float32))

    n = len(train)
    log: dict = {"epoch_loss": [], "n_examples": n}
    user_tower.train()
    item_tower.train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor | None:
        if idx.numel() < 2:
            return None  # a softmax over one item has nothing to learn
        u, i = users[idx], items[idx]
        u_vec = user_tower(_drop_ids(u + 1, cfg.id_dropout, gen), user_cat[u], hist[idx])
        i_vec = item_tower(_drop_ids(i + 1, cfg.id_dropout, gen), item_cat[i], item_bag[i],
                           None if content is None else content[i])
        cand = i
        if cfg.uniform_negatives > 0:
            extra = torch.randint(0, ds.n_items, (cfg.uniform_negatives,), generator=gen)
            cand = torch.cat([i, extra])
            i_vec = torch.cat([i_vec, item_tower(_drop_ids(extra + 1, cfg.id_dropout, gen), item_cat[extra],
                                                 item_bag[extra], None if content is None else content[extra])])
        return in_batch_loss(u_vec, i_vec, i, cand, log_q, cfg, ds.n_items)

    log["epoch_loss"] = fit(opt, n, cfg.batch_size, cfg.epochs, gen, batch_loss)
    user_tower.eval()
    item_tower.eval()
    # which items' id embeddings were trained at all (export.recall.ann_index keeps the others out of the index)
    item_tower.train_counts = counts.astype(np.int64)
    log["seconds"] = time.perf_counter() - t0
    return user_tower, item_tower, log


@torch.no_grad()
def item_embeddings(item_tower: ItemTower, ds: Dataset, batch_size: int = 8192, drop_ids: bool = False) -> np.ndarray:
    """Vectors of all items (row = dense item id): float32 [n_items, dim].

    ``drop_ids``: every item code is 0 (unknown), so a vector depends on the item's features only, as for
    an item the model never saw (content neighbours of new items).
    """
    was_training = item_tower.training
    item_tower.eval()
    codes = torch.arange(1, ds.n_items + 1, dtype=torch.int64)
    if drop_ids:
        codes = torch.zeros_like(codes)
    cat = torch.from_numpy(ds.item_cat.astype(np.int64)).reshape(ds.n_items, -1)
    bag = torch.from_numpy(ds.item_bag.astype(np.float32)).reshape(ds.n_items, -1)
    content = item_content(ds) if getattr(item_tower, "content", None) is not None else None
    out = [
        item_tower(codes[s:s + batch_size], cat[s:s + batch_size], bag[s:s + batch_size],
                   None if content is None else content[s:s + batch_size])
        for s in range(0, ds.n_items, batch_size)
    ]
    item_tower.train(was_training)
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, item_tower.mlp[-1].out_features), np.float32)


def user_inputs(ds: Dataset, history: np.ndarray) -> dict[str, np.ndarray]:
    """User-tower inputs for every user (row = dense user id).

    ``history`` is int32 [n_users, N] (e.g. :func:`export.data.history.last_n`).
    Keys match the exported ONNX input names; all arrays are int64.
    """
    if history.shape[0] != ds.n_users:
        raise ValueError(f"history has {history.shape[0]} rows, dataset has {ds.n_users} users")
    return {
        "user_code": np.arange(1, ds.n_users + 1, dtype=np.int64),
        "user_cat": ds.user_cat.astype(np.int64).reshape(ds.n_users, -1),
        "hist": history.astype(np.int64),
    }


@torch.no_grad()
def user_embeddings(user_tower: UserTower, inputs: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
    """Run the user tower over :func:`user_inputs`-style arrays: float32 [U, dim]."""
    was_training = user_tower.training
    user_tower.eval()
    code = torch.from_numpy(inputs["user_code"].astype(np.int64))
    cat = torch.from_numpy(inputs["user_cat"].astype(np.int64))
    hist = torch.from_numpy(inputs["hist"].astype(np.int64))
    out = [
        user_tower(code[s:s + batch_size], cat[s:s + batch_size], hist[s:s + batch_size])
        for s in range(0, code.shape[0], batch_size)
    ]
    user_tower.train(was_training)
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, user_tower.mlp[-1].out_features), np.float32)


def export_user_tower_onnx(user_tower: UserTower, path: str, n_user_fields: int, history_len: int) -> None:
    """Write the user tower as ONNX (opset 17, TorchScript exporter).

    Inputs: ``user_code`` int64 [B], ``user_cat`` int64 [B, Fu], ``hist`` int64
    [B, N]; output ``user_emb`` float32 [B, dim]; the batch axis is dynamic.
    """
    # Batch 2 with one padded history, so tracing sees the general case.
    dummy = (
        torch.tensor([1, 0], dtype=torch.int64),
        torch.ones((2, n_user_fields), dtype=torch.int64),
        torch.cat(
            [torch.ones((1, history_len), dtype=torch.int64), torch.zeros((1, history_len), dtype=torch.int64)]
        ),
    )
    export_onnx(user_tower, dummy, path, ["user_code", "user_cat", "hist"], ["user_emb"])
