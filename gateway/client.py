"""A small typed client for ``recsys.v2.RecommendService``, and the ``recommend`` CLI for people.

    client = RecommendClient("127.0.0.1:50050")
    rec = client.recommend("196", k=20, filters=["genre in Comedy", "release_year >= 1995"])
    for item in rec.items: print(item.item_id, item.score, item.channels)

Retries only on UNAVAILABLE (the server was not reached, so a retry cannot duplicate work), with a
short exponential backoff, all within the call's deadline. RESOURCE_EXHAUSTED is never retried here: a
Feedback call answered so found the feedback store full (permanent until an operator changes
``feedback.map_size_mb`` / ``max_users`` / ``max_log_events``; the details say which), and a Recommend call
answered so was shed by admission control (the caller decides when to come back).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import grpc

from common.server import channel_options
from common.tls import open_channel
from gateway.filter_syntax import parse_filter
from recsys.v2 import recommend_service_pb2 as recommend_pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc


@dataclass
class Item:
    item_id: str
    score: float
    task_scores: dict[str, float]
    channels: list[str]
    title: str = ""                                                   # debug only
    attributes: dict[str, list[str] | float] = field(default_factory=dict)  # debug only


@dataclass
class Recommendation:
    items: list[Item]
    stage_ms: dict[str, float]
    degraded: list[str]
    snapshot_version: str
    request_id: str
    eligible_items: int = 0       # with filters: catalogue items satisfying them
    fewer_than_k: bool = False    # the list is shorter than k (the filters left fewer eligible items)
    quality_level: int = 0        # 0: the full funnel; higher: fewer candidates under load (gateway.quality)
    raw: recommend_pb2.RecommendResponse = field(repr=False, default=None)


def parse_response(reply: recommend_pb2.RecommendResponse) -> Recommendation:
    """The v2 reply as plain dataclasses."""
    items = [Item(it.item_id, it.score, dict(it.task_scores), list(it.channels), it.title,
                  {a.name: a.number if a.HasField("number") else list(a.values) for a in it.attributes})
             for it in reply.items]
    return Recommendation(items, {t.stage: t.ms for t in reply.stage_timings}, list(reply.degraded_stages),
                          reply.snapshot_version, reply.request_id, reply.eligible_items, reply.fewer_than_k,
                          reply.quality_level, reply)


class RecommendClient:
    """Long-lived channel to one gateway; thread safe."""

    def __init__(self, addr: str, timeout_s: float = 1.0, retries: int = 2, max_message_mb: int = 16,
                 tls_ca: str = "", tls_cert: str = "", tls_key: str = ""):
        """``tls_ca`` (PEM) verifies a TLS gateway; ``tls_cert`` + ``tls_key`` add a client certificate (mTLS)."""
        self.channel = open_channel(addr, channel_options(max_message_mb), tls_ca, tls_cert, tls_key)
        self.stub = recommend_grpc.RecommendServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.retries = retries

    def recommend(self, user_id: str, k: int = 20, exclude: list[str] = (), deadline_ms: int = 0,
                  timestamp: int = 0, debug: bool = False, timeout_s: float | None = None,
                  filters=(), include_exposed: bool = False) -> Recommendation:
        """One Recommend call; raises ``grpc.RpcError`` for anything but a transient UNAVAILABLE.

        ``filters``: ``recsys.v2.AttributeFilter`` messages or strings in ``gateway.filter_syntax`` (ValueError
        when one does not parse), ANDed. ``include_exposed``: also items the user was recently shown.
        """
        request = recommend_pb2.RecommendRequest(
            user_id=user_id, k=k, exclude_item_ids=list(exclude), deadline_ms=deadline_ms, debug=debug,
            context=recommend_pb2.Context(timestamp=timestamp),
            filters=[parse_filter(f) if isinstance(f, str) else f for f in filters], include_exposed=include_exposed)
        return parse_response(self._call(self.stub.Recommend, request, timeout_s))

    def feedback(self, events, timeout_s: float | None = None) -> recommend_pb2.FeedbackResponse:
        """Send a batch of events (``recsys.v2.FeedbackEvent`` messages, or ``feedback.events.Event``); the
        reply lists rejected, duplicate and unknown-item indices. Retried on UNAVAILABLE: events with an
        ``event_id`` are applied once, so a retry after a lost reply does not count them twice."""
        request = recommend_pb2.FeedbackRequest(events=[e if isinstance(e, recommend_pb2.FeedbackEvent) else
                                                        recommend_pb2.FeedbackEvent(
                                                            user_id=e.user_id, item_id=e.item_id, type=int(e.type),
                                                            value=e.value, timestamp=e.timestamp,
                                                            request_id=e.request_id, event_id=e.event_id)
                                                        for e in events])
        return self._call(self.stub.Feedback, request, timeout_s)

    def _call(self, method, request, timeout_s: float | None):
        """``method(request)`` within the timeout, retrying a transient UNAVAILABLE with backoff (nothing else:
        RESOURCE_EXHAUSTED in particular is raised at once, see the module docstring)."""
        end = time.monotonic() + (timeout_s or self.timeout_s)
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=max(end - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(min(0.05 * 2 ** attempt, max(end - time.monotonic(), 0)))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RecommendClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``recommend USER [--k 20] [--addr host:port] [--filter 'genre in Comedy']``: print one list."""
    parser = argparse.ArgumentParser(prog="recommend", description="Ask the gateway what USER should see next")
    parser.add_argument("user_id")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--addr", default="127.0.0.1:50050")
    parser.add_argument("--exclude", action="append", default=[], help="item id never to return; repeatable")
    parser.add_argument("--deadline-ms", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=2.0, help="client-side timeout, seconds")
    parser.add_argument("--filter", action="append", default=[], metavar="COND",
                        help="only items satisfying COND; repeatable (ANDed): 'genre in Comedy,Drama', "
                             "'genre not in Horror', 'release_year >= 1995', 'release_year <= 1999', "
                             "'release_year = 1995'")
    args = parser.parse_args(argv)
    try:
        filters = [parse_filter(text) for text in args.filter]
    except ValueError as exc:
        parser.error(str(exc))  # exit 2 with the usage line
    try:
        with RecommendClient(args.addr, timeout_s=args.timeout) as client:
            rec = client.recommend(args.user_id, args.k, args.exclude, args.deadline_ms, debug=True, filters=filters)
    except grpc.RpcError as exc:
        print(f"recommend: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    print(format_recommendation(args.user_id, rec))
    return 0


def format_recommendation(user_id: str, rec: Recommendation) -> str:
    """A readable table of one reply."""
    lines = [f"user {user_id}  snapshot {rec.snapshot_version}  degraded: {', '.join(rec.degraded) or 'none'}"
             + (f"  quality level {rec.quality_level}" if rec.quality_level else ""),
             "  " + "  ".join(f"{s} {ms:.2f} ms" for s, ms in rec.stage_ms.items())]
    if rec.eligible_items:
        lines.append(f"  filters keep {rec.eligible_items} items" + ("; fewer than k eligible for this user"
                                                                     if rec.fewer_than_k else ""))
    for rank, item in enumerate(rec.items, 1):
        lines.append(f"  {rank:>3}. {item.item_id:>6}  {item.score:.4f}  {item.title[:42]:<42}  "
                     f"{'+'.join(item.channels)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
