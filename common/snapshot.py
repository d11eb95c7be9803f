"""Versioned snapshots: layout, manifest, atomic ``CURRENT`` flip, verification and loading (docs/ARCHITECTURE.md §6).

::

    <root>/<version>/manifest.json   version, created_at, dataset, schema, sha256 of every file, metrics
    <root>/<version>/features.lmdb/  see common.feature_store
    <root>/<version>/items.hnsw      hnswlib index over item_emb (inner product)
    <root>/<version>/item_emb.npy    float32 [n_items, dim], L2-normalised item-tower output
    <root>/<version>/i2i_itemcf.npz  top-M neighbours per item: indptr, indices, scores
    <root>/<version>/i2i_swing.npz   same layout, Swing similarity
    <root>/<version>/popular_segments.npz  popular items per demographic segment (export.recall.tables)
    <root>/<version>/blocklist.npy   int32 dense item ids never recalled (possibly empty)
    <root>/<version>/popular.npy     int32 dense item ids, most popular first
    <root>/<version>/models/*.onnx
    <root>/CURRENT                   name of the live version, replaced by rename

A snapshot is built in a hidden temporary directory and renamed into place whole, then CURRENT is
replaced atomically, so readers never see half a snapshot.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from common.feature_store import FeatureStore

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
ANN_IDS_FILE = "ann_items.npy"   # dense ids held by items.hnsw (its labels), ascending
FORMAT_VERSION = 1


class SnapshotError(RuntimeError):
    """A snapshot is missing, incomplete or corrupted; the message names the file."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _snapshot_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.name not in (MANIFEST, "lock.mdb"))


def new_version() -> str:
    """A sortable version name: UTC time to the millisecond."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"


class SnapshotBuilder:
    """Writes one snapshot version: put files under ``.path``, then ``publish``."""

    def __init__(self, root: str | Path, version: str | None = None):
        self.root = Path(root)
        self.version = version or new_version()
        self.final = self.root / self.version
        if self.final.exists():
            raise SnapshotError(f"snapshot {self.final} already exists; pick another version")
        self.path = self.root / f".tmp-{self.version}-{os.getpid()}"
        (self.path / "models").mkdir(parents=True)

    def save_array(self, name: str, array: np.ndarray) -> Path:
        """Write ``name`` (``.npy``) into the snapshot."""
        path = self.path / name
        np.save(path, array, allow_pickle=False)
        return path

    def save_npz(self, name: str, **arrays: np.ndarray) -> Path:
        """Write several named arrays into one ``.npz``."""
        path = self.path / name
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    def publish(self, manifest: dict[str, Any], make_current: bool = True) -> Path:
        """Hash every file, write the manifest, move the snapshot into place, optionally flip CURRENT."""
        files = {str(p.relative_to(self.path)): sha256_file(p) for p in _snapshot_files(self.path)}
        full = {"format": FORMAT_VERSION, "version": self.version,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **manifest, "files": files}
        (self.path / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))
        os.replace(self.path, self.final)
        if make_current:
            flip_current(self.root, self.version)
        return self.final

    def abort(self) -> None:
        """Remove the half-built snapshot."""
        shutil.rmtree(self.path, ignore_errors=True)


def flip_current(root: str | Path, version: str) -> None:
    """Point ``root/CURRENT`` at ``version`` by an atomic rename."""
    root = Path(root)
    if not (root / version / MANIFEST).is_file():
        raise SnapshotError(f"cannot make {version} current: {root / version / MANIFEST} is missing")
    tmp = root / f".{CURRENT}.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / CURRENT)


def current_version(root: str | Path) -> str:
    """The version named by ``root/CURRENT``."""
    path = Path(root) / CURRENT
    try:
        version = path.read_text().strip()
    except FileNotFoundError:
        raise SnapshotError(f"{path} not found: run `python -m export` to build a snapshot first") from None
    if not version or "/" in version or version.startswith("."):
        raise SnapshotError(f"{path} holds an invalid version name {version!r}")
    return version


# The funnel's candidate counts the export records in the manifest ("stage_counts", export.pipeline.stage_counts):
# recall_n (recall's list), prerank_keep (the pre-rank's cut inside rank), rank_n (rank's list sent to rerank)
STAGE_COUNTS = ("recall_n", "prerank_keep", "rank_n")


def check_stage_counts(manifest: dict[str, Any], settings: dict[str, tuple[str, int]]) -> None:
    """Refuse serving settings that ask for more candidates than the snapshot was exported for.

    ``settings`` maps a key of the manifest's ``stage_counts`` to ``(the setting's name, its value)``, e.g.
    ``{"recall_n": ("gateway.recall_n", 1000)}``. A value above the exported count raises ValueError (one line,
    naming the setting, the snapshot and the count); a value at or below it passes. Snapshots exported before the
    manifest recorded the counts (no ``stage_counts``), and counts a manifest does not list, are not checked.

    Why more is refused and less allowed: the export fits the models and makes its choices *at* these counts.
    The ranker's examples come from recall replayed with ``recall_n`` candidates, and its ``recall_pos`` feature
    reads ``log1p(recall_n)`` as "a random item recall did not return" (``export.ranking.replay``): candidates
    past the exported ``recall_n`` reach the ranker at positions it was trained to treat as non-recalled; the
    recall merge quotas were fitted for that many too. The rank gate and the rerank default were chosen on the
    validation funnel at the exported ``prerank_keep`` and ``rank_n``: longer lists are a configuration nobody
    measured. Fewer candidates are the same lists cut shorter (recall's first n in the same merged order, the
    pre-rank's top n, rank's best n), every position inside the range the models saw: a legitimate operator
    choice that trades quality for latency, e.g. a smaller ``recall_n`` to cut rank work under load.
    """
    exported = manifest.get("stage_counts")
    if not isinstance(exported, dict):   # older snapshots: nothing recorded, nothing to check
        return
    for key, (setting, value) in settings.items():
        limit = exported.get(key)
        if limit is not None and value > limit:
            raise ValueError(f"{setting}={value} but snapshot {manifest.get('version', '?')} was exported with "
                             f"{key}={limit}: set {setting} <= {limit} or export with {key}={value}")


def resolve(path: str | Path) -> Path:
    """A snapshot directory from either a snapshot root (follows CURRENT) or a version directory."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / CURRENT).is_file():
        return path / current_version(path)
    raise SnapshotError(f"{path} is neither a snapshot (no {MANIFEST}) nor a snapshot root (no {CURRENT})")


@dataclass
class Snapshot:
    """One opened, verified snapshot version. Arrays load lazily and stay in memory."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Snapshot":
        """Open the snapshot at ``path`` (root or version dir); with ``verify`` check every file's sha256."""
        directory = resolve(path)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"{directory / MANIFEST} is unreadable: {exc}") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise SnapshotError(f"{directory / MANIFEST}: format {manifest.get('format')!r}, "
                                f"this build reads format {FORMAT_VERSION}; re-run export")
        if verify:
            for name, expected in manifest.get("files", {}).items():
                file = directory / name
                if not file.is_file():
                    raise SnapshotError(f"snapshot file {file} is missing; re-run export")
                if sha256_file(file) != expected:
                    raise SnapshotError(f"snapshot file {file} is corrupted (sha256 mismatch); re-run export")
        return cls(directory, manifest)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def schema(self) -> dict[str, Any]:
        return self.manifest["schema"]

    def has_file(self, name: str) -> bool:
        """Whether the snapshot holds ``name``: listed in a published manifest's hashed ``files``; on disk for
        a snapshot under construction, whose unhashed manifest has no ``files`` yet (the export evaluates it
        before it publishes, and an optional table missing there would read as an empty channel)."""
        files = self.manifest.get("files")
        return name in files if files is not None else (self.path / name).is_file()

    def file(self, name: str) -> Path:
        """Path of a file of the snapshot; ``SnapshotError`` naming it when it is absent."""
        path = self.path / name
        if not path.exists():
            raise SnapshotError(f"snapshot file {path} is missing; re-run export")
        return path

    def load_array(self, name: str, mmap: bool = False) -> np.ndarray:
        """A ``.npy`` file of the snapshot (never unpickled)."""
        try:
            return np.load(self.file(name), allow_pickle=False, mmap_mode="r" if mmap else None)
        except ValueError as exc:
            raise SnapshotError(f"snapshot file {self.path / name} is malformed: {exc}") from None

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        """All arrays of a ``.npz`` file of the snapshot."""
        try:
            with np.load(self.file(name), allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except ValueError as exc:
            raise SnapshotError(f"snapshot file {self.path / name} is malformed: {exc}") from None

    @cached_property
    def features(self) -> FeatureStore:
        return FeatureStore(self.file("features.lmdb"))

    @cached_property
    def item_ids(self) -> np.ndarray:
        """External item ids, index = dense id."""
        return self.features.array("item_ids")

    @cached_property
    def item_index(self) -> dict[str, int]:
        """External item id → dense id."""
        return {item: i for i, item in enumerate(self.item_ids.tolist())}

    def item_dense(self, external_ids: list[str]) -> np.ndarray:
        """Dense ids of known external ids (unknown ones are left out), int32."""
        index = self.item_index
        return np.fromiter((index[x] for x in external_ids if x in index), dtype=np.int32)

    def close(self) -> None:
        if "features" in self.__dict__:
            self.features.close()
