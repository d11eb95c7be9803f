"""The durable feedback store: an LMDB environment beside the snapshots (it outlives snapshot swaps).

Named databases (keys and values compact binary, never pickle):

``log``    8-byte big-endian sequence number -> event record (``feedback.events.encode``); append-only,
           so keys sort in arrival order and an exporter reads it as one cursor walk
``ids``    event id (UTF-8) -> sequence number: makes a retried event idempotent
``users``  user id (UTF-8) -> real-time state (``feedback.user_state``)
``last_active``  user id -> when the user's state was last written (8-byte big-endian ms, the server's clock)
``by_active``    that time + user id -> empty: the users oldest activity first, for eviction by a cursor
``meta``   ``next_seq`` and ``first_seq`` (uint64); ``backfill_from`` while users written before the
           activity index existed are being indexed

One write path (``append_batch``; ``append`` for ``Event`` objects): one call is one write transaction,
so on disk it is all or nothing, and it returns only after the commit is durable: an acknowledged event
survives kill -9 of any process (and a crash of the host). The environment is opened ``metasync=False``
(MDB_NOMETASYNC): LMDB's commit fsyncs the data pages, then writes the meta page that publishes the
transaction (readers see it from then on) without syncing it; ``sync`` (one ``fdatasync`` of the data
file) makes it durable. ``append_batch`` calls it before returning; the gateway's writer passes
``durable=False`` and calls ``sync`` itself before answering, or with ``feedback.sync_pipeline`` in a
thread of its own, so the next transaction is built and committed while the last one's meta page reaches
the disk (the data pages always reach it before the meta page that points at them: LMDB's integrity on a
host crash is kept, and only what was not yet acknowledged can be lost). The gateway's writer (``feedback.writer``) passes
several Feedback calls' batches in one call. The batch arrives as columns (``feedback.event_batch``) and
each user's state is rewritten by one Numba pass for all users (``feedback.state_update``). Several writer processes are safe (LMDB serialises write transactions
with its lock file); readers (every recall and rank worker) take short read transactions that never block
the writer. Size is bounded per user (``history_len``, filter bytes) and in total: once the log holds more
than ``max_log_events`` the oldest records and their event ids are deleted in the same transaction that
appends (compaction by count; LMDB reuses the freed pages, so the file stops growing at that bound).
Users are bounded the same way: past ``max_users`` (``FeedbackConfig.user_cap``) users, or for users idle
longer than ``max_user_age_s``, the least recently active users' state is deleted in the appending
transaction (``by_active``'s first keys), at most the batch's new users plus ``EVICT_SLACK`` per
transaction, so a write's work stays bounded; an evicted user reads as no real-time state (the snapshot's
view, or cold start) and is counted in ``recsys_feedback_evicted_users_total``. What still does not fit
(``lmdb.MapFullError``) is ``FeedbackStoreFull``: permanent until the configuration changes, not retried.
"""
from __future__ import annotations

import math
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

from common.metrics import FEEDBACK_EVICTED
from feedback.config import FeedbackConfig
from feedback.event_batch import EVENT, ITEM, USER, EventBatch
from feedback.events import POSITIVE, Event, decode, record_event_id
from feedback.state_update import CORRUPT, update_records
from feedback.user_state import UserState
from kernels.bloom import bloom_size

_SEQ = struct.Struct(">Q")
_MS = struct.Struct(">Q")  # activity time, ms since the epoch: big-endian, so keys sort by time
_POSITIVE = np.array(sorted(POSITIVE), np.int64)
EVICT_SLACK = 256          # users a transaction may evict beyond the ones its batch added
BACKFILL = 4096            # users written before the activity index, indexed per transaction (once)

# LMDB forbids opening one environment twice in a process (the second handle's close drops the first's
# locks), and the gateway, the in-process funnel and tests may all ask for the store: one shared handle per
# path, reference-counted (the same reason as common.feature_store's shared handles)
_open_lock = threading.Lock()
_open: dict[str, list] = {}


class FeedbackStoreError(RuntimeError):
    """The store cannot be opened or written (message says what to do); ``grpc_status``: the status code's
    name a server answers it with (transient: the caller may retry)."""

    grpc_status = "UNAVAILABLE"


class FeedbackStoreFull(FeedbackStoreError):
    """The store's map is full even after compaction and eviction: a retry cannot succeed until an operator
    raises ``feedback.map_size_mb`` or lowers ``max_users`` / ``max_log_events`` (or the batch is smaller)."""

    grpc_status = "RESOURCE_EXHAUSTED"


@dataclass
class AppendResult:
    """What one ``append`` did: sequence numbers of the events written, indices of duplicates skipped."""

    seqs: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    duplicates: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    compacted: int = 0
    evicted: dict[str, int] = field(default_factory=dict)  # users whose state was evicted, by reason


class FeedbackStore:
    """Open with ``FeedbackStore.open(config)``; share one per process (LMDB allows one env per path per process)."""

    def __init__(self, env: lmdb.Environment, config: FeedbackConfig):
        self.env = env
        self.config = config
        self.m_bytes, self.k = bloom_size(config.exposure_capacity, config.exposure_fp_rate)
        self.log = env.open_db(b"log")
        self.ids = env.open_db(b"ids")
        self.users = env.open_db(b"users")
        self.meta = env.open_db(b"meta")
        self.last_active = env.open_db(b"last_active")
        self.by_active = env.open_db(b"by_active")
        self.max_users = config.user_cap()

    @classmethod
    def open(cls, config: FeedbackConfig) -> "FeedbackStore":
        """Open (creating if missing) the environment at ``config.path``; pair with ``close``."""
        config.validate()
        if not config.path:
            raise FeedbackStoreError("feedback.path is empty: set it to a directory beside the snapshots")
        path = Path(config.path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            key = os.path.realpath(path)
            with _open_lock:
                entry = _open.get(key)
                if entry is None:
                    env = lmdb.open(key, map_size=config.map_size_mb << 20, subdir=True, max_dbs=8, lock=True,
                                    sync=True, metasync=False, readahead=False)
                    # the data file's own descriptor for ``sync``: fdatasync releases the GIL, and it
                    # flushes the meta page LMDB wrote through its descriptor (the same file)
                    fd = os.open(os.path.join(key, "data.mdb"), os.O_RDONLY | os.O_CLOEXEC)
                    entry = _open[key] = [env, 0, fd]
                entry[1] += 1
        except (OSError, lmdb.Error) as exc:
            raise FeedbackStoreError(f"cannot open the feedback store at {path}: {exc}; check the path and "
                                     f"its permissions") from None
        store = cls(entry[0], config)
        store._key, store._fd = key, entry[2]
        return store

    def close(self) -> None:
        """Release this handle; the environment closes when no other handle in the process uses it."""
        key, self._key = getattr(self, "_key", None), None
        if key is None:
            return
        with _open_lock:
            entry = _open.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    entry[0].close()
                    os.close(entry[2])
                    del _open[key]

    def sync(self) -> None:
        """Make every transaction committed so far durable: one ``fdatasync`` of the data file (the meta
        pages of ``append_batch(durable=False)`` calls; nothing else is left unsynced). Raises
        ``FeedbackStoreError`` when the disk refuses it (those transactions are visible but not durable)."""
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise FeedbackStoreError(f"the feedback store at {self.config.path} failed to sync: {exc}") from None

    # -- the write path -------------------------------------------------------------------------------
    def append(self, events: list[Event], now: float | None = None) -> AppendResult:
        """Write ``events`` (already validated) in one durable transaction: ``append_batch`` of their columns."""
        return self.append_batch(EventBatch.from_events(events), now)

    def append_batch(self, batch: EventBatch, now: float | None = None, durable: bool = True) -> AppendResult:
        """Write ``batch`` (already validated) in one durable transaction; events whose ``event_id`` is
        already stored (or repeated in the batch) are skipped and reported as duplicates. Exposure ages by
        ``now`` (the server's clock), so replayed old timestamps do not expire impressions on arrival.
        Columns throughout (``feedback.event_batch``): Python objects only for LMDB's keys and values.
        ``durable=False``: return once committed (visible to readers, data pages on disk) and leave the
        meta page's sync to the caller's ``sync``, which must run before anyone is told it is stored."""
        now = time.time() if now is None else now
        stamp = _MS.pack(max(int(now * 1000), 0))
        n = len(batch)
        records, record_at = batch.records()          # raises on what the log's layout cannot hold
        item_hash = batch.hashes(ITEM)
        has_id = batch.length[:, EVENT] > 0
        duplicate = has_id & (batch.first_equal(EVENT) != np.arange(n))   # repeated inside the batch
        user_rep = batch.first_equal(USER)
        result = AppendResult()
        added = 0
        try:
            with self.env.begin(write=True) as txn:
                next_seq = self._meta(txn, b"next_seq", 1)
                ask = np.flatnonzero(has_id & ~duplicate)
                id_keys = batch.keys(ask, EVENT)
                if ask.size:                            # stored before: one lookup call for the batch
                    stored = {key for key, _ in txn.cursor(db=self.ids).getmulti(id_keys)}
                    if stored:
                        before = np.fromiter((key in stored for key in id_keys), np.bool_, ask.size)
                        duplicate[ask[before]] = True
                        id_keys = [key for key in id_keys if key not in stored]
                keep = np.flatnonzero(~duplicate)
                seqs = np.arange(next_seq, next_seq + keep.size, dtype=np.int64)
                next_seq += keep.size
                seq_keys = seqs.astype(">u8").tobytes()
                data = records.tobytes()
                txn.cursor(db=self.log).putmulti(   # keys ascend: appended in place
                    [(seq_keys[8 * j:8 * j + 8], data[a:b])
                     for j, (a, b) in enumerate(zip(record_at[keep].tolist(), record_at[keep + 1].tolist()))],
                    append=True)
                with_id = np.flatnonzero(has_id[keep])   # the same events as id_keys, in the same order
                if with_id.size:
                    txn.cursor(db=self.ids).putmulti(
                        list(zip(id_keys, [seq_keys[8 * j:8 * j + 8] for j in with_id.tolist()])))
                if keep.size:
                    added = self._update_users(txn, batch, keep, user_rep[keep], item_hash[keep], seqs, now, stamp)
                txn.put(b"next_seq", _SEQ.pack(next_seq), db=self.meta)
                result.compacted = self._compact(txn, next_seq)
                result.evicted = self._evict(txn, added, now)
        except lmdb.MapFullError:
            raise FeedbackStoreFull(self._full_message(int((~duplicate).sum()), added)) from None
        except lmdb.Error as exc:   # disk trouble, mostly: nothing of the batch is written; a retry may pass
            raise FeedbackStoreError(f"the feedback store at {self.config.path} failed a write: {exc}") from None
        if durable:
            self.sync()
        result.seqs, result.duplicates = seqs, np.flatnonzero(duplicate)
        for reason, count in result.evicted.items():  # committed: count them
            FEEDBACK_EVICTED.labels(reason).inc(count)
        return result

    def _update_users(self, txn, batch: EventBatch, keep: np.ndarray, user_rep: np.ndarray,
                      item_hash: np.ndarray, seqs: np.ndarray, now: float, stamp: bytes) -> int:
        """One read-modify-write of each user's state for the stored events ``keep`` (all users in one
        ``feedback.state_update`` pass); returns how many users are new."""
        first, user_of_event = np.unique(user_rep, return_inverse=True)  # users in order of first event
        ukeys = batch.keys(first, USER)
        users = self.users
        old = [txn.get(key, db=users) for key in ukeys]
        ts = batch.timestamp[keep]
        records, offsets, status = update_records(
            old, user_of_event.astype(np.int64), len(ukeys), item_hash, np.isin(batch.type[keep], _POSITIVE),
            seqs, np.where(ts == 0, now, ts), (batch.buf, batch.start[keep, ITEM], batch.length[keep, ITEM]),
            self.m_bytes, self.k, now, self.config.exposure_window_s, self.config.history_len)
        if (status == CORRUPT).any():
            bad = ukeys[int(np.flatnonzero(status == CORRUPT)[0])].decode("utf-8", "replace")
            raise FeedbackStoreError(f"the feedback store at {self.config.path} holds an unreadable state for "
                                     f"user {bad[:64]!r}; the store needs repair (nothing of this batch was written)")
        data = records.tobytes()
        txn.cursor(db=users).putmulti(list(zip(ukeys, [data[a:b] for a, b in zip(offsets[:-1].tolist(),
                                                                                 offsets[1:].tolist())])))
        self._touch_all(txn, ukeys, stamp)
        return int((status == 0).sum())

    def _touch_all(self, txn, ukeys: list[bytes], stamp: bytes) -> None:
        """Move ``ukeys`` to ``stamp`` in the activity index (kept in step with ``users``)."""
        last = dict(txn.cursor(db=self.last_active).getmulti(ukeys))
        moved = [key for key in ukeys if last.get(key) != stamp]
        for key in moved:
            old = last.get(key)
            if old is not None:
                txn.delete(old + key, db=self.by_active)
        txn.cursor(db=self.by_active).putmulti([(stamp + key, b"") for key in moved])
        txn.cursor(db=self.last_active).putmulti([(key, stamp) for key in moved])

    def _full_message(self, events: int, new_users: int) -> str:
        c = self.config
        return (f"the feedback store at {c.path} is full: feedback.map_size_mb={c.map_size_mb} holds "
                f"{self.user_count()} users (feedback.max_users: {self.max_users}, ~{c.user_bytes()} bytes each) and up "
                f"to feedback.max_log_events={c.max_log_events} events; this batch of {events} events for "
                f"{new_users} new users did not fit. A retry fails the same way: raise feedback.map_size_mb, or "
                f"lower feedback.max_users or feedback.max_log_events (or send smaller batches)")

    def _touch(self, txn, ukey: bytes, stamp: bytes) -> None:
        """Move the user to ``stamp`` in the activity index (kept in step with ``users``)."""
        old = txn.get(ukey, db=self.last_active)
        if old == stamp:
            return
        if old is not None:
            txn.delete(old + ukey, db=self.by_active)
        txn.put(stamp + ukey, b"", db=self.by_active)
        txn.put(ukey, stamp, db=self.last_active)

    def _evict(self, txn, added: int, now: float) -> dict[str, int]:
        """Delete the state of the least recently active users while there are more than ``max_users`` or
        they are older than ``max_user_age_s``: at most ``added + EVICT_SLACK`` users (bounded work; an
        excess left over, e.g. after max_users was lowered, goes over the next transactions)."""
        budget = added + EVICT_SLACK
        self._backfill(txn, 2 * budget + BACKFILL, now)
        over = txn.stat(self.users)["entries"] - self.max_users
        age = self.config.max_user_age_s
        cutoff = _MS.pack(max(int((now - age) * 1000), 0)) if age > 0 else None
        evicted: dict[str, int] = {}
        if over <= 0 and cutoff is None:
            return evicted
        cursor = txn.cursor(db=self.by_active)
        if not cursor.first():
            return evicted
        for _ in range(budget):
            key = cursor.key()
            if not key:  # deleted the last one
                break
            if over > 0:
                reason, over = "max_users", over - 1
            elif cutoff is not None and key[:8] < cutoff:
                reason = "max_user_age_s"
            else:
                break
            ukey = key[8:]
            txn.delete(ukey, db=self.users)
            txn.delete(ukey, db=self.last_active)
            evicted[reason] = evicted.get(reason, 0) + 1
            if not cursor.delete():  # moves to the next record
                break
        return evicted

    def _backfill(self, txn, limit: int, now: float) -> None:
        """Index up to ``limit`` users written before the activity index existed (a store from an earlier
        version), at their latest known time (newest history entry or exposure generation): they become
        the first evicted. Costs two O(1) counts per transaction once every user is indexed."""
        if txn.stat(self.users)["entries"] == txn.stat(self.last_active)["entries"]:
            return
        start = txn.get(b"backfill_from", db=self.meta)
        cursor = txn.cursor(db=self.users)
        found = cursor.set_range(start) if start else cursor.first()
        for _ in range(limit):
            if not found:
                break
            ukey = cursor.key()
            if txn.get(ukey, db=self.last_active) is None:
                try:
                    state = UserState.decode(cursor.value())
                    seen = max([state.current_start, *state.hist_ts.tolist()])
                except ValueError:
                    seen = 0.0
                seen = min(seen, now) if math.isfinite(seen) else 0.0  # never newer than the users being written
                self._touch(txn, ukey, _MS.pack(max(int(seen * 1000), 0)))
            found = cursor.next()
        if found:
            txn.put(b"backfill_from", cursor.key(), db=self.meta)
        else:
            txn.delete(b"backfill_from", db=self.meta)

    def _meta(self, txn, key: bytes, default: int) -> int:
        data = txn.get(key, db=self.meta)
        return default if data is None else _SEQ.unpack(data)[0]

    def _compact(self, txn, next_seq: int) -> int:
        first = self._meta(txn, b"first_seq", 1)
        excess = (next_seq - first) - self.config.max_log_events
        if excess <= 0:
            return 0
        removed = 0
        cursor = txn.cursor(db=self.log)
        if cursor.set_range(_SEQ.pack(first)):
            while removed < excess:
                event_id = record_event_id(cursor.value())
                if event_id:
                    txn.delete(event_id, db=self.ids)
                removed += 1
                if not cursor.delete():  # delete moves to the next record; False at the end
                    break
        txn.put(b"first_seq", _SEQ.pack(first + removed), db=self.meta)
        return removed

    # -- the read path (every worker) ------------------------------------------------------------------
    def user_state(self, user_id: str) -> UserState | None:
        """The real-time state of ``user_id``, or None when no feedback was ever stored for the user."""
        with self.env.begin(db=self.users, buffers=True) as txn:
            data = txn.get(user_id.encode("utf-8"))
            return None if data is None else UserState.decode(bytes(data))

    def user_count(self) -> int:
        """Users with real-time state stored now."""
        with self.env.begin() as txn:
            return txn.stat(self.users)["entries"]

    def last_seq(self) -> int:
        """The highest sequence number written (0 when none)."""
        with self.env.begin() as txn:
            return self._meta(txn, b"next_seq", 1) - 1

    def events(self, after_seq: int = 0, upto_seq: int | None = None):
        """Yield ``(seq, Event)`` in log order for after_seq < seq <= upto_seq (what is still retained)."""
        with self.env.begin(db=self.log) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(_SEQ.pack(after_seq + 1)):
                return
            for key, value in cursor:
                seq = _SEQ.unpack(key)[0]
                if upto_seq is not None and seq > upto_seq:
                    return
                yield seq, decode(value)

    def disk_bytes(self) -> int:
        """Bytes the environment's data file occupies on disk."""
        return os.stat(Path(self.config.path) / "data.mdb").st_blocks * 512

