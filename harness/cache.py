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
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

MAGIC = b"harness-cache v1 blake2b-256\n"
_DIGEST = 32


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST).digest()


class OlderEntry(ValueError):
    """Bytes without the checksum header: an entry of an older version, which cannot be verified, or damage."""


def _older_version(blob: bytes) -> bool:
    """Whether header-less bytes are a whole torch.save file, as versions before the checksum wrote entries."""
    try:
        torch.load(io.BytesIO(blob), weights_only=True)
    except Exception:
        return False
    return True


def encode(value: Any) -> bytes:
    """An entry's bytes: magic line, checksum of the payload, payload."""
    buf = io.BytesIO()
    torch.save(value, buf)
    payload = buf.getvalue()
    return MAGIC + _digest(payload) + payload


def decode(blob: bytes) -> Any:
    """The value in an entry's bytes; ValueError saying what is wrong if they are not an intact entry."""
    if not blob:
        raise ValueError("empty file")
    if not blob.startswith(MAGIC):
        raise OlderEntry("no checksum header")
    digest, payload = blob[len(MAGIC) : len(MAGIC) + _DIGEST], blob[len(MAGIC) + _DIGEST :]
    if len(digest) < _DIGEST or _digest(payload) != digest:
        raise ValueError("checksum mismatch (truncated or changed on disk)")
    return torch.load(io.BytesIO(payload), weights_only=True)


def content_hash(parts: dict[str, Any]) -> str:
    """Stable hash of a JSON-able description."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Store:
    """Entries under root/<kind>/<hash>.pt (checksummed, see the module docstring) with a readable <hash>.json
    describing the key."""

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
        existed = path.exists()
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
            found = self._load(kind, key, path, warn=not existed)  # one warning per damaged entry
            if found is not None:
                return found[0]
            self.misses += 1
            log.info("teacher cache miss: %s %s (computing)", kind, key)
            value = compute()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(encode(value))
            tmp.replace(path)  # atomic: a reader that takes no lock never sees half an entry
            path.with_suffix(".json").write_text(json.dumps(_describe(parts), indent=1, default=str))
            return value
        finally:
            lock.release()

    def _load(self, kind: str, key: str, path: Path, warn: bool = True) -> tuple[Any] | None:
        """(value,) if the entry is stored and intact, else None.

        A damaged entry (empty, truncated, checksum mismatch, undecodable) or one without a checksum (older
        version) is a miss: the caller recomputes and rewrites it, so a study never stops on it or uses it."""
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            value = decode(blob)
        except Exception as e:  # damaged or from an older version: recompute rather than stop a study
            if not warn:
                return None
            if isinstance(e, OlderEntry) and _older_version(blob):  # intact but unverifiable: not "damaged"
                log.warning("teacher cache entry %s was written by an older version (no checksum); recomputing", path)
                return None
            first = (str(e).splitlines() or [""])[0][:120]
            log.warning("teacher cache entry %s damaged (%s: %s); recomputing", path, type(e).__name__, first)
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
