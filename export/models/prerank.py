"""The pre-rank model (docs/ARCHITECTURE.md §1, 粗排): distilled from the MMoE teacher, one of two kinds.

* ``deepfm``: a small multi-task DeepFM over every sparse field and the dense candidate features (below).
* ``three_tower`` (issue 26, COLD-style): a user tower over the user-side fields (user id, user categorical
  fields, the hour and weekday context codes) → ``u`` [d], computed once per request; an item tower over the
  item-side fields (item id, item categorical fields, the bag) → ``v`` [d], computed per snapshot by export
  for every item and cached (``models/prerank_items.npy``); a narrow cross part, ``[u*v, v, dense]`` through a
  small MLP plus a linear term → per-task logits. Per candidate the server runs only the cross part.

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


PRERANK_KINDS = ("auto", "deepfm", "three_tower")
USER_CONTEXT = ("hour", "weekday")   # context codes: the same for every candidate of a request (user side)


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
    # "deepfm" | "three_tower" | "auto": train both on the training cut and serve the three-tower when its
    # validation NDCG@10 (pre-rank cut, student order) is within ``max_cost`` (relative) of the DeepFM's
    kind: str = "auto"
    max_cost: float = 0.005
    tower_dim: int = 16            # three-tower: d of u and v
    tower_hidden: int = 64         # three-tower: hidden width of each tower
    cross_hidden: tuple[int, ...] = (32,)   # three-tower: the cross MLP
    cross_dense: list[str] = field(default_factory=list)   # dense columns the cross part reads ([]: all)

    def validate(self) -> None:
        if self.kind not in PRERANK_KINDS:
            raise ValueError(f"prerank.kind must be one of {', '.join(PRERANK_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.max_cost < 1.0 or self.tower_dim < 1 or self.tower_hidden < 1:
            raise ValueError("prerank: max_cost must lie in [0, 1), tower_dim and tower_hidden >= 1")

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


def user_side(name: str) -> bool:
    """Whether schema field ``name`` is the same for every candidate of a request (user tower)."""
    return name == "user_id" or name.startswith("user:") or name in USER_CONTEXT


def item_side(name: str) -> bool:
    """Whether schema field ``name`` belongs to the candidate item (item tower)."""
    return name == "item_id" or name.startswith("item:")


class _FieldTower(nn.Module):
    """Embeddings of some columns of ``sparse`` (+ optionally the bag), concatenated, through a small MLP."""

    def __init__(self, schema: RankSchema, cols: list[int], with_bag: bool, k: int, hidden: int, d: int) -> None:
        super().__init__()
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.int64), persistent=False)
        total = register_field_offsets(self, [schema.field_vocab[c] for c in cols]) if cols else 1
        self.embed = nn.Embedding(max(total, 1), k)
        nn.init.normal_(self.embed.weight, std=0.05)
        self.n_cols = len(cols)
        self.with_bag = with_bag and schema.n_bag > 0
        if self.with_bag:
            self.bag_embed = nn.Parameter(torch.randn(schema.n_bag, k) * 0.05)
        n_in = (self.n_cols + int(self.with_bag)) * k
        self.mlp = nn.Sequential(nn.Linear(max(n_in, 1), hidden), nn.ReLU(), nn.Linear(hidden, d))

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.n_cols:
            codes = sparse.index_select(1, self.cols)
            parts.append(self.embed(field_rows(self, codes)).flatten(1))       # [B, n_cols k]
        if self.with_bag:
            parts.append(bag_weights(bag) @ self.bag_embed)                    # [B, k]
        if not parts:
            parts.append(torch.zeros((sparse.shape[0], 1), dtype=torch.float32))
        return self.mlp(torch.cat(parts, dim=1))


class PrerankThreeTower(nn.Module):
    """Three-tower pre-rank: ``logits(sparse, bag, dense) = cross(user_vec(sparse), item_vec(sparse, bag), dense)``.

    Which sparse columns each tower reads follows the schema's field names (:func:`user_side`,
    :func:`item_side`); the id fields are read only with ``use_ids``. ``dense_cols`` are the columns of the
    candidate features the cross part reads (all by default)."""

    def __init__(self, schema: RankSchema, cfg: PrerankConfig, n_tasks: int = len(TASKS), n_dense: int = 0) -> None:
        super().__init__()
        off = () if cfg.use_ids else ID_FIELDS
        names = schema.field_names
        self.user_cols = [i for i, n in enumerate(names) if user_side(n) and n not in off]
        self.item_cols = [i for i, n in enumerate(names) if item_side(n) and n not in off]
        self.n_fields, self.n_bag, self.n_tasks = schema.n_fields, schema.n_bag, n_tasks
        self.dim = cfg.tower_dim
        k = cfg.embed_dim
        self.user_tower = _FieldTower(schema, self.user_cols, False, k, cfg.tower_hidden, cfg.tower_dim)
        self.item_tower = _FieldTower(schema, self.item_cols, True, k, cfg.tower_hidden, cfg.tower_dim)
        want = list(cfg.cross_dense) if cfg.cross_dense else list(schema.dense_names[:n_dense])
        if n_dense:
            missing = [c for c in want if c not in schema.dense_names[:n_dense]]
            if missing:
                raise ValueError(f"prerank.cross_dense names {missing}, not dense columns of the schema")
            self.dense_cols = [schema.dense_names.index(c) for c in want]
        else:
            self.dense_cols = []
        # the model takes the whole dense matrix (like every ranking model) and reads dense_cols of it
        self.n_dense = n_dense
        register_dense_scaling(self, n_dense)
        self.register_buffer("dense_idx", torch.tensor(self.dense_cols, dtype=torch.int64), persistent=False)
        self.all_dense = self.dense_cols == list(range(n_dense))   # no column selection in the graph
        n_in = 2 * cfg.tower_dim + len(self.dense_cols)
        layers: list[nn.Module] = []
        h_in = n_in
        for h in cfg.cross_hidden:
            layers += [nn.Linear(h_in, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            h_in = h
        layers.append(nn.Linear(h_in, n_tasks))
        self.cross = nn.Sequential(*layers)
        self.wide = nn.Linear(n_in, n_tasks)      # first-order path over the same inputs

    def user_vec(self, sparse: torch.Tensor) -> torch.Tensor:
        """u float32 [B, d] from the user-side columns of ``sparse`` [B, F]."""
        return self.user_tower(sparse, None)

    def item_vec(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        """v float32 [B, d] from the item-side columns of ``sparse`` [B, F] and ``bag`` [B, G]."""
        return self.item_tower(sparse, bag)

    def cross_logits(self, u: torch.Tensor, v: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        """Task logits [B, T] from u ([1, d] broadcast, or [B, d]), v [B, d] and the raw dense matrix [B, D]."""
        parts = [u * v, v]
        if self.dense_cols:
            z = scale_dense(self, dense)
            parts.append(z if self.all_dense else z.index_select(1, self.dense_idx))
        x = torch.cat(parts, dim=1)
        return self.cross(x) + self.wide(x)

    def logits(self, sparse: torch.Tensor, bag: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        return self.cross_logits(self.user_vec(sparse), self.item_vec(sparse, bag), dense)

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor, dense: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        p = torch.sigmoid(self.logits(sparse, bag, dense))
        return tuple(p[:, t] for t in range(self.n_tasks))


class UserTowerGraph(nn.Module):
    """ONNX graph of the user tower: ``sparse`` [B, F] (only the user-side columns are read) → ``u`` [B, d]."""

    def __init__(self, model: PrerankThreeTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.model.user_vec(sparse)


class CrossGraph(nn.Module):
    """ONNX graph of the cross part: ``u`` [1 or B, d], ``v`` [B, d], ``dense`` [B, D] → task probabilities."""

    def __init__(self, model: PrerankThreeTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, u: torch.Tensor, v: torch.Tensor, dense: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        p = torch.sigmoid(self.model.cross_logits(u, v, dense))
        return tuple(p[:, t] for t in range(self.model.n_tasks))


def item_vectors(model: PrerankThreeTower, schema: RankSchema, item_cat: np.ndarray, item_bag: np.ndarray,
                 batch_size: int = 65536) -> np.ndarray:
    """v of every item (dense ids 0..n-1) as float32 [n_items, d], from the arrays the rank server holds
    (``features.lmdb`` item_cat / item_bag), assembled exactly as serving assembles them."""
    from common.rank_features import assemble

    n = int(item_cat.shape[0])
    n_user = schema.n_user_fields
    out = np.empty((n, model.dim), np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            ids = np.arange(s, min(n, s + batch_size))
            sparse, bag = assemble(schema, 0, np.zeros(n_user, np.int64), ids + 1, item_cat[ids],
                                   item_bag[ids], 0, 0)
            out[ids] = model.item_vec(torch.from_numpy(sparse), torch.from_numpy(bag)).numpy()
    model.train(was_training)
    return out


def make_prerank(kind: str, schema: RankSchema, cfg: PrerankConfig, n_dense: int) -> nn.Module:
    """An untrained pre-rank of ``kind`` ("deepfm" or "three_tower")."""
    if kind == "three_tower":
        return PrerankThreeTower(schema, cfg, n_dense=n_dense)
    if kind == "deepfm":
        return PrerankFM(schema, cfg, n_dense=n_dense)
    raise ValueError(f"pre-rank kind {kind!r}: train 'deepfm' or 'three_tower'")


def prerank_loss(logits: torch.Tensor, labels: dict[str, torch.Tensor], teacher_logits: torch.Tensor | None,
                 cfg: PrerankConfig) -> torch.Tensor:
    """The MMoE's masked multi-task label loss blended with BCE against the teacher's soft targets."""
    return mmoe_loss(logits, labels, teacher_logits, cfg.distill())


def train_prerank(
    schema: RankSchema, cfg: PrerankConfig, examples: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]],
    teacher_logits: torch.Tensor | np.ndarray | None, dense: np.ndarray | None = None, kind: str | None = None,
) -> tuple[nn.Module, dict]:
    """Train the pre-rank on ``examples`` (the MMoE's) with the teacher's logits [M, T] as soft targets.

    ``teacher_logits`` None trains on labels alone (the comparison baseline). ``kind`` ("deepfm",
    "three_tower"; None: ``cfg.kind``, whose "auto" means "deepfm" here) picks the model. Returns the model
    in eval mode and a log.
    """
    kind = kind or cfg.kind
    kind = "deepfm" if kind == "auto" else kind
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
    model = make_prerank(kind, schema, cfg, 0 if dense is None else dense.shape[1])
    if dense is not None:
        fit_dense_scaling(model, dense)
    opt = EmbeddingAdam([model], cfg.lr, cfg.weight_decay, cfg.sparse)
    n = x.shape[0]
    log: dict = {"kind": kind, "n_examples": n, "distilled": t_logits is not None,
                 "distill": {"temperature": cfg.temperature, "weight": cfg.distill_weight}}
    model.train()
    log["epoch_loss"] = fit(opt, n, cfg.batch_size, cfg.epochs, gen, lambda idx: prerank_loss(
        model.logits(x[idx], b[idx], d[idx] if d is not None else None), {k: v[idx] for k, v in y.items()},
        t_logits[idx] if t_logits is not None else None, cfg))
    model.eval()
    log["seconds"] = round(time.perf_counter() - t0, 3)
    return model, log


def export_three_tower(model: PrerankThreeTower, out_dir, schema: RankSchema, item_cat: np.ndarray,
                       item_bag: np.ndarray) -> dict:
    """Write the served three-tower files under ``out_dir`` (``rank_server.prerank``): the user tower and the
    cross part as ONNX, every item's vector as float32 [n_items, d], and the spec naming them. Returns the spec."""
    import json
    from pathlib import Path

    from export.models.onnx_export import export_onnx
    from rank_server.prerank import CROSS_FILE, ITEMS_FILE, SPEC_FILE, USER_FILE

    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    export_onnx(UserTowerGraph(model), (torch.zeros((1, schema.n_fields), dtype=torch.int64),),
                str(out_dir / USER_FILE), ["sparse"], ["u"])
    d = model.dim
    dummy = (torch.zeros((1, d)), torch.zeros((2, d)))
    names = ["u", "v"]
    if model.n_dense:
        dummy, names = (*dummy, torch.zeros((2, model.n_dense))), [*names, "dense"]
    axes = {"u": {0: "one"}, **{n: {0: "batch"} for n in [*names[1:], *TASKS]}}
    export_onnx(CrossGraph(model), dummy, str(out_dir / CROSS_FILE), names, list(TASKS), axes=axes)
    np.save(out_dir / ITEMS_FILE, item_vectors(model, schema, item_cat, item_bag))
    spec = {"kind": "three_tower", "user": USER_FILE, "cross": CROSS_FILE, "items": ITEMS_FILE, "dim": d,
            "user_fields": [schema.field_names[c] for c in model.user_cols],
            "item_fields": [schema.field_names[c] for c in model.item_cols] + (["bag"] if schema.n_bag else []),
            "cross_dense": [schema.dense_names[c] for c in model.dense_cols]}
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    return spec


def remove_three_tower(out_dir) -> None:
    """Remove the three-tower files from ``out_dir`` (a DeepFM pre-rank is served there)."""
    from pathlib import Path

    from rank_server.prerank import CROSS_FILE, ITEMS_FILE, SPEC_FILE, USER_FILE

    for name in (SPEC_FILE, USER_FILE, CROSS_FILE, ITEMS_FILE):
        (Path(out_dir) / name).unlink(missing_ok=True)
