"""The pre-rank model (docs/ARCHITECTURE.md §1, 粗排): a small multi-task DeepFM distilled from the MMoE teacher.

Pre-rank cuts ~1,000 recalled candidates to ~200 for the MMoE. It must optimise the same objective as
the ranker, or it filters out exactly what rank would have liked; so it is trained on the MMoE's examples
with the teacher's task logits as soft targets (the loss of :func:`export.models.mmoe.mmoe_loss`:
``(1 - weight) * label_loss + weight * distill_loss``), outputs the same tasks (``click``, ``like``,
``rating`` probabilities), and the rank server fuses them with the same weighted product as the ranker's.

Architecture (cheap enough for 1,000 rows in well under a millisecond on one thread): one embedding table
(dimension ``embed_dim``) for every field plus the weighted-mean bag embedding; per task a first-order
term, the FM second-order interaction (shared, scaled per task) and one small DNN whose last layer has one
output per task. Inputs are exactly :func:`common.rank_features.assemble`'s ``sparse`` / ``bag``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from common.rank_features import RankSchema
from export.models.field_codes import bag_weights, field_rows, register_field_mask, register_field_offsets
from export.models.fit import EmbeddingAdam, SparseEmbeddingConfig, fit
from export.models.mmoe import ID_FIELDS, TASKS, DistillConfig, fit_dense_scaling, mmoe_loss, register_dense_scaling, scale_dense


@dataclass
class PrerankConfig:
    """Hyper-parameters of the distilled pre-rank model and its training."""

    embed_dim: int = 8
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.1
    epochs: int = 4
    batch_size: int = 2048
    lr: float = 3e-3
    weight_decay: float = 0.0
    sparse: SparseEmbeddingConfig = field(default_factory=SparseEmbeddingConfig)  # large id tables
    temperature: float = 1.0       # distillation temperature on the teacher's task logits
    distill_weight: float = 0.8    # weight of the teacher's soft targets (1 - it: the labels)
    use_ids: bool = False          # read the user / item id fields (see MMoEConfig.use_ids)
    seed: int = 0

    def distill(self) -> DistillConfig:
        return DistillConfig(temperature=self.temperature, weight=self.distill_weight)


class PrerankFM(nn.Module):
    """Multi-task DeepFM: ``(sparse, bag) -> T`` task logits from first-order + FM + a small DNN."""

    def __init__(self, schema: RankSchema, cfg: PrerankConfig, n_tasks: int = len(TASKS), n_dense: int = 0) -> None:
        super().__init__()
        self.n_dense = n_dense
        register_dense_scaling(self, n_dense)
        # dense features (recall and history, common.candidate_features) enter first-order and the DNN
        self.dense_linear = nn.Linear(n_dense, n_tasks, bias=False) if n_dense else None
        self.n_fields = schema.n_fields
        self.n_bag = schema.n_bag
        self.n_tasks = n_tasks
        k = cfg.embed_dim
        total = register_field_offsets(self, schema.field_vocab)
        register_field_mask(self, schema.field_names, () if cfg.use_ids else ID_FIELDS)
        self.embed = nn.Embedding(total, k)
        self.linear = nn.Embedding(total, n_tasks)
        nn.init.normal_(self.embed.weight, std=0.05)
        nn.init.zeros_(self.linear.weight)
        self.bag_embed = nn.Parameter(torch.randn(max(self.n_bag, 1), k) * 0.05)
        self.bag_linear = nn.Parameter(torch.zeros(max(self.n_bag, 1), n_tasks))
        self.bias = nn.Parameter(torch.zeros(n_tasks))
        self.fm_scale = nn.Parameter(torch.ones(n_tasks))
        # sums over the fields as one matmul with a 0/1 selector: onnxruntime's ReduceSum over the middle axis
        # of [B, F, k] took 123 us for 1,000 rows on one thread, the matmul 24 us, and a pre-rank call makes
        # three such sums over ~1,000 candidates per request
        self.register_buffer("sum_fields", torch.eye(k).repeat(self.n_fields + 1, 1), persistent=False)
        self.register_buffer("sum_linear", torch.eye(n_tasks).repeat(self.n_fields, 1), persistent=False)
        layers: list[nn.Module] = []
        n_in = (self.n_fields + 1) * k + n_dense
        for h in cfg.hidden:
            layers += [nn.Linear(n_in, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            n_in = h
        layers.append(nn.Linear(n_in, n_tasks))
        self.dnn = nn.Sequential(*layers)

    def logits(self, sparse: torch.Tensor, bag: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-sigmoid task scores float32 [B, T]."""
        idx = field_rows(self, sparse)
        emb = self.embed(idx)                                     # [B, F, k]
        if self.n_bag > 0:
            w = bag_weights(bag)                                  # [B, G]
            bag_emb = w @ self.bag_embed                          # [B, k]
            bag_lin = w @ self.bag_linear                         # [B, T]
        else:
            bag_emb = torch.zeros_like(emb[:, 0])
            bag_lin = torch.zeros((emb.shape[0], self.n_tasks), dtype=emb.dtype)
        fields = torch.cat([emb, bag_emb.unsqueeze(1)], dim=1)   # [B, F+1, k]
        first = self.linear(idx).flatten(1) @ self.sum_linear + bag_lin   # [B, T]: summed over the fields
        flat = fields.flatten(1)                                  # [B, (F+1) k]
        s = flat @ self.sum_fields                                # [B, k]
        fm = 0.5 * (s * s - (flat * flat) @ self.sum_fields).sum(1, keepdim=True)  # [B, 1]
        if self.n_dense:
            z = scale_dense(self, dense)
            first = first + self.dense_linear(z)
            flat = torch.cat([flat, z], dim=1)
        return self.bias + first + fm * self.fm_scale + self.dnn(flat)

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor, dense: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        """sparse int64 [B, F], bag float32 [B, G] (, dense [B, D]) → one probability [B] per task (TASKS order)."""
        p = torch.sigmoid(self.logits(sparse, bag, dense))
        return tuple(p[:, t] for t in range(self.n_tasks))


def prerank_loss(logits: torch.Tensor, labels: dict[str, torch.Tensor], teacher_logits: torch.Tensor | None,
                 cfg: PrerankConfig) -> torch.Tensor:
    """The MMoE's masked multi-task label loss blended with BCE against the teacher's soft targets."""
    return mmoe_loss(logits, labels, teacher_logits, cfg.distill())


def train_prerank(
    schema: RankSchema, cfg: PrerankConfig, examples: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]],
    teacher_logits: torch.Tensor | np.ndarray | None, dense: np.ndarray | None = None,
) -> tuple[PrerankFM, dict]:
    """Train the pre-rank on ``examples`` (the MMoE's) with the teacher's logits [M, T] as soft targets.

    ``teacher_logits`` None trains on labels alone (the comparison baseline). Returns the model in eval mode
    and a log.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sparse, bag, labels = examples
    x = torch.from_numpy(np.ascontiguousarray(sparse, np.int64))
    b = torch.from_numpy(np.ascontiguousarray(bag, np.float32))
    y = {k: torch.from_numpy(v) for k, v in labels.items()}
    t_logits = torch.as_tensor(teacher_logits, dtype=torch.float32) if teacher_logits is not None else None
    if t_logits is not None and t_logits.shape[0] != x.shape[0]:
        raise ValueError(f"{t_logits.shape[0]} teacher rows for {x.shape[0]} examples")
    d = torch.from_numpy(np.ascontiguousarray(dense, np.float32)) if dense is not None else None
    model = PrerankFM(schema, cfg, n_dense=0 if dense is None else dense.shape[1])
    if dense is not None:
        fit_dense_scaling(model, dense)
    opt = EmbeddingAdam([model], cfg.lr, cfg.weight_decay, cfg.sparse)
    n = x.shape[0]
    log: dict = {"n_examples": n, "distilled": t_logits is not None,
                 "distill": {"temperature": cfg.temperature, "weight": cfg.distill_weight}}
    model.train()
    log["epoch_loss"] = fit(opt, n, cfg.batch_size, cfg.epochs, gen, lambda idx: prerank_loss(
        model.logits(x[idx], b[idx], d[idx] if d is not None else None), {k: v[idx] for k, v in y.items()},
        t_logits[idx] if t_logits is not None else None, cfg))
    model.eval()
    log["seconds"] = round(time.perf_counter() - t0, 3)
    return model, log
