"""Cache keys and sharing: a model's fingerprint sees every weight; workers sharing a cache folder compute
an entry once."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT

from harness import cache, models


@pytest.mark.parametrize("memo_above", [1 << 20, 0], ids=["hashed", "digest-remembered"])
def test_fingerprint_sees_one_changed_layer(tiny, tmp_path, monkeypatch, memo_above):
    """Two models that differ in one weight of one layer never share teacher-cache entries, also when large
    files' digests are remembered by (path, size, mtime)."""
    monkeypatch.setenv("HARNESS_MODEL_CACHE", str(tmp_path / "model-cache"))
    monkeypatch.setattr(models, "_MEMO_ABOVE", memo_above)
    a, b, same = tmp_path / "a", tmp_path / "b", tmp_path / "same"
    tiny.model.save_pretrained(a)
    tiny.tokenizer.save_pretrained(a)
    shutil.copytree(a, same)
    changed = copy.deepcopy(tiny.model)
    with torch.no_grad():
        changed.model.layers[-1].mlp.down_proj.weight[0, 0] += 1e-3
    changed.save_pretrained(b)
    tiny.tokenizer.save_pretrained(b)
    assert models.fingerprint(str(a)) == models.fingerprint(str(same))
    assert models.fingerprint(str(b)) != models.fingerprint(str(a))
    assert models.fingerprint(str(b)) == models.fingerprint(str(b))  # remembered digests still agree


WORKER = """
import logging, pathlib, sys, time, os
from harness.cache import Store
logging.basicConfig(level=logging.INFO)
root, go, log = sys.argv[1:4]
pathlib.Path(go + "." + str(os.getpid())).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.005)

def compute():
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.5)
    return {"pid": os.getpid()}

print(Store(root).get_or_compute("targets", {"model": "m", "inputs": [1, 2, 3]}, compute)["pid"])
"""


@pytest.mark.slow
def test_workers_sharing_a_cache_compute_an_entry_once(tmp_path):
    """Two processes ask for the same missing entry at the same moment: one computes, the other waits and
    reads what it wrote."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    go, log = tmp_path / "go", tmp_path / "computed"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "cache"), str(go), str(log)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.*"))) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode()[-2000:] for _, err in results]
    computed_by = log.read_text().split()
    assert len(computed_by) == 1  # one worker computed the entry
    assert {out.decode().strip() for out, _ in results} == set(computed_by)  # both got its value
    assert any(b"another worker is computing it; waiting" in err for _, err in results)


def _entry(store, parts):
    from harness.cache import content_hash

    return store.path("targets", content_hash(parts))


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-200] + bytes([b[-200] ^ 0x01]) + b[-199:],  # one bit flipped inside the payload
        lambda b: b"",  # zero-byte entry
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[len(cache.MAGIC) + 32 :],  # an older version's entry: bare torch.save bytes, no checksum
        lambda b: b[len(cache.MAGIC) + 32 : -100],  # no header and not a whole torch.save file either
    ],
    ids=["bit-flip", "zero-byte", "truncated", "no-checksum", "no-header-truncated"],
)
def test_damaged_entry_is_recomputed_with_one_warning(tmp_path, caplog, damage, request):
    """A damaged teacher-cache entry is never served: it is recomputed, rewritten, and named in one warning. An
    intact entry of an older version (no checksum) is recomputed too, its warning saying so rather than
    "damaged"."""
    store = cache.Store(tmp_path)
    parts = {"model": "m", "inputs": [1, 2, 3]}
    calls = []

    def compute():
        calls.append(1)
        return {"tokens": torch.arange(100), "logprobs": torch.linspace(-5, 0, 100)}

    first = store.get_or_compute("targets", parts, compute)
    path = _entry(store, parts)
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level("WARNING", logger="harness.cache"):
        again = store.get_or_compute("targets", parts, compute)
    assert len(calls) == 2  # recomputed, not served
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "recomputing" in warnings[0]
    older = request.node.callspec.id == "no-checksum"
    assert ("written by an older version" in warnings[0]) == older, warnings[0]
    assert (" damaged (" in warnings[0]) != older, warnings[0]
    third = store.get_or_compute("targets", parts, lambda: pytest.fail("the rewritten entry was not reused"))
    assert torch.equal(third["tokens"], first["tokens"])


def test_an_untouched_entry_passes_its_checksum(tmp_path):
    """The checksum covers exactly the payload bytes: an intact entry decodes to what was stored."""
    value = {"x": torch.tensor([1.5, -2.0]), "n": 3}
    back = cache.decode(cache.encode(value))
    assert back["n"] == 3 and torch.equal(back["x"], value["x"])
