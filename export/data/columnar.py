"""The interaction log as typed columns, read with pyarrow (an atomic ``.inter`` file or Parquet).

The log is the one file that grows with the data (10^8 rows and more), so it is never split into one Python
string per field: pyarrow reads the tab-separated file (or a Parquet file) in C++ into Arrow columns, the
ids stay Arrow strings until they are encoded against the (small) id vocabularies, and the timestamp and
rating become float arrays directly. The side tables (one row per user or item) stay with the plain parser
in ``export.data.atomic``.

Exactness. This path must give the arrays the plain parser gives. Whenever it meets what it cannot read
the same way (a malformed row, an empty id, a value Arrow does not parse as a number, invalid UTF-8) it
raises :class:`ColumnarFallback`, and the caller re-reads the file with the plain parser, which either
accepts it or raises the ``DataError`` naming the offending line, as before.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

PARQUET_SUFFIX = ".inter.parquet"


class ColumnarFallback(Exception):
    """This file needs the plain parser (to read it exactly as before, or to name the line at fault)."""


@dataclass
class InterColumns:
    """The interaction log's columns: external ids per row (Arrow strings), timestamp and rating."""

    source: str
    user: pa.ChunkedArray          # string, one external user id per row
    item: pa.ChunkedArray          # string, one external item id per row
    timestamp: np.ndarray          # float64 seconds (floored by the caller)
    rating: np.ndarray | None      # float32, or None when the log has no rating column

    def __len__(self) -> int:
        return len(self.timestamp)

    @staticmethod
    def distinct(column: pa.ChunkedArray) -> np.ndarray:
        """The distinct values of an id column as a numpy str array (one object per distinct id, not per row)."""
        return np.asarray(pc.unique(column).to_pylist(), dtype=str)

    @staticmethod
    def encode(column: pa.ChunkedArray, vocab: np.ndarray) -> np.ndarray:
        """Each row's index into ``vocab`` (which holds every value of the column), int32."""
        codes = pc.index_in(column, value_set=pa.array(vocab.tolist(), pa.string()))
        if codes.null_count:   # cannot happen for a vocab built from the column; never guess
            raise ValueError("an id is missing from its vocabulary")
        return codes.to_numpy().astype(np.int32, copy=False)


def _csv_columns(source_bytes: bytes | None, path: Path | None, names: list[str], wanted: list[str]) -> pa.Table:
    read = pacsv.ReadOptions(skip_rows=1, column_names=names, block_size=16 << 20)
    # tabs only: quotes are data, as in the plain parser (csv.QUOTE_NONE); blank lines are skipped
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, double_quote=False,
                               newlines_in_values=False, ignore_empty_lines=True)
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                                   include_columns=wanted)
    src = pa.BufferReader(source_bytes) if source_bytes is not None else str(path)
    try:
        return pacsv.read_csv(src, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise ColumnarFallback(str(exc)) from exc


def _float_column(table: pa.Table, name: str) -> np.ndarray:
    try:
        values = pc.cast(table.column(name), pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ColumnarFallback(f"{name}: {exc}") from exc
    if not np.isfinite(values).all():
        raise ColumnarFallback(f"{name}: not finite")
    return values


def _id_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    column = table.column(name)
    if column.null_count or pc.any(pc.equal(column, "")).as_py():
        raise ColumnarFallback(f"{name}: empty id")
    return column


def read_atomic_inter(source: str, names: list[str], timestamp_field: str, rating_field: str | None,
                      data: bytes | None = None, path: Path | None = None) -> InterColumns:
    """The columns of an atomic ``.inter`` file whose header (``names``) the caller has checked.

    ``data`` (a zip member's bytes) or ``path``. Raises :class:`ColumnarFallback` when the plain parser
    must read it.
    """
    has_rating = rating_field is not None and rating_field in names
    wanted = ["user_id", "item_id", timestamp_field] + ([rating_field] if has_rating else [])
    if any(w not in names for w in wanted):
        raise ColumnarFallback("a required column is missing")   # the plain parser names it
    table = _csv_columns(data, path, names, list(dict.fromkeys(wanted)))
    rating = _float_column(table, rating_field).astype(np.float32) if has_rating else None
    return InterColumns(source, _id_column(table, "user_id"), _id_column(table, "item_id"),
                        _float_column(table, timestamp_field), rating)


def read_parquet_inter(path: Path, timestamp_field: str, rating_field: str | None) -> InterColumns:
    """The columns of ``<name>.inter.parquet`` (the layout is in README.md, "Bring your own logs").

    ``user_id`` and ``item_id`` may be strings or integers (integers become their decimal strings, so ids
    sort and encode as in an atomic file); the timestamp (seconds) and the optional rating are numeric.
    Nulls and empty ids are a ``ValueError`` naming the column and the first row at fault.
    """
    schema = pq.read_schema(path)
    has_rating = rating_field is not None and rating_field in schema.names
    wanted = ["user_id", "item_id", timestamp_field] + ([rating_field] if has_rating else [])
    missing = [w for w in wanted if w not in schema.names]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} column; the Parquet log needs user_id, item_id and "
                         f"{timestamp_field} (see README.md, Bring your own logs); it has {schema.names}")
    table = pq.read_table(path, columns=list(dict.fromkeys(wanted)))

    def first_bad(mask: pa.ChunkedArray) -> int:
        return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])

    def ids(name: str) -> pa.ChunkedArray:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type)
                or pa.types.is_large_string(column.type)):
            raise ValueError(f"{path}: {name} must be strings or integers, got {column.type}")
        column = pc.cast(column, pa.string())   # integers become their decimal strings
        if column.null_count or pc.any(pc.equal(column, "")).as_py():
            bad = pc.or_kleene(pc.is_null(column), pc.equal(column, "")).fill_null(True)
            raise ValueError(f"{path}: row {first_bad(bad)}: {name} is missing; every row needs an id")
        return column

    def numbers(name: str) -> np.ndarray:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise ValueError(f"{path}: {name} must be numeric, got {column.type}")
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(values)   # nulls come out as NaN
        if bad.any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0])}: {name} is missing or not finite")
        return values

    rating = numbers(rating_field).astype(np.float32) if has_rating else None
    return InterColumns(str(path), ids("user_id"), ids("item_id"), numbers(timestamp_field), rating)


def to_stream(data: bytes) -> io.TextIOWrapper:
    """A zip member's bytes as the text stream the plain parser reads."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
