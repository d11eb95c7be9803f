"""Request-time item attribute filters: the snapshot's attribute schema, compact per-item attribute arrays,
validation of a request's conditions against the schema, and the vectorised eligibility test.

Attributes come from the snapshot's item features, built once per snapshot (never per request):

* ``genre``: the multi-hot bag (``item_bag``, names ``schema.bag_names``), categorical with several values
  per item, packed into uint64 words per item so ``any_of`` / ``none_of`` are one AND over ``[n_items, W]``;
* every ``item_cat`` field whose raw values export recorded (``schema.item_cat_values``): numeric when nearly
  every value parses as a number (``release_year``: float64 per item, NaN when unknown), else categorical (int32
  codes, 0 unknown; e.g. the synthetic catalogue's ``category``, ``price_band``).

A request's conditions are ANDed. Compiling checks them against the schema and raises ``FilterError`` whose
message names the offending field (``filters[2].range.min``), which the servers return as INVALID_ARGUMENT.
Conditions are duck-typed: ``recsys.v2.AttributeFilter`` and ``recsys.stage.v1.AttributeFilter`` have the
same shape. Evaluation is numpy over whole arrays (``mask``) or a subset of items (``matches``): ~1 ms per
condition at 10^6 items, no per-item Python.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from common.client_text import clip

BAG_ATTRIBUTE = "genre"  # the multi-hot bag's attribute name (MovieLens genres, synthetic tags)


class FilterError(ValueError):
    """A condition the schema cannot satisfy or that is malformed; the message names the field."""


@dataclass
class FilterLimits:
    """Bounds on a request's filters (bad input must be refused cheaply, never evaluated)."""

    max_filters: int = 16            # conditions per request
    max_values: int = 1000           # values in one any_of / none_of

    def validate(self) -> None:
        if self.max_filters < 1 or self.max_values < 1:
            raise ValueError("filters.max_filters and filters.max_values must be >= 1")


@dataclass
class Attribute:
    """One filterable attribute over the snapshot's dense item ids."""

    name: str
    kind: str                                  # "categorical" or "numeric"
    values: list[str] = field(default_factory=list)    # categorical: value names (index = value number)
    codes: np.ndarray | None = None            # single-valued categorical: int32 [n_items], value number + 1, 0 none
    words: np.ndarray | None = None            # multi-valued categorical: uint64 [n_items, W] value bits
    numbers: np.ndarray | None = None          # numeric: float64 [n_items], NaN when unknown

    def value_index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.values)}


@dataclass
class AttributeTable:
    """Every filterable attribute of one snapshot."""

    n_items: int
    attributes: dict[str, Attribute]

    def describe(self) -> str:
        """``genre (categorical), release_year (numeric)``: for error messages."""
        return ", ".join(f"{a.name} ({a.kind})" for a in self.attributes.values()) or "none"

    def item_attributes(self, item: int) -> list[tuple[str, list[str], float | None]]:
        """(name, categorical values, number) of every attribute of one item (debug replies)."""
        out = []
        for a in self.attributes.values():
            if a.kind == "numeric":
                v = float(a.numbers[item])
                out.append((a.name, [], None if math.isnan(v) else v))
            elif a.words is not None:
                bits = np.unpackbits(a.words[item].view(np.uint8), bitorder="little")[: len(a.values)]
                out.append((a.name, [a.values[j] for j in np.flatnonzero(bits)], None))
            else:
                code = int(a.codes[item])
                out.append((a.name, [a.values[code - 1]] if code else [], None))
        return out


def pack_bits(bag: np.ndarray) -> np.ndarray:
    """A multi-hot matrix [n, G] as uint64 words [n, ceil(G / 64)], bit j of word j // 64 = column j."""
    n, g = bag.shape
    width = max(1, -(-g // 64))
    padded = np.zeros((n, width * 64), np.uint8)
    padded[:, :g] = np.asarray(bag) != 0
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").reshape(n, width).astype(np.uint64)


NUMERIC_SHARE = 0.9  # a field is numeric when this share of its values parse as numbers (the rest: no value)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _numeric(values: list[str]) -> np.ndarray | None:
    """The values as numbers (NaN where one does not parse: ML-100K's release_year has "unkonwn" and "V"), or
    None when fewer than NUMERIC_SHARE of them parse (a categorical field)."""
    numbers = np.array([_number(v) for v in values], np.float64)
    return numbers if values and np.isfinite(numbers).mean() >= NUMERIC_SHARE else None


def build_attribute_table(schema: dict, item_cat: np.ndarray, item_bag: np.ndarray) -> AttributeTable:
    """The filterable attributes of a snapshot from its manifest ``schema`` and item feature arrays."""
    n_items = int(item_bag.shape[0] if item_bag.ndim == 2 else item_cat.shape[0])
    attributes: dict[str, Attribute] = {}
    bag_names = [str(v) for v in schema.get("bag_names", [])]
    if bag_names and item_bag.ndim == 2 and item_bag.shape[1] == len(bag_names):
        attributes[BAG_ATTRIBUTE] = Attribute(BAG_ATTRIBUTE, "categorical", bag_names, words=pack_bits(item_bag))
    cat_values = schema.get("item_cat_values") or []  # absent in snapshots exported before filters existed
    for f, (name, values) in enumerate(zip(schema.get("item_cat_names", []), cat_values)):
        if name in attributes or f >= item_cat.shape[1]:
            continue
        values = [str(v) for v in values]
        codes = item_cat[:, f].astype(np.int32)
        numbers = _numeric(values)
        if numbers is not None:  # code c -> values[c - 1]; code 0 (unknown) -> NaN
            lookup = np.concatenate([[np.nan], numbers])
            attributes[name] = Attribute(name, "numeric", numbers=lookup[np.clip(codes, 0, len(values))])
        else:
            attributes[name] = Attribute(name, "categorical", values, codes=np.clip(codes, 0, len(values)))
    return AttributeTable(n_items, attributes)


def load_attribute_table(snapshot) -> AttributeTable:
    """``build_attribute_table`` over a ``common.snapshot.Snapshot``'s features."""
    return build_attribute_table(snapshot.schema, snapshot.features.array("item_cat"),
                                 snapshot.features.array("item_bag"))


@dataclass(frozen=True)
class Condition:
    """One compiled condition."""

    attribute: Attribute
    op: str                       # "any_of", "none_of", "range"
    selected: np.ndarray | None   # any_of / none_of: bool lookup over codes, or uint64 [W] word mask
    low: float = -math.inf
    high: float = math.inf

    def test(self, ids: np.ndarray | None) -> np.ndarray:
        """Bool per item of ``ids`` (None: every item) satisfying the condition."""
        a = self.attribute
        if self.op == "range":
            x = a.numbers if ids is None else a.numbers[ids]
            return (x >= self.low) & (x <= self.high)  # NaN compares False: no value, no match
        if a.words is not None:
            w = a.words if ids is None else a.words[ids]
            if w.shape[1] == 1:  # up to 64 values: one AND per item, no [n, W] temporary
                hit = (w[:, 0] & self.selected[0]) != 0
            else:
                hit = (w & self.selected).any(axis=1)
        else:
            codes = a.codes if ids is None else a.codes[ids]
            chosen = np.flatnonzero(self.selected)
            # one value: a comparison, several times faster than a gather over a lookup table at 10^6 items
            hit = codes == chosen[0] if chosen.size == 1 else self.selected[codes]
        return hit if self.op == "any_of" else ~hit


@dataclass(frozen=True)
class ItemFilter:
    """A request's conditions, ANDed."""

    conditions: tuple[Condition, ...]
    n_items: int
    nothing: bool = False         # no item is eligible (a filter another snapshot cannot express)

    def mask(self) -> np.ndarray:
        """Bool [n_items]: the eligible items."""
        out = np.full(self.n_items, not self.nothing, np.bool_)
        for c in self.conditions:
            out &= c.test(None)
        return out

    def matches(self, ids: np.ndarray) -> np.ndarray:
        """Bool per item of ``ids`` (dense ids): whether it satisfies every condition."""
        ids = np.asarray(ids, np.int64)
        out = np.full(ids.size, not self.nothing, np.bool_)
        for c in self.conditions:
            out &= c.test(ids)
        return out


def _values_condition(where: str, attribute: Attribute, op: str, values, limits: FilterLimits,
                      echo: int) -> Condition:
    if attribute.kind != "categorical":
        raise FilterError(f"{where}.{op}: attribute '{attribute.name}' is numeric; use range")
    values = list(values)
    if not values:
        raise FilterError(f"{where}.{op}.values must not be empty")
    if len(values) > limits.max_values:
        raise FilterError(f"{where}.{op}.values has {len(values)} values, the limit is {limits.max_values}")
    index = attribute.value_index()
    chosen = []
    for j, v in enumerate(values):
        if v not in index:
            known = clip(", ".join(attribute.values), echo)
            raise FilterError(f"{where}.{op}.values[{j}]: '{clip(v, echo)}' is not a value of "
                              f"{attribute.name}; known: {known}")
        chosen.append(index[v])
    if attribute.words is not None:
        bits = np.zeros((1, len(attribute.values)), np.uint8)
        bits[0, chosen] = 1
        selected = pack_bits(bits)[0]
    else:
        selected = np.zeros(len(attribute.values) + 1, np.bool_)
        selected[np.asarray(chosen) + 1] = True
    return Condition(attribute, op, selected)


def _range_condition(where: str, attribute: Attribute, rng) -> Condition:
    if attribute.kind != "numeric":
        raise FilterError(f"{where}.range: attribute '{attribute.name}' is categorical; use any_of or none_of")
    has_min, has_max = rng.HasField("min"), rng.HasField("max")
    if not (has_min or has_max):
        raise FilterError(f"{where}.range: set min, max or both")
    low = rng.min if has_min else -math.inf
    high = rng.max if has_max else math.inf
    for bound, value in (("min", low), ("max", high)):
        if math.isnan(value):
            raise FilterError(f"{where}.range.{bound} is NaN")
    if low > high:
        raise FilterError(f"{where}.range: min {low:g} > max {high:g}, no item can satisfy it")
    return Condition(attribute, "range", None, low, high)


def compile_filters(filters, table: AttributeTable, limits: FilterLimits, echo: int = 200) -> ItemFilter | None:
    """Check a request's ``filters`` against ``table`` and compile them; None when there are none.

    FilterError naming the field: too many conditions, an empty or unknown attribute, no condition set,
    a condition of the wrong kind for the attribute, empty / too many / unknown values, a range without
    bounds, a NaN bound, or min > max. ``echo`` bounds client text quoted in the message.
    """
    filters = list(filters)
    if not filters:
        return None
    if len(filters) > limits.max_filters:
        raise FilterError(f"filters has {len(filters)} conditions, the limit is {limits.max_filters}")
    conditions = []
    for i, f in enumerate(filters):
        where = f"filters[{i}]"
        if not f.attribute:
            raise FilterError(f"{where}.attribute must not be empty")
        attribute = table.attributes.get(f.attribute)
        if attribute is None:
            raise FilterError(f"{where}.attribute: unknown attribute '{clip(f.attribute, echo)}'; "
                              f"known: {table.describe()}")
        op = f.WhichOneof("condition")
        if op is None:
            raise FilterError(f"{where}: set one of any_of, none_of, range")
        if op == "range":
            conditions.append(_range_condition(where, attribute, f.range))
        else:
            conditions.append(_values_condition(where, attribute, op, getattr(f, op).values, limits, echo))
    return ItemFilter(tuple(conditions), table.n_items)
