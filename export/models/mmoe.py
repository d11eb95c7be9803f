"""Multi-task MMoE ranking model (click, like, rating) over the shared rank feature schema.

Inputs are what :func:`common.rank_features.assemble` produces, as for DeepFM:
``sparse`` int64 [B, F] and ``bag`` float32 [B, G] (the bag is one more field
whose embedding is the weighted mean of its active entries); and, for a model
built with ``n_dense > 0``, ``dense`` float32 [B, D]: the candidate's recall and
history features (:mod:`common.candidate_features`), standardised inside the
model with the training rows' mean and deviation, so ONNX carries the scaling.

Architecture: shared embeddings → ``n_experts`` one-hidden-layer expert MLPs
(computed as one wide Linear, then split) → per task a softmax gate over the
experts and a small tower → sigmoid. Tasks, in :data:`TASKS` order:

* ``click``: the user rated the item (every logged row) vs. sampled unrated items;
* ``like``: rating >= ``like_threshold`` given click (label loss on clicked rows only);
* ``rating``: rating / 5 regressed through a sigmoid (BCE with a soft target, clicked
  rows only); the output is in [0, 1], multiply by 5 for stars.

Distillation (:class:`DistillConfig`): with a teacher, the loss is
``(1 - weight) * label_loss + weight * distill_loss`` where ``distill_loss`` is the
BCE of ``sigmoid(student_logit / T)`` against ``sigmoid(teacher_logit / T)`` for
every task, on every row (the teacher's like/rating on unclicked rows is exactly
what serving asks the student for, so it is knowledge worth transferring).
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
from export.models.field_codes import bag_weights, field_rows, register_field_mask, register_field_offsets
from export.models.fit import EmbeddingAdam, SparseEmbeddingConfig, fit
from export.models.onnx_export import export_onnx
from export.models.deepfm import _sample_unseen

TASKS = ["click", "like", "rating"]
ID_FIELDS = ("user_id", "item_id")   # the schema's id fields (common.rank_features)


@dataclass
class MMoEConfig:
    """Hyper-parameters of an MMoE and its training (defaults: the small student)."""

    embed_dim: int = 8
    n_experts: int = 3
    expert_hidden: int = 64
    tower_hidden: int = 32
    dropout: float = 0.1
    epochs: int = 6               # quiet 2-core machine: ~7 s; at 3 the student trails the teacher by 0.012 click AUC
    batch_size: int = 2048
    lr: float = 3e-3
    weight_decay: float = 0.0
    sparse: SparseEmbeddingConfig = field(default_factory=SparseEmbeddingConfig)  # large id tables
    neg_per_pos: int = 1          # sampled unrated items per logged row (click = 0)
    # read the user and item id fields; off: they read as unknown (python -m export.ranking.ablation: on the validation
    # part the ranker without them ordered recall's candidates better, NDCG@10 .2050 against .2024)
    use_ids: bool = False
    like_threshold: float = 4.0   # like = rating >= this
    max_rating: float = 5.0       # rating target = rating / max_rating
    seed: int = 0


@dataclass
class MMoETeacherConfig(MMoEConfig):
    """The large teacher: 8 experts x 128 hidden, embed 16 (~10x the student's compute).

    8 x 256 with embed 32 trained at ~35 s per epoch on a busy 2-core machine, over the
    export's time budget; this size keeps the teacher clearly larger at ~1/8 of that.
    Epochs and lr: at 2 epochs / lr 2e-3 the teacher was undertrained (the student beat it on
    every task); on ML-100K held-out AUC still rises at epoch 4 with lr 3e-3 (click .816,
    like .792, rating .791 vs. the label-only student's .810 / .788 / .787), ~4 s per epoch
    on a quiet 2-core machine. (A subclass, not a factory, so config overrides keep these defaults.)
    """

    embed_dim: int = 16
    n_experts: int = 8
    expert_hidden: int = 128
    tower_hidden: int = 64
    epochs: int = 4
    lr: float = 3e-3


def teacher_config() -> MMoETeacherConfig:
    """The default teacher configuration."""
    return MMoETeacherConfig()


@dataclass
class DistillConfig:
    """Soft-target distillation: temperature and the weight of the distillation term."""

    temperature: float = 2.0
    weight: float = 0.5


class MMoE(nn.Module):
    """Shared embeddings, shared experts, one softmax gate and one tower per task."""

    def __init__(self, schema: RankSchema, cfg: MMoEConfig, n_tasks: int = len(TASKS), n_dense: int = 0) -> None:
        super().__init__()
        self.n_dense = n_dense
        register_dense_scaling(self, n_dense)
        self.n_fields = schema.n_fields
        self.n_bag = schema.n_bag
        self.n_tasks = n_tasks
        self.n_experts = cfg.n_experts
        self.expert_hidden = cfg.expert_hidden
        k = cfg.embed_dim
        self.embed = nn.Embedding(register_field_offsets(self, schema.field_vocab), k)
        register_field_mask(self, schema.field_names, () if cfg.use_ids else ID_FIELDS)
        nn.init.normal_(self.embed.weight, std=0.05)
        self.bag_embed = nn.Parameter(torch.randn(max(self.n_bag, 1), k) * 0.05)
        n_in = (self.n_fields + 1) * k + n_dense
        # All experts' hidden layers as one Linear: one Gemm in ONNX, one int8 MatMul after quantization.
        self.experts = nn.Linear(n_in, cfg.n_experts * cfg.expert_hidden)
        self.gates = nn.Linear(n_in, n_tasks * cfg.n_experts)
        self.drop = nn.Dropout(cfg.dropout)
        self.towers = nn.ModuleList([
            nn.Sequential(nn.Linear(cfg.expert_hidden, cfg.tower_hidden), nn.ReLU(), nn.Linear(cfg.tower_hidden, 1))
            for _ in range(n_tasks)
        ])

    def logits(self, sparse: torch.Tensor, bag: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-sigmoid task scores float32 [B, T]."""
        emb = self.embed(field_rows(self, sparse))                # [B, F, k]
        if self.n_bag > 0:
            bag_emb = bag_weights(bag) @ self.bag_embed           # [B, k]
        else:
            bag_emb = torch.zeros_like(emb[:, 0])
        x = torch.cat([emb, bag_emb.unsqueeze(1)], dim=1).flatten(1)          # [B, (F+1)k]
        if self.n_dense:
            x = torch.cat([x, scale_dense(self, dense)], dim=1)              # [B, (F+1)k + D]
        ex = self.drop(F.relu(self.experts(x))).reshape(-1, self.n_experts, self.expert_hidden)  # [B, E, H]
        g = torch.softmax(self.gates(x).reshape(-1, self.n_tasks, self.n_experts), dim=-1)        # [B, T, E]
        mixed = (g.unsqueeze(-1) * ex.unsqueeze(1)).sum(2)                    # [B, T, H]
        return torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor, dense: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        """sparse int64 [B, F], bag float32 [B, G] (, dense float32 [B, D]) → (p_click, p_like, p_rating_norm)."""
        p = torch.sigmoid(self.logits(sparse, bag, dense))
        return tuple(p[:, t] for t in range(self.n_tasks))


def register_dense_scaling(module: nn.Module, n_dense: int) -> None:
    """Buffers ``dense_mean`` / ``dense_std`` [D] (0 / 1 until :func:`fit_dense_scaling`), saved with the model
    and exported to ONNX, so serving feeds raw features."""
    module.register_buffer("dense_mean", torch.zeros(n_dense))
    module.register_buffer("dense_std", torch.ones(n_dense))


def fit_dense_scaling(module: nn.Module, dense: np.ndarray) -> None:
    """Set the scaling buffers from training rows (a constant column keeps std 1)."""
    if getattr(module, "n_dense", 0) and dense.shape[0]:
        d = np.asarray(dense, np.float64)
        module.dense_mean.copy_(torch.from_numpy(d.mean(0).astype(np.float32)))
        std = d.std(0)
        module.dense_std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))


def scale_dense(module: nn.Module, dense: torch.Tensor | None) -> torch.Tensor:
    """Standardised dense features, clipped to +-8 deviations (a far outlier must not dominate)."""
    if dense is None:
        raise ValueError(f"{type(module).__name__} was built with {module.n_dense} dense features; pass dense")
    return torch.clamp((dense - module.dense_mean) / module.dense_std, -8.0, 8.0)


def make_mmoe_examples(
    ds: Dataset, inter: Interactions, schema: RankSchema, neg_per_pos: int, seed: int,
    like_threshold: float = 4.0, max_rating: float = 5.0, known: Interactions | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Multi-task examples: every logged row is click = 1, plus ``neg_per_pos`` sampled unrated items each.

    Negatives are items the user never interacted with in ``known`` (default:
    ``inter``; never rows the model may not know, such as the test part), drawn with ``seed`` only (so metrics are comparable),
    with the logged row's timestamp as context. Labels (float32 [M]):
    ``click``; ``like`` (rating >= like_threshold) and ``rating`` (rating / max_rating),
    both 0 on sampled rows; ``mask`` = click (where like and rating are defined).
    The first ``len(inter)`` rows are the log's rows in order.
    """
    rng = np.random.default_rng(seed)
    users = inter.user.astype(np.int64)
    items = inter.item.astype(np.int64)
    ts = inter.timestamp.astype(np.int64)
    neg_src = np.repeat(np.arange(users.shape[0]), neg_per_pos)
    # only what the model may know: a held-out row must not shape the training negatives (issue 11)
    all_inter = known if known is not None else inter
    seen_keys = np.unique(all_inter.user.astype(np.int64) * ds.n_items + all_inter.item.astype(np.int64))
    neg_items, ok = _sample_unseen(users[neg_src], ds.n_items, seen_keys, rng)
    neg_src, neg_items = neg_src[ok], neg_items[ok]
    n_neg = neg_src.shape[0]

    u = np.concatenate([users, users[neg_src]])
    i = np.concatenate([items, neg_items])
    t = np.concatenate([ts, ts[neg_src]])
    zeros = np.zeros(n_neg, np.float32)
    click = np.concatenate([np.ones(users.shape[0], np.float32), zeros])
    like = np.concatenate([(inter.rating >= like_threshold).astype(np.float32), zeros])
    rating = np.concatenate([np.clip(inter.rating / max_rating, 0, 1).astype(np.float32), zeros])
    hour, weekday = context_codes(t)
    sparse, bag = assemble(schema, u + 1, ds.user_cat.reshape(ds.n_users, -1)[u], i + 1,
                           ds.item_cat.reshape(ds.n_items, -1)[i], ds.item_bag.reshape(ds.n_items, -1)[i],
                           hour, weekday)
    return sparse, bag, {"click": click, "like": like, "rating": rating, "mask": click.copy()}


def mmoe_loss(
    logits: torch.Tensor, labels: dict[str, torch.Tensor], teacher_logits: torch.Tensor | None = None,
    distill: DistillConfig | None = None,
) -> torch.Tensor:
    """Label loss (BCE per task; like/rating only on rows with mask = 1), plus distillation when a teacher is given."""
    mask = labels["mask"]
    n_clicked = mask.sum().clamp(min=1.0)
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels["click"])
    for t, name in ((1, "like"), (2, "rating")):
        per_row = F.binary_cross_entropy_with_logits(logits[:, t], labels[name], reduction="none")
        loss = loss + (per_row * mask).sum() / n_clicked
    if teacher_logits is None:
        return loss
    d = distill or DistillConfig()
    soft = torch.sigmoid(teacher_logits / d.temperature)
    kd = F.binary_cross_entropy_with_logits(logits / d.temperature, soft, reduction="none").mean(0).sum()
    return (1.0 - d.weight) * loss + d.weight * kd


@torch.no_grad()
def mmoe_logits(model: nn.Module, sparse: np.ndarray | torch.Tensor, bag: np.ndarray | torch.Tensor,
                dense: np.ndarray | torch.Tensor | None = None, batch_size: int = 16384) -> torch.Tensor:
    """Pre-sigmoid task scores [M, T] in eval mode (any model with ``logits(sparse, bag, dense)``)."""
    was_training = model.training
    model.eval()
    x = torch.as_tensor(np.ascontiguousarray(sparse, dtype=np.int64))
    b = torch.as_tensor(np.ascontiguousarray(bag, dtype=np.float32))
    d = torch.as_tensor(np.ascontiguousarray(dense, dtype=np.float32)) if dense is not None else None
    out = [model.logits(x[s:s + batch_size], b[s:s + batch_size], d[s:s + batch_size] if d is not None else None)
           for s in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, model.n_tasks))


def predict_mmoe(model: nn.Module, sparse: np.ndarray, bag: np.ndarray, dense: np.ndarray | None = None
                 ) -> np.ndarray:
    """Task probabilities float32 [M, T] (columns in :data:`TASKS` order)."""
    return torch.sigmoid(mmoe_logits(model, sparse, bag, dense)).numpy()


def train_mmoe(
    ds: Dataset, train: Interactions, cfg: MMoEConfig, schema: RankSchema, teacher: MMoE | None = None,
    distill: DistillConfig | None = None,
    examples: tuple | None = None, dense: np.ndarray | None = None,
    on_epoch=None,
) -> tuple[MMoE, dict]:
    """Train an MMoE with Adam on :func:`make_mmoe_examples` of ``train`` (or the given ``examples``).

    ``dense`` float32 [M, D] builds a model with D dense inputs (scaled with these rows' statistics).
    With ``teacher``, its logits on the same examples become soft targets
    (see :func:`mmoe_loss`). ``on_epoch(model, epoch)`` is called after every epoch (validation curves).
    Returns the model in eval mode and a log.
    """
    t0 = time.perf_counter()
    distill = distill or DistillConfig()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if examples is None:
        examples = make_mmoe_examples(ds, train, schema, cfg.neg_per_pos, cfg.seed, cfg.like_threshold,
                                      cfg.max_rating)
    sparse, bag, labels = examples
    x = torch.from_numpy(sparse)
    b = torch.from_numpy(bag)
    y = {k: torch.from_numpy(v) for k, v in labels.items()}
    d = torch.from_numpy(np.ascontiguousarray(dense, np.float32)) if dense is not None else None
    t_logits = mmoe_logits(teacher, x, b, d) if teacher is not None else None
    model = MMoE(schema, cfg, n_dense=0 if dense is None else dense.shape[1])
    fit_dense_scaling(model, dense if dense is not None else np.zeros((0, 0)))
    opt = EmbeddingAdam([model], cfg.lr, cfg.weight_decay, cfg.sparse)
    n = x.shape[0]
    log: dict = {"epoch_loss": [], "n_examples": n, "clicked": int(labels["mask"].sum()),
                 "distilled": teacher is not None}
    if teacher is not None:
        log["distill"] = {"temperature": distill.temperature, "weight": distill.weight}
    model.train()
    log["epoch_loss"] = fit(opt, n, cfg.batch_size, cfg.epochs, gen, lambda idx: mmoe_loss(
        model.logits(x[idx], b[idx], d[idx] if d is not None else None), {k: v[idx] for k, v in y.items()},
        t_logits[idx] if t_logits is not None else None, distill),
        on_epoch=(lambda epoch: on_epoch(model, epoch)) if on_epoch else None)
    model.eval()
    log["seconds"] = round(time.perf_counter() - t0, 3)
    return model, log


def export_mmoe_onnx(model: nn.Module, path: str, n_fields: int, n_bag: int) -> None:
    """Write the MMoE (or the pre-rank) as ONNX (opset 17, TorchScript exporter).

    Inputs ``sparse`` int64 [B, F], ``bag`` float32 [B, G] and, when the model has dense
    features, ``dense`` float32 [B, D]; outputs ``click``, ``like``, ``rating`` float32 [B]
    (probabilities, rating / 5); the batch axis is dynamic.
    """
    dummy = (torch.zeros((2, n_fields), dtype=torch.int64), torch.zeros((2, n_bag), dtype=torch.float32))
    names = ["sparse", "bag"]
    if getattr(model, "n_dense", 0):
        dummy, names = (*dummy, torch.zeros((2, model.n_dense), dtype=torch.float32)), [*names, "dense"]
    export_onnx(model, dummy, path, names, list(TASKS))
