"""The texts of c a suite names by file: read once, checked at `validate`, hashed into the study.

A suite's `context.system_prompt` and `context.document` are either inline text or a UTF-8 file next to
the suite. Editing the file changes the study (its hash covers the bytes), so a rerun after an edit never
mixes trials of two contexts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

MAX_BYTES = 4 * 1024 * 1024  # a context file beyond this is no prompt any model here can take


class SourceError(ValueError):
    """A context file that cannot be used: the message is `field: what is wrong`."""


class TextSource(Protocol):
    @property
    def file(self) -> str | None: ...
    @property
    def text(self) -> str | None: ...


def read(source: TextSource, field: str, base: Path) -> str:
    """The text of one source: inline, or the file relative to `base` (the suite's folder)."""
    if source.text is not None:
        if not source.text.strip():
            raise SourceError(f"{field}.text: empty; give the text or leave the field out")
        return source.text
    assert source.file is not None
    path = (base / source.file).expanduser()
    where = f"{field}.file"
    if not path.is_file():
        raise SourceError(f"{where}: no such file {source.file} (relative to the suite file)")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SourceError(f"{where}: {source.file} is {size / 2**20:.1f} MiB; the limit is {MAX_BYTES // 2**20} MiB")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SourceError(
            f"{where}: {source.file} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff").strip()
    if not text:
        raise SourceError(f"{where}: {source.file} is empty")
    return text


def digest(texts: dict[str, str]) -> str:
    """What the study hash keeps of the texts: their bytes, by part."""
    h = hashlib.sha256()
    for part in sorted(texts):
        h.update(part.encode() + b"\0" + texts[part].encode() + b"\0")
    return h.hexdigest()[:16]
