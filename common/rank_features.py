"""Feature schema of the ranking models, shared by training and serving.

Training (``export``) and the rank server both build model inputs through
:func:`assemble`, so the column order, the context features and the handling of
unknown codes can never drift between the two. This module deliberately
imports numpy only: the rank server must not pull in torch.

Column order of the ``sparse`` matrix (one int64 code per field, 0 = unknown):

1. user id code (dense user id + 1)
2. item id code (dense item id + 1)
3. each user categorical field, in dataset order
4. each item categorical field, in dataset order
5. hour-of-day code, 1..24 (UTC hour + 1)
6. weekday code, 1..7 (Monday = 1, UTC)

The multi-hot ``bag`` (e.g. genres) travels separately as float32 [B, G].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

HOUR_VOCAB = 25      # codes 1..24 plus 0 = unknown
WEEKDAY_VOCAB = 8    # codes 1..7 plus 0 = unknown
_SECONDS_PER_DAY = 86400
# 1970-01-01 was a Thursday: with Monday = 0 its weekday index is 3.
_EPOCH_WEEKDAY = 3


@dataclass
class RankSchema:
    """Names and vocabulary sizes of the ranking model's input fields.

    ``field_vocab[f]`` counts the codes of field ``f`` including code 0, so the
    valid codes of field ``f`` are ``0 .. field_vocab[f] - 1``.
    """

    field_names: list[str]
    field_vocab: list[int]
    bag_names: list[str]
    dense_names: list[str] = field(default_factory=list)   # common.candidate_features columns ([] : none)

    def __post_init__(self) -> None:
        if len(self.field_names) != len(self.field_vocab):
            raise ValueError(
                f"{len(self.field_names)} field names but {len(self.field_vocab)} vocab sizes"
            )
        if any(int(v) < 1 for v in self.field_vocab):
            raise ValueError(f"vocab sizes must be >= 1 (code 0 included): {self.field_vocab}")
        self.field_names = [str(n) for n in self.field_names]
        self.field_vocab = [int(v) for v in self.field_vocab]
        self.bag_names = [str(n) for n in self.bag_names]
        self.dense_names = [str(n) for n in self.dense_names]

    @property
    def n_fields(self) -> int:
        """Number of columns of the ``sparse`` matrix (F)."""
        return len(self.field_names)

    @property
    def n_bag(self) -> int:
        """Width of the multi-hot ``bag`` matrix (G)."""
        return len(self.bag_names)

    @property
    def n_user_fields(self) -> int:
        """Number of user categorical fields (the ``user:*`` columns)."""
        return sum(1 for n in self.field_names if n.startswith("user:"))

    @property
    def n_item_fields(self) -> int:
        """Number of item categorical fields (the ``item:*`` columns)."""
        return sum(1 for n in self.field_names if n.startswith("item:"))

    def to_dict(self) -> dict:
        """JSON-able form, stored in the snapshot manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RankSchema":
        """Inverse of :meth:`to_dict`."""
        return cls(
            field_names=list(d["field_names"]),
            field_vocab=[int(v) for v in d["field_vocab"]],
            bag_names=list(d["bag_names"]),
            dense_names=list(d.get("dense_names", [])),
        )

    @classmethod
    def from_dataset_meta(
        cls,
        n_users: int,
        n_items: int,
        user_cat_names: list[str],
        user_cat_vocab: list[int],
        item_cat_names: list[str],
        item_cat_vocab: list[int],
        bag_names: list[str],
    ) -> "RankSchema":
        """Schema for a dataset with the given sizes and categorical fields."""
        if len(user_cat_names) != len(user_cat_vocab):
            raise ValueError("user_cat_names and user_cat_vocab differ in length")
        if len(item_cat_names) != len(item_cat_vocab):
            raise ValueError("item_cat_names and item_cat_vocab differ in length")
        names = (
            ["user_id", "item_id"]
            + [f"user:{n}" for n in user_cat_names]
            + [f"item:{n}" for n in item_cat_names]
            + ["hour", "weekday"]
        )
        vocab = (
            [int(n_users) + 1, int(n_items) + 1]
            + [int(v) for v in user_cat_vocab]
            + [int(v) for v in item_cat_vocab]
            + [HOUR_VOCAB, WEEKDAY_VOCAB]
        )
        return cls(field_names=names, field_vocab=vocab, bag_names=list(bag_names))


def context_codes(timestamp: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Hour-of-day code (1..24) and weekday code (1..7, Monday = 1) in UTC.

    Accepts a scalar or an array of seconds since the epoch; returns int64
    arrays of the same shape (0-d for a scalar).
    """
    ts = np.asarray(timestamp, dtype=np.int64)
    # Floor division keeps pre-1970 timestamps on the right day and hour.
    days = np.floor_divide(ts, _SECONDS_PER_DAY)
    hour = np.floor_divide(np.mod(ts, _SECONDS_PER_DAY), 3600)
    weekday = np.mod(days + _EPOCH_WEEKDAY, 7)
    return (hour + 1).astype(np.int64), (weekday + 1).astype(np.int64)


def _rows(a, n_rows: int, n_cols: int, name: str) -> np.ndarray:
    """``a`` as int64 [n_rows, n_cols]; a 1-D ``a`` of length n_cols is broadcast."""
    a = np.asarray(a, dtype=np.int64)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != n_cols or a.shape[0] not in (1, n_rows):
        raise ValueError(f"{name}: expected [{n_cols}] or [{n_rows}, {n_cols}], got {a.shape}")
    return np.broadcast_to(a, (n_rows, n_cols))


def _column(a, n_rows: int, name: str) -> np.ndarray:
    """``a`` as int64 [n_rows]; a scalar (or length-1 array) is broadcast."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    if a.shape[0] not in (1, n_rows):
        raise ValueError(f"{name}: expected a scalar or [{n_rows}], got {a.shape}")
    return np.broadcast_to(a, (n_rows,))


def assemble(
    schema: RankSchema,
    user_code: int | np.ndarray,
    user_cat: np.ndarray,
    item_codes: np.ndarray,
    item_cat: np.ndarray,
    item_bag: np.ndarray,
    hour_code: int | np.ndarray,
    weekday_code: int | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for B (user, item, context) rows, in the schema's column order.

    Serving scores one user against B candidate items: pass a scalar
    ``user_code``, a 1-D ``user_cat`` [Fu] and scalar context codes, and they
    are broadcast to every row. Training passes per-row arrays instead
    (``user_code`` [B], ``user_cat`` [B, Fu], context codes [B]).

    ``item_codes`` is [B], ``item_cat`` is [B, Fi], ``item_bag`` is [B, G].

    Any code outside its field's vocabulary (negative, or >= ``field_vocab``)
    becomes 0, the unknown code: a user or item newer than the model, or a
    category value it never saw, must degrade to "unknown" rather than index
    another field's embedding or crash the server.

    Returns ``sparse`` int64 [B, F] and ``bag`` float32 [B, G].
    """
    item_codes = np.asarray(item_codes, dtype=np.int64).reshape(-1)
    n_rows = item_codes.shape[0]
    n_uf, n_if = schema.n_user_fields, schema.n_item_fields

    sparse = np.empty((n_rows, schema.n_fields), dtype=np.int64)
    sparse[:, 0] = _column(user_code, n_rows, "user_code")
    sparse[:, 1] = item_codes
    sparse[:, 2:2 + n_uf] = _rows(user_cat, n_rows, n_uf, "user_cat")
    sparse[:, 2 + n_uf:2 + n_uf + n_if] = _rows(item_cat, n_rows, n_if, "item_cat")
    sparse[:, -2] = _column(hour_code, n_rows, "hour_code")
    sparse[:, -1] = _column(weekday_code, n_rows, "weekday_code")

    vocab = np.asarray(schema.field_vocab, dtype=np.int64)
    sparse[(sparse < 0) | (sparse >= vocab)] = 0

    bag = np.asarray(item_bag, dtype=np.float32)
    if bag.ndim == 1 and n_rows == 1:
        bag = bag.reshape(1, -1)
    if bag.shape != (n_rows, schema.n_bag):
        raise ValueError(f"item_bag: expected [{n_rows}, {schema.n_bag}], got {bag.shape}")
    return sparse, np.ascontiguousarray(bag)
