"""Configuration of the feedback store, shared by its writer (the gateway) and its readers (recall, rank)."""
from __future__ import annotations

from dataclasses import dataclass


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
    max_batch: int = 10_000          # events per Feedback call
    max_future_s: float = 300.0      # clock skew tolerated on event timestamps
    max_id_len: int = 256            # user / item / request / event id length limit
    rating_min: float = 0.0
    rating_max: float = 5.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        checks = [
            ("feedback.map_size_mb", self.map_size_mb >= 1), ("feedback.history_len", 1 <= self.history_len <= 10000),
            ("feedback.exposure_window_s", self.exposure_window_s > 0),
            ("feedback.exposure_capacity", 1 <= self.exposure_capacity <= 10**6),
            ("feedback.exposure_fp_rate", 0.0 < self.exposure_fp_rate <= 0.5),
            ("feedback.max_log_events", self.max_log_events >= 1), ("feedback.max_batch", self.max_batch >= 1),
            ("feedback.max_future_s", self.max_future_s >= 0), ("feedback.max_id_len", 1 <= self.max_id_len <= 60000),
            ("feedback.rating_max", self.rating_max > self.rating_min),
        ]
        for key, ok in checks:
            if not ok:
                raise ValueError(f"{key} is out of range: {getattr(self, key.split('.')[1])!r}")
