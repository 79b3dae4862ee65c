"""A content-addressed store for expensive teacher work.

An entry's key is the hash of everything it depends on (model fingerprint,
prompts, strategy and its effective settings, generation limits), so trials and
reruns that need the same thing share it, and anything that changes makes a new
entry instead of serving a stale one. The root may be a folder that several
workers (machines, over NFS) share: a file lock per entry lets one of them
compute it while the others wait and then read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def content_hash(parts: dict[str, Any]) -> str:
    """Stable hash of a JSON-able description."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Store:
    """Entries under root/<kind>/<hash>.pt with a readable <hash>.json describing the key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.pt"

    def get_or_compute(self, kind: str, parts: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """Return the stored value for these parts, computing and storing it on a miss.

        A miss takes the entry's lock first: a worker that finds it held waits for the other to finish,
        then reads the entry instead of computing it a second time."""
        key = content_hash(parts)
        path = self.path(kind, key)
        found = self._load(kind, key, path)
        if found is not None:
            return found[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.with_suffix(".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("teacher cache %s %s: another worker is computing it; waiting", kind, key)
            lock.acquire()
        try:
            found = self._load(kind, key, path)
            if found is not None:
                return found[0]
            self.misses += 1
            log.info("teacher cache miss: %s %s (computing)", kind, key)
            value = compute()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(value, tmp)
            tmp.replace(path)  # atomic: a reader that takes no lock never sees half an entry
            path.with_suffix(".json").write_text(json.dumps(_describe(parts), indent=1, default=str))
            return value
        finally:
            lock.release()

    def _load(self, kind: str, key: str, path: Path) -> tuple[Any] | None:
        """(value,) if the entry is stored and readable, else None (a damaged entry is recomputed)."""
        if not path.exists():
            return None
        try:
            value = torch.load(path, weights_only=True)
        except Exception as e:  # written by an older version, or damaged: recompute rather than stop a study
            log.warning(
                "teacher cache entry %s %s unreadable (%s: %s); recomputing",
                kind,
                key,
                type(e).__name__,
                str(e).splitlines()[0][:120],
            )
            return None
        self.hits += 1
        log.info("teacher cache hit: %s %s (reused)", kind, key)
        return (value,)


def _describe(parts: dict[str, Any]) -> dict[str, Any]:
    """Key parts for humans: long lists are summarised."""
    out: dict[str, Any] = {}
    for k, v in parts.items():
        out[k] = f"<{len(v)} items, hash {content_hash({'v': v})}>" if isinstance(v, list) and len(v) > 8 else v
    return out
