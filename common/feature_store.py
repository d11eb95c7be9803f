"""The LMDB feature store inside a snapshot (``features.lmdb``): key schema, writer and reader.

Keys (utf-8) and values (compact binary, never pickle):

``u/<user id>``       int32 record ``[dense_id, n_cat, n_hist, n_seen, cat…, hist…, seen…]``:
                      profile codes, the last-N history as item codes (oldest first), all seen dense item ids
``a/<name>``          a whole array in ``.npy`` format (loaded with ``allow_pickle=False``):
                      ``item_ids`` (str), ``item_titles`` (str), ``item_cat`` (int32 [n_items, F]),
                      ``item_bag`` (uint8 [n_items, G]), ``user_ids`` (str), ``user_last_ts`` (int64: each
                      user's latest interaction time the snapshot holds, -1 none; export.data.feedback_fold)

Servers open the environment read-only without locking (many readers, one writer that never writes
to a live snapshot), keep the item arrays in memory, and read one user record per request.
"""
from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

USER_PREFIX = b"u/"
ARRAY_PREFIX = b"a/"


@dataclass(frozen=True)
class UserRecord:
    """What the snapshot knows of one user."""

    dense_id: int
    cat: np.ndarray    # int32 [n_user_fields] codes
    hist: np.ndarray   # int32 item codes (dense id + 1), oldest first, no padding
    seen: np.ndarray   # int32 dense item ids the user interacted with in training


def pack_user(dense_id: int, cat: np.ndarray, hist: np.ndarray, seen: np.ndarray) -> bytes:
    """Encode a user record (see module docstring)."""
    header = np.array([dense_id, len(cat), len(hist), len(seen)], dtype="<i4")
    return np.concatenate([header, np.asarray(cat, "<i4"), np.asarray(hist, "<i4"),
                           np.asarray(seen, "<i4")]).tobytes()


def unpack_user(data: bytes) -> UserRecord:
    """Decode a user record; ``ValueError`` if its lengths do not add up."""
    rec = np.frombuffer(data, dtype="<i4")
    if rec.shape[0] < 4:
        raise ValueError("user record shorter than its header")
    dense_id, n_cat, n_hist, n_seen = (int(x) for x in rec[:4])
    if rec.shape[0] != 4 + n_cat + n_hist + n_seen:
        raise ValueError("user record length does not match its header")
    a, b = 4 + n_cat, 4 + n_cat + n_hist
    return UserRecord(dense_id, rec[4:a], rec[a:b], rec[b:])


def array_bytes(array: np.ndarray) -> bytes:
    """``.npy`` bytes of a plain (non-object) array."""
    if array.dtype == object:
        raise TypeError("object arrays would need pickle; convert to a fixed-width str or numeric dtype")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def bytes_array(data: bytes) -> np.ndarray:
    """Inverse of ``array_bytes``; refuses pickled payloads."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def write_feature_store(path: Path, arrays: dict[str, np.ndarray], users: dict[str, bytes]) -> None:
    """Write a new LMDB environment at ``path`` holding ``arrays`` and packed ``users``."""
    size = sum(len(v) for v in users.values()) + sum(a.nbytes for a in arrays.values())
    env = lmdb.open(str(path), map_size=max(64 << 20, int(size * 3)), subdir=True, lock=True)
    try:
        with env.begin(write=True) as txn:
            for name, array in arrays.items():
                txn.put(ARRAY_PREFIX + name.encode(), array_bytes(array))
            for user_id, record in users.items():
                txn.put(USER_PREFIX + user_id.encode(), record)
        env.sync()
    finally:
        env.close()
    lock = path / "lock.mdb"
    if lock.exists():  # readers open without locking; the file would only confuse the hash list
        lock.unlink()


# LMDB refuses to open one environment twice in a process, yet several Snapshot objects (a reload of
# the same version, an evaluation beside a server, tests) may look at the same directory: they share
# one handle, closed when the last user closes it.
_open_envs: dict[str, list] = {}   # realpath -> [env, users]
_envs_lock = threading.Lock()


def _acquire_env(path: Path) -> lmdb.Environment:
    key = os.path.realpath(path)
    with _envs_lock:
        entry = _open_envs.get(key)
        if entry is None:
            env = lmdb.open(key, readonly=True, lock=False, subdir=True, readahead=False, max_readers=1024)
            entry = _open_envs[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release_env(path: Path) -> None:
    key = os.path.realpath(path)
    with _envs_lock:
        entry = _open_envs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _open_envs[key]


class FeatureStore:
    """Read-only view of ``features.lmdb``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.env = _acquire_env(self.path)
        self._closed = False

    def array(self, name: str) -> np.ndarray:
        """A whole stored array; ``KeyError`` naming it when absent."""
        with self.env.begin(buffers=False) as txn:
            data = txn.get(ARRAY_PREFIX + name.encode())
        if data is None:
            raise KeyError(f"array '{name}' is missing from {self.path}")
        return bytes_array(data)

    def user(self, user_id: str) -> UserRecord | None:
        """The user's record, or None for a user the snapshot does not know (cold start)."""
        with self.env.begin(buffers=False) as txn:
            data = txn.get(USER_PREFIX + user_id.encode())
        return None if data is None else unpack_user(data)

    def close(self) -> None:
        """Release this view; the environment closes when no other view of it is open."""
        if not self._closed:
            self._closed = True
            _release_env(self.path)
