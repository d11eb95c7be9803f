"""One write's events applied to its users' state records: every user in one Numba pass over the bytes.

``feedback.user_state.UserState`` is the record's definition and the reader's view; decoding it, updating it
and encoding it again costs some twenty numpy and struct calls per user, all under the GIL, and a write of a
few thousand events touches nearly as many users. This pass produces the same bytes as ``UserState`` would
(``tests/test_feedback_state.py`` checks it against ``UserState`` on random records): the filter aged to
``now`` (``rotate``), every event's item added to the current generation (``expose``), the positive events
appended to the history, newest ``history_len`` kept (``add_history``). A record whose filter was sized
under another configuration gets a fresh filter and keeps its history; a new user starts empty at ``now``.
"""
from __future__ import annotations

import numba
import numpy as np

from kernels.bloom import _bloom_add

HEADER_BYTES = 24   # <IHHdd: m_bytes, k, n_hist, current start, previous start (feedback.user_state)
CORRUPT = -1        # status of a user whose stored record does not parse


def update_records(old: list, user_of_event: np.ndarray, n_users: int, hashes: np.ndarray,
                   positive: np.ndarray, seqs: np.ndarray, ts: np.ndarray, items, m_bytes: int, k: int,
                   now: float, window: float, history_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New records of ``n_users`` users. ``old``: each user's stored record (bytes) or None; per event (in
    arrival order) its user (0..n_users-1), item hash, whether it is positive, sequence number, timestamp
    (already stamped) and item id (``items``: (buf, start, length) of the item column). Returns the
    records back to back (uint8), their offsets (n_users + 1), and a status per user: 1 had a record, 0
    new, ``CORRUPT``."""
    present = np.fromiter((r is not None for r in old), np.bool_, n_users)
    old_off = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.fromiter((len(r) if r is not None else 0 for r in old), np.int64, n_users), out=old_off[1:])
    old_buf = np.frombuffer(b"".join(r for r in old if r is not None), np.uint8)
    order = np.argsort(user_of_event, kind="stable")            # each user's events, in arrival order
    ptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(user_of_event, minlength=n_users), out=ptr[1:])
    buf, start, length = items
    return _update(old_buf, old_off, present, ptr, hashes[order], positive[order], seqs[order].astype(np.uint64),
                   ts[order].astype(np.float64), buf, start[order], length[order], m_bytes, k, now, window,
                   history_len)


@numba.njit(cache=True, nogil=True)
def _u64(buf, pos):
    v = np.uint64(0)
    for b in range(8):
        v |= np.uint64(buf[pos + b]) << np.uint64(8 * b)
    return v


@numba.njit(cache=True, nogil=True)
def _put(out, pos, v, size):
    for b in range(size):
        out[pos + b] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(0xFF))


@numba.njit(cache=True, nogil=True)
def _update(old_buf, old_off, present, ptr, hashes, positive, seqs, ts, ibuf, istart, ilen, m_bytes, k, now,
            window, history_len):
    n_users = present.shape[0]
    status = np.zeros(n_users, np.int8)
    # room: a header, two filters and a full history's fixed part per user, plus every item id that may stay
    room = n_users * (HEADER_BYTES + 2 * m_bytes + 18 * history_len) + old_buf.shape[0]
    for e in range(positive.shape[0]):
        if positive[e]:
            room += ilen[e]
    out = np.empty(room, np.uint8)
    offsets = np.zeros(n_users + 1, np.int64)
    f64 = np.zeros(1, np.float64)
    bits = f64.view(np.uint64)
    for u in range(n_users):
        p = offsets[u]
        cur_start, prev_start = now, -np.inf
        reuse, m_old, k_old, n_old, old_fixed = False, 0, 0, 0, 0
        a = old_off[u]
        size = old_off[u + 1] - a
        if present[u]:
            status[u] = 1
            ok = size >= HEADER_BYTES
            if ok:
                m_old = np.int64(_u64(old_buf, a) & np.uint64(0xFFFFFFFF))
                k_old = np.int64(old_buf[a + 4]) | (np.int64(old_buf[a + 5]) << 8)
                n_old = np.int64(old_buf[a + 6]) | (np.int64(old_buf[a + 7]) << 8)
                old_fixed = HEADER_BYTES + 2 * m_old + 18 * n_old
                ok = k_old >= 1 and size >= old_fixed
                if ok:
                    total = old_fixed
                    for j in range(n_old):
                        q = a + HEADER_BYTES + 2 * m_old + 16 * n_old + 2 * j
                        total += np.int64(old_buf[q]) | (np.int64(old_buf[q + 1]) << 8)
                    ok = total == size
            if not ok:
                status[u] = -1
                offsets[u + 1] = p
                continue
            if m_old == m_bytes and k_old == k:
                reuse = True
                bits[0] = _u64(old_buf, a + 8)
                cur_start = f64[0]
                bits[0] = _u64(old_buf, a + 16)
                prev_start = f64[0]
        cur = out[p + HEADER_BYTES:p + HEADER_BYTES + m_bytes]
        prev = out[p + HEADER_BYTES + m_bytes:p + HEADER_BYTES + 2 * m_bytes]
        # the filter aged to now (UserState.rotate), then this write's items in the current generation
        if reuse and now - cur_start < window:
            cur[:] = old_buf[a + HEADER_BYTES:a + HEADER_BYTES + m_bytes]
            prev[:] = old_buf[a + HEADER_BYTES + m_bytes:a + HEADER_BYTES + 2 * m_bytes]
        elif reuse and now - cur_start < 2 * window:
            prev[:] = old_buf[a + HEADER_BYTES:a + HEADER_BYTES + m_bytes]
            prev_start, cur_start = cur_start, now
            cur[:] = 0
        else:
            if reuse:   # idle two windows: both generations expired
                prev_start, cur_start = -np.inf, now
            cur[:] = 0
            prev[:] = 0
        _bloom_add(cur, hashes[ptr[u]:ptr[u + 1]], k)
        # the history: the stored entries, then this write's positive events; the newest history_len kept
        n_new = 0
        for e in range(ptr[u], ptr[u + 1]):
            if positive[e]:
                n_new += 1
        n_all = n_old + n_new
        drop = max(n_all - history_len, 0)
        n_keep = n_all - drop
        seq_at = p + HEADER_BYTES + 2 * m_bytes
        ts_at = seq_at + 8 * n_keep
        len_at = ts_at + 8 * n_keep
        item_at = len_at + 2 * n_keep
        old_seq = a + HEADER_BYTES + 2 * m_old if n_old else 0
        old_item = a + old_fixed
        j = 0   # index among all entries, old first
        for h in range(n_old):
            q = old_seq + 16 * n_old + 2 * h
            n = np.int64(old_buf[q]) | (np.int64(old_buf[q + 1]) << 8)
            if j >= drop:
                w = j - drop
                out[seq_at + 8 * w:seq_at + 8 * w + 8] = old_buf[old_seq + 8 * h:old_seq + 8 * h + 8]
                out[ts_at + 8 * w:ts_at + 8 * w + 8] = old_buf[old_seq + 8 * n_old + 8 * h:
                                                               old_seq + 8 * n_old + 8 * h + 8]
                out[len_at + 2 * w] = old_buf[q]
                out[len_at + 2 * w + 1] = old_buf[q + 1]
                out[item_at:item_at + n] = old_buf[old_item:old_item + n]
                item_at += n
            old_item += n
            j += 1
        for e in range(ptr[u], ptr[u + 1]):
            if not positive[e]:
                continue
            if j >= drop:
                w = j - drop
                _put(out, seq_at + 8 * w, seqs[e], 8)
                f64[0] = ts[e]
                _put(out, ts_at + 8 * w, bits[0], 8)
                n = ilen[e]
                _put(out, len_at + 2 * w, np.uint64(n), 2)
                out[item_at:item_at + n] = ibuf[istart[e]:istart[e] + n]
                item_at += n
            j += 1
        _put(out, p, np.uint64(m_bytes), 4)
        _put(out, p + 4, np.uint64(k), 2)
        _put(out, p + 6, np.uint64(n_keep), 2)
        f64[0] = cur_start
        _put(out, p + 8, bits[0], 8)
        f64[0] = prev_start
        _put(out, p + 16, bits[0], 8)
        offsets[u + 1] = item_at
    return out[:offsets[n_users]], offsets, status
