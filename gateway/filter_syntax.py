"""The CLI's filter syntax: one condition per string, parsed into a ``recsys.v2.AttributeFilter``.

    genre in Comedy,Drama          any_of   (the item has at least one of the values)
    genre not in Horror,Thriller   none_of  (the item has none of them)
    release_year >= 1995           range    min (inclusive)
    release_year <= 1999           range    max (inclusive)
    release_year = 1995            range    min = max

Values are separated by commas (spaces around them are dropped); several ``--filter`` options are ANDed.
Whether the attribute exists and has that kind is checked by the gateway against the served snapshot.
"""
from __future__ import annotations

import re

from recsys.v2 import recommend_service_pb2 as recommend_pb2

_SET = re.compile(r"^\s*(?P<attr>[^\s<>=!]+)\s+(?P<neg>not\s+)?in\s+(?P<values>.+?)\s*$")
_CMP = re.compile(r"^\s*(?P<attr>[^\s<>=!]+)\s*(?P<op>>=|<=|=)\s*(?P<number>\S+)\s*$")


def parse_filter(text: str) -> recommend_pb2.AttributeFilter:
    """One condition in the syntax above; ValueError saying what was wrong and the accepted forms."""
    m = _SET.match(text)
    if m:
        values = [v.strip() for v in m["values"].split(",")]
        if not all(values):
            raise ValueError(f"filter {text!r}: empty value in the list; write e.g. 'genre in Comedy,Drama'")
        op = "none_of" if m["neg"] else "any_of"
        return recommend_pb2.AttributeFilter(attribute=m["attr"], **{op: recommend_pb2.ValueSet(values=values)})
    m = _CMP.match(text)
    if m:
        try:
            number = float(m["number"])
        except ValueError:
            raise ValueError(f"filter {text!r}: {m['number']!r} is not a number") from None
        bounds = {">=": {"min": number}, "<=": {"max": number}, "=": {"min": number, "max": number}}[m["op"]]
        return recommend_pb2.AttributeFilter(attribute=m["attr"], range=recommend_pb2.Range(**bounds))
    raise ValueError(f"filter {text!r} not understood; use 'ATTR in V1,V2', 'ATTR not in V1,V2', "
                     f"'ATTR >= N', 'ATTR <= N' or 'ATTR = N'")
