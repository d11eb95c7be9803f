"""Configuration of the feedback store, shared by its writer (the gateway) and its readers (recall, rank).

Size of the store (LMDB, 4 KiB pages; measured on this code with ``txn.stat`` per database, 3,000-20,000 users):

* per user: one record of 24 + 2 * filter bytes + per history entry 18 bytes + the item id. With the
  defaults (1,000 impressions at 0.5%: 1,379 bytes per Bloom generation) that is 2.8 KB with no history,
  3.3 KB with 20 entries and 4.1 KB with 50 entries of 8-byte item ids. LMDB stores a value over ~2 KB in
  whole overflow pages: measured 4,137 bytes per user (one page and its B-tree entry) up to a ~3.9 KB
  record, 8,221 bytes (two pages) for a full default history of 8-byte ids (6-byte ids still fit one page);
  plus 57-69 bytes for the activity index (``last_active``, ``by_active``). ``user_bytes`` plans the full
  history with ``HISTORY_ITEM_BYTES`` ids: 8,352 bytes at the defaults.
* per event: the log record (25 bytes + user, item, request and event ids) and its event id's entry in
  ``ids``. Measured 157 bytes per event (log 118 + ids 39) with 9-byte user, 8-byte item, 36-byte request
  and 21-byte event ids; random event ids fill ``ids`` pages less (~70%). ``EVENT_BYTES`` plans 200.

Both are bounded: the log by ``max_log_events`` (compaction by count), the users by ``max_users`` and
``max_user_age_s`` (the least recently active users' state is evicted in the appending transaction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

PAGE = 4096
# the store's planning figures (bytes): an event with typical ids (see the module docstring), the B-tree
# entries a user costs beside its record, and the item id length assumed for a history entry
EVENT_BYTES = 200
USER_INDEX_BYTES = 160
HISTORY_ITEM_BYTES = 8
# LMDB needs free pages beyond the live data (copy-on-write: a write transaction's new pages, the pages
# readers still see, the free list): the bounds are planned to fill at most this share of the map
FILL = 0.8
# and among that share, room for the records two transactions rewrite (a user's record is rewritten whole
# on every write, and its old pages are reusable only two commits later): measured ~1.9 batches' worth of
# user pages above the live data in a flood of new users
CHURN_TXNS = 2


@dataclass
class FeedbackConfig:
    """Where the real-time state lives and how much of it is kept (``feedback.store``)."""

    # the LMDB environment beside the snapshots (outlives snapshot swaps); "" turns feedback off
    path: str = ""
    map_size_mb: int = 4096          # LMDB's address-space reservation; disk use grows with what is written
    history_len: int = 50            # recent positive items kept per user (clicks, likes, ratings)
    # exposure filter: items impressed within window_s are not recommended again. Two Bloom generations of
    # window_s each, so an exposure is filtered for between window_s and 2 * window_s (feedback.user_state)
    exposure_window_s: float = 86400.0
    exposure_capacity: int = 1000    # impressions per user per generation the filter is sized for
    exposure_fp_rate: float = 0.005  # false-positive rate at that capacity (the issue asks <= 1%: margin for noise)
    max_log_events: int = 10_000_000  # the event log keeps the newest this many; older ones are compacted away
    # users whose real-time state is kept; past it the least recently active users' state (history, exposure
    # filter) is evicted in the appending write (they fall back to the snapshot's view, or cold start).
    # 0: derived from map_size_mb (``user_cap``): what is left of FILL * map after the log's share
    # (max_log_events * EVENT_BYTES, at most half) and write room (``churn_bytes``), at ``user_bytes`` per
    # user. Defaults (4096 MB, 10^7 events): 185,697 users; 24 MB with 2,000 log events: 1,759.
    max_users: int = 0
    # evict a user's state once the user has sent no feedback for this long (seconds); 0: no age limit
    max_user_age_s: float = 0.0
    max_batch: int = 10_000          # events per Feedback call
    # the gateway's writer: true, a syncer thread makes each committed group durable (one fdatasync) and
    # answers its calls while the writer commits the next group; false, the writer syncs and answers each
    # group itself before the next. Either way a call is answered only once durable. True cut the click's
    # wait under ingest but made groups smaller, costing ~10 more CPU-ms per 1,000 events in calls of 50
    # (docs/results/2026-12-07-click-to-visible.md), so it is off by default
    sync_pipeline: bool = False
    max_future_s: float = 300.0      # clock skew tolerated on event timestamps
    max_id_len: int = 256            # user / item / request / event id length limit
    rating_min: float = 0.0
    rating_max: float = 5.0

    def user_bytes(self) -> int:
        """Planned bytes of one user's state at its largest (full history): whole LMDB pages of the record
        (an overflow value: a 16-byte page header, then the record) plus its B-tree entries."""
        m_bits = math.ceil(-self.exposure_capacity * math.log(self.exposure_fp_rate) / math.log(2) ** 2)
        record = 24 + 2 * ((m_bits + 7) // 8) + self.history_len * (18 + HISTORY_ITEM_BYTES)
        if record + 80 <= 2040:  # small enough to sit in a leaf page (pages ~70% full) rather than overflow
            return math.ceil((record + 80) / 0.7) + USER_INDEX_BYTES
        return math.ceil((16 + record) / PAGE) * PAGE + USER_INDEX_BYTES

    def log_bytes(self) -> int:
        """The log's share of the map in the plan: ``max_log_events * EVENT_BYTES``, at most half of it."""
        return min(self.max_log_events * EVENT_BYTES, int(self.map_size_mb * 2**20 * FILL) // 2)

    def churn_bytes(self) -> int:
        """Room planned for copy-on-write: ``CHURN_TXNS`` batches of ``max_batch`` users' records, at most a
        quarter of the planned share (a small map then refuses the largest batches: RESOURCE_EXHAUSTED)."""
        return min(CHURN_TXNS * self.max_batch * self.user_bytes(), int(self.map_size_mb * 2**20 * FILL) // 4)

    def user_room(self) -> int:
        """Bytes planned for users' state: ``FILL`` of the map less the log's share and the churn room."""
        return int(self.map_size_mb * 2**20 * FILL) - self.log_bytes() - self.churn_bytes()

    def user_cap(self) -> int:
        """``max_users``, or when 0 the users that fit in ``user_room`` (at least 1)."""
        if self.max_users:
            return self.max_users
        return max(1, self.user_room() // self.user_bytes())

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key (and, for the store's size, the keys to change)."""
        checks = [
            ("feedback.map_size_mb", self.map_size_mb >= 1), ("feedback.history_len", 1 <= self.history_len <= 10000),
            ("feedback.exposure_window_s", self.exposure_window_s > 0),
            ("feedback.exposure_capacity", 1 <= self.exposure_capacity <= 10**6),
            ("feedback.exposure_fp_rate", 0.0 < self.exposure_fp_rate <= 0.5),
            ("feedback.max_log_events", self.max_log_events >= 1), ("feedback.max_batch", self.max_batch >= 1),
            ("feedback.max_future_s", self.max_future_s >= 0), ("feedback.max_id_len", 1 <= self.max_id_len <= 60000),
            ("feedback.rating_max", self.rating_max > self.rating_min),
            ("feedback.max_users", self.max_users >= 0), ("feedback.max_user_age_s", self.max_user_age_s >= 0),
        ]
        for key, ok in checks:
            if not ok:
                raise ValueError(f"{key} is out of range: {getattr(self, key.split('.')[1])!r}")
        if self.max_users and self.max_users * self.user_bytes() > self.user_room():
            need = self.max_users * self.user_bytes() + self.log_bytes() + self.churn_bytes()
            raise ValueError(
                f"feedback.max_users={self.max_users} does not fit in feedback.map_size_mb={self.map_size_mb}: "
                f"{self.max_users} users at ~{self.user_bytes()} bytes, the log's {self.log_bytes() >> 20} MB "
                f"(feedback.max_log_events={self.max_log_events}) and {self.churn_bytes() >> 20} MB of write room "
                f"(feedback.max_batch={self.max_batch}) need {-(-need >> 20)} MB, more than {FILL:.0%} of the map; "
                f"raise feedback.map_size_mb to at least {math.ceil(need / FILL / 2**20)}, lower feedback.max_users "
                f"to {max(0, self.user_room() // self.user_bytes())} or less, or set it to 0 (derived from the map)")
