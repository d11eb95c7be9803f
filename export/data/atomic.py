"""Load interaction logs in recbole's "atomic" format into a :class:`Dataset`.

Generic format (bring your own logs)
------------------------------------
A dataset called ``<name>`` is up to three tab-separated UTF-8 files in one
directory. The first line of each is a typed header, ``column:type`` per
column; the types are ``token`` (a categorical string), ``token_seq``
(space-separated tokens), ``float`` and ``float_seq``:

* ``<name>.inter`` (required): one interaction per line. Needs ``user_id``,
  ``item_id`` and a timestamp column (seconds since epoch); may have a rating
  or label column. Example header::

      user_id:token	item_id:token	rating:float	timestamp:float

* ``<name>.user`` (optional): one row per user, keyed by ``user_id``, with any
  typed columns (e.g. ``age:token	gender:token``).
* ``<name>.item`` (optional): one row per item, keyed by ``item_id``, with any
  typed columns (e.g. ``movie_title:token_seq	class:token_seq``).

Which columns become features is chosen with :class:`AtomicSpec`: categorical
user / item columns, one ``token_seq`` item column turned into a multi-hot bag
(e.g. genres), a display-title column, the rating column and the timestamp
column. Blank lines are skipped; an empty field is a missing value (code 0).
Ids and categorical vocabularies are sorted numerically when every value is an
integer, else lexicographically, so dense ids and codes are deterministic.
Timestamps are floored to whole seconds.

MovieLens-100K is loaded by :func:`load_movielens_100k`, from a local copy or
straight out of the recbole 1.2.1 wheel, which ships it as example data.
"""
from __future__ import annotations

import csv
import glob
import io
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import pyarrow as pa

from export.data.columnar import (
    PARQUET_SUFFIX,
    ColumnarFallback,
    InterColumns,
    read_atomic_inter,
    read_parquet_inter,
    to_stream,
)
from export.data.dataset import Dataset, Interactions

_INT = re.compile(r"-?[0-9]+")
KNOWN_TYPES = ("token", "token_seq", "float", "float_seq")
REPO_ROOT = Path(__file__).resolve().parent.parent
ML100K = "ml-100k"
RECBOLE_VERSION = "1.2.1"
WHEEL_MEMBER_DIR = "recbole/dataset_example/ml-100k"


class DataError(ValueError):
    """A data file is missing or malformed; the message names file and line."""


@dataclass
class AtomicSpec:
    """Which columns of the atomic files become dataset fields."""

    user_fields: list[str] = field(default_factory=lambda: ["age", "gender", "occupation"])
    item_fields: list[str] = field(default_factory=lambda: ["release_year"])
    item_bag_field: str | None = "class"
    item_title_field: str | None = "movie_title"
    rating_field: str | None = "rating"
    timestamp_field: str = "timestamp"

    @classmethod
    def from_dict(cls, d: dict) -> "AtomicSpec":
        """Build a spec from a plain dict (e.g. parsed config); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AtomicSpec keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------- parsing


@dataclass
class _Table:
    """One parsed atomic file: raw string columns plus 1-based source line numbers."""

    source: str                       # file name used in error messages
    types: dict[str, str]             # column name -> atomic type, in header order
    columns: dict[str, list[str]]     # column name -> raw field strings
    lines: np.ndarray                 # int64 [n_rows] line number of each row

    def __len__(self) -> int:
        return int(self.lines.shape[0])

    def require(self, column: str, what: str) -> list[str]:
        """Column values, or a DataError pointing at the header."""
        if column not in self.columns:
            raise DataError(
                f"{self.source}, line 1: no '{column}' column ({what}); header has "
                f"{list(self.types)}; rename the column or choose another one in AtomicSpec"
            )
        return self.columns[column]


def _parse_table(stream: TextIO, source: str) -> _Table:
    """Parse one atomic file from a text stream (a file or a zip member)."""
    # csv in C with QUOTE_NONE is a fast, exact tab splitter (quotes are data).
    try:
        rows = list(csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not valid UTF-8 ({e}); re-encode the file as UTF-8") from e
    types = _parse_header(rows[0] if rows else None, source)

    # Row i of the reader is line i+1 (QUOTE_NONE: no record spans lines).
    body = rows[1:]
    lines = np.arange(2, len(rows) + 1, dtype=np.int64)
    widths = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    keep = widths > 0                          # blank lines are skipped
    if not keep.all():
        body = [r for r in body if r]
        lines, widths = lines[keep], widths[keep]
    bad = np.flatnonzero(widths != len(types))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{source}, line {lines[i]}: {widths[i]} tab-separated fields but "
                        f"the header has {len(types)}; fix the line (a stray or missing tab?)")
    cols = list(zip(*body)) if body else [()] * len(types)
    return _Table(source, types, {n: list(c) for n, c in zip(types, cols)}, lines)


def _parse_header(header: list[str] | None, source: str) -> dict[str, str]:
    """The typed header (``name:type`` per column) of an atomic file's first line, split at tabs."""
    if header is None or not any(header):
        what = "file is empty" if header is None else "first line is blank"
        raise DataError(f"{source}, line 1: {what}; the first line must be a typed header "
                        f"such as 'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
    types: dict[str, str] = {}
    for col in header:
        name, sep, typ = col.strip().rpartition(":")
        if not sep or not name:
            raise DataError(f"{source}, line 1: header column '{col}' has no ':type' suffix; "
                            f"write it as name:type with type one of {list(KNOWN_TYPES)}")
        if typ not in KNOWN_TYPES:
            raise DataError(f"{source}, line 1: header column '{col}' has unknown type "
                            f"'{typ}'; use one of {list(KNOWN_TYPES)}")
        if name in types:
            raise DataError(f"{source}, line 1: header column '{name}' appears twice; "
                            f"rename one of them")
        types[name] = typ
    return types


def _parse_float(table: _Table, column: str, what: str) -> np.ndarray:
    """A column as float64, rejecting empty, non-numeric and non-finite values."""
    raw = table.require(column, what)
    try:
        values = np.array(raw, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    # Slow path only on error: find the first offending row for the message.
    for i, s in enumerate(raw):
        try:
            ok = np.isfinite(float(s))
        except ValueError:
            ok = False
        if not ok:
            raise DataError(f"{table.source}, line {table.lines[i]}: {column} value {s!r} "
                            f"is not a finite number; fix or remove the line")
    raise AssertionError("unreachable")  # pragma: no cover


def _require_ids(table: _Table, column: str) -> np.ndarray:
    """An id column as a str array, with no empty values."""
    ids = np.array(table.require(column, "required id column"), dtype=str)
    empty = np.flatnonzero(ids == "")
    if empty.size:
        raise DataError(f"{table.source}, line {table.lines[empty[0]]}: empty {column}; "
                        f"every row needs an id")
    return ids


# --------------------------------------------------------------------------- building


def _natural_sort(values: np.ndarray) -> np.ndarray:
    """Unique values sorted numerically when all are integers, else lexicographically."""
    uniq = np.unique(values)
    if uniq.size and all(_INT.fullmatch(v) for v in uniq.tolist()):
        # Python ints: ids longer than int64 (hashes) still sort numerically.
        return np.array(sorted(uniq.tolist(), key=int), dtype=uniq.dtype)
    return uniq


def _encoder(vocab: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Map values (all present in vocab) to their index in vocab."""
    lex = np.argsort(vocab, kind="stable")
    lex_sorted = vocab[lex]
    return lambda values: lex[np.searchsorted(lex_sorted, values)].astype(np.int32)


def _categorical(rows: np.ndarray, raw: list[str], n: int) -> tuple[np.ndarray, list[str]]:
    """Codes [n] (vocab index + 1, 0 = missing) for the table rows at dense ids ``rows``."""
    values = np.array(raw, dtype=str)
    present = values != ""
    vocab = _natural_sort(values[present])
    codes = np.zeros(n, dtype=np.int32)
    codes[rows[present]] = _encoder(vocab)(values[present]) + 1
    return codes, vocab.tolist()


def _side_rows(table: _Table, ids: np.ndarray, key: str, encode) -> np.ndarray:
    """Dense ids of a side table's rows; duplicate keys are an error."""
    rows = encode(ids)
    order = np.argsort(rows, kind="stable")
    dup = np.flatnonzero(np.diff(rows[order]) == 0)
    if dup.size:
        i = int(order[dup[0] + 1])
        raise DataError(f"{table.source}, line {table.lines[i]}: duplicate {key} "
                        f"{str(ids[i])!r}; keep one row per id")
    return rows


def _categorical_block(table: _Table | None, rows: np.ndarray, names: list[str], n: int):
    """Codes [n, len(names)], names, vocab sizes (incl. 0) and values for categorical columns."""
    if table is None:  # no side table: no feature columns at all
        return np.zeros((n, 0), dtype=np.int32), [], [], []
    cols, vocabs = [], []
    for f in names:
        codes, vocab = _categorical(rows, table.require(f, "categorical feature"), n)
        cols.append(codes)
        vocabs.append(vocab)
    mat = np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int32)
    return mat, list(names), [len(v) + 1 for v in vocabs], vocabs


def _plain_inter(table: _Table, spec: AtomicSpec) -> InterColumns:
    """The interaction columns from the plain parser's table: every check names the line at fault."""
    if len(table) == 0:
        raise DataError(f"{table.source}, line 2: no interaction rows after the header; "
                        f"the .inter file needs at least one interaction")
    user = pa.chunked_array([pa.array(_require_ids(table, "user_id").tolist(), pa.string())])
    item = pa.chunked_array([pa.array(_require_ids(table, "item_id").tolist(), pa.string())])
    ts = _parse_float(table, spec.timestamp_field, "interaction timestamp")
    rating = None
    if spec.rating_field is not None and spec.rating_field in table.columns:
        rating = _parse_float(table, spec.rating_field, "rating").astype(np.float32)
    return InterColumns(table.source, user, item, ts, rating)


def _read_inter(source: str, spec: AtomicSpec, columnar: bool, data: bytes | None = None,
                path: Path | None = None) -> InterColumns:
    """The ``.inter`` file's columns: pyarrow's columnar read (``export.data.columnar``), or the plain
    parser when asked for (``columnar`` False, the reference) or when the columnar read hands the file back."""
    if columnar:
        try:
            with (open(path, "rb") if data is None else io.BytesIO(data)) as fh:
                first = fh.readline()
            header = first.decode("utf-8-sig").rstrip("\r\n")
            names = list(_parse_header(header.split("\t") if first else None, source))
            inter = read_atomic_inter(source, names, spec.timestamp_field, spec.rating_field, data=data,
                                      path=path)
            if len(inter):
                return inter
        except (ColumnarFallback, UnicodeDecodeError, DataError):
            pass   # the plain parser reads it exactly, or names the line at fault
    if data is None:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return _plain_inter(_parse_table(f, source), spec)
    return _plain_inter(_parse_table(to_stream(data), source), spec)


def _build(name: str, inter: InterColumns, user: _Table | None, item: _Table | None,
           spec: AtomicSpec) -> Dataset:
    """Assemble a Dataset from the interaction columns and the parsed side tables."""
    # Floor before sorting so the stored int seconds follow the (timestamp, user) order.
    ts = np.floor(inter.timestamp).astype(np.int64)
    # implicit feedback (no rating column): every logged interaction is a positive
    rating = inter.rating if inter.rating is not None else np.ones(len(inter), dtype=np.float32)

    # Ids: union over all files, natural order, so the mapping is deterministic. Only the distinct ids
    # become Python strings; the rows are encoded in Arrow.
    side_user = _require_ids(user, "user_id") if user is not None else np.array([], dtype=str)
    side_item = _require_ids(item, "item_id") if item is not None else np.array([], dtype=str)
    user_ids = _natural_sort(np.concatenate([InterColumns.distinct(inter.user), side_user]))
    item_ids = _natural_sort(np.concatenate([InterColumns.distinct(inter.item), side_item]))
    enc_user, enc_item = _encoder(user_ids), _encoder(item_ids)
    n_users, n_items = len(user_ids), len(item_ids)

    u = InterColumns.encode(inter.user, user_ids)
    i = InterColumns.encode(inter.item, item_ids)
    order = np.lexsort((i, u, ts))  # lexsort is stable; the last key is the primary one
    interactions = Interactions(user=u[order], item=i[order], rating=rating[order],
                                timestamp=ts[order])

    user_rows = _side_rows(user, side_user, "user_id", enc_user) if user is not None else None
    item_rows = _side_rows(item, side_item, "item_id", enc_item) if item is not None else None
    user_cat, user_names, user_vocab, user_values = _categorical_block(
        user, user_rows, spec.user_fields, n_users)
    item_cat, item_names, item_vocab, item_values = _categorical_block(
        item, item_rows, spec.item_fields, n_items)

    item_bag = np.zeros((n_items, 0), dtype=np.uint8)
    bag_names: list[str] = []
    if item is not None and spec.item_bag_field is not None:
        tokens = [s.split() for s in item.require(spec.item_bag_field, "multi-hot bag")]
        flat = np.array([t for row in tokens for t in row], dtype=str)
        owner = np.repeat(item_rows, [len(row) for row in tokens])
        vocab = np.unique(flat)
        item_bag = np.zeros((n_items, len(vocab)), dtype=np.uint8)
        item_bag[owner, np.searchsorted(vocab, flat)] = 1
        bag_names = vocab.tolist()

    titles = [""] * n_items
    if item is not None and spec.item_title_field is not None:
        for row, title in zip(item_rows.tolist(), item.require(spec.item_title_field, "display title")):
            titles[row] = title
    item_titles = np.array(titles, dtype=str)

    return Dataset(
        name=name, user_ids=user_ids, item_ids=item_ids, interactions=interactions,
        user_cat=user_cat, user_cat_names=user_names, user_cat_vocab=user_vocab,
        item_cat=item_cat, item_cat_names=item_names, item_cat_vocab=item_vocab,
        item_bag=item_bag, item_bag_names=bag_names, item_titles=item_titles,
        user_cat_values=user_values, item_cat_values=item_values,
    )


# --------------------------------------------------------------------------- entry points


def load_atomic(directory: str | Path, name: str, spec: AtomicSpec | None = None,
                columnar: bool = True) -> Dataset:
    """Load ``<directory>/<name>.inter`` (or ``<name>.inter.parquet``) plus optional ``.user`` / ``.item`` tables.

    Missing side tables give zero feature columns; users and items are then
    taken from the interaction file alone. Raises :class:`DataError` on
    missing or malformed files. ``columnar`` False reads the log with the
    plain parser (the reference ``tests/test_datasets.py`` compares against).
    """
    directory = Path(directory)
    spec = spec or AtomicSpec()
    tables: dict[str, _Table | None] = {}
    for suffix in ("user", "item"):
        path = directory / f"{name}.{suffix}"
        if not path.is_file():
            tables[suffix] = None
            continue
        with open(path, encoding="utf-8-sig", newline="") as f:
            tables[suffix] = _parse_table(f, str(path))
    path, parquet = directory / f"{name}.inter", directory / f"{name}{PARQUET_SUFFIX}"
    if path.is_file():
        inter = _read_inter(str(path), spec, columnar, path=path)
    elif parquet.is_file():
        try:
            inter = read_parquet_inter(parquet, spec.timestamp_field, spec.rating_field)
        except (ValueError, OSError, pa.ArrowException) as e:
            raise DataError(str(e)) from e
        if len(inter) == 0:
            raise DataError(f"{parquet}: no interaction rows; the log needs at least one interaction")
    else:
        raise DataError(f"{path} not found; point the loader at the directory holding {name}.inter or "
                        f"{parquet.name} (for MovieLens set RECSYS_DATA_DIR or pass data_dir)")
    return _build(name, inter, tables["user"], tables["item"], spec)


def load_from_wheel(wheel: str | Path, name: str = ML100K, spec: AtomicSpec | None = None,
                    member_dir: str = WHEEL_MEMBER_DIR, columnar: bool = True) -> Dataset:
    """Load an atomic dataset straight out of a (recbole) wheel zip, without installing it."""
    spec = spec or AtomicSpec()
    wheel = Path(wheel)
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{wheel}: cannot open as a zip ({e}); delete it so it is downloaded again") from e
    tables: dict[str, _Table | None] = {}
    with zf:
        members = set(zf.namelist())
        for suffix in ("inter", "user", "item"):
            member = f"{member_dir}/{name}.{suffix}"
            source = f"{wheel}!{member}"
            if member not in members:
                if suffix == "inter":
                    raise DataError(f"{source} not found in the wheel; is it recbole=="
                                    f"{RECBOLE_VERSION}? set RECSYS_DATA_DIR to a local copy instead")
                tables[suffix] = None
                continue
            if suffix == "inter":
                inter = _read_inter(source, spec, columnar, data=zf.read(member))
                continue
            with zf.open(member) as raw:
                stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
                tables[suffix] = _parse_table(stream, source)
    return _build(name, inter, tables["user"], tables["item"], spec)


def _ml100k_dir(candidate: Path) -> Path | None:
    """``candidate`` if it holds ml-100k.inter, or its ``ml-100k`` subfolder if that does."""
    for d in (candidate, candidate / ML100K):
        if (d / f"{ML100K}.inter").is_file():
            return d
    return None


def _recbole_wheel(cache_dir: Path) -> Path:
    """The cached recbole wheel, downloaded with pip (no install) when absent."""
    found = sorted(glob.glob(str(cache_dir / f"recbole-{RECBOLE_VERSION}-*.whl")))
    if found:
        return Path(found[-1])
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           f"recbole=={RECBOLE_VERSION}", "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(glob.glob(str(cache_dir / f"recbole-{RECBOLE_VERSION}-*.whl")))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"{ML100K}.inter not found locally and downloading recbole=={RECBOLE_VERSION} failed "
            f"({' / '.join(tail) or 'no wheel written'}); set RECSYS_DATA_DIR to a directory with "
            f"{ML100K}.inter/.user/.item, or put recbole-{RECBOLE_VERSION}-*.whl into {cache_dir}"
        )
    return Path(found[-1])


def load_movielens_100k(data_dir: str | Path | None = None) -> Dataset:
    """Load MovieLens-100K.

    Looks in order at: ``data_dir``; ``$RECSYS_DATA_DIR``; ``<repo>/../shared/data/ml-100k``;
    finally the recbole 1.2.1 wheel in ``<repo>/.cache/recbole/`` (downloaded with
    ``pip download`` when absent; read as a zip, never installed). An explicit
    ``data_dir`` or ``RECSYS_DATA_DIR`` must hold the files (directly or in an
    ``ml-100k`` subfolder); it is an error, not a fallback, when it does not.
    """
    explicit = data_dir if data_dir is not None else os.environ.get("RECSYS_DATA_DIR") or None
    if explicit is not None:
        found = _ml100k_dir(Path(explicit))
        if found is None:
            origin = "data_dir" if data_dir is not None else "RECSYS_DATA_DIR"
            raise DataError(f"{Path(explicit) / (ML100K + '.inter')} not found; set RECSYS_DATA_DIR "
                            f"(here from {origin}) to the directory holding {ML100K}.inter/.user/.item")
        return load_atomic(found, ML100K)
    shared = _ml100k_dir(REPO_ROOT.parent / "shared" / "data" / ML100K)
    if shared is not None:
        return load_atomic(shared, ML100K)
    return load_from_wheel(_recbole_wheel(REPO_ROOT / ".cache" / "recbole"))
