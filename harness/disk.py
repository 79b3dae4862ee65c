"""A full disk (or a quota, or a file-size limit) met while a command writes: one line naming what failed.

A full disk shows up as an OSError (ENOSPC, EDQUOT, EFBIG) from our own writes and the libraries', or, inside a
SQLite store (MLflow's, Optuna's), as SQLite's "database or disk is full" or a failed write ("disk I/O error"),
wrapped by SQLAlchemy, MLflow and the harness's own errors. `full` finds it anywhere in that chain so that the
command can say what happened instead of a traceback, and that the interrupted trial is requeued, not blamed on
its configuration. Standard library only: `cli` imports it.
"""

from __future__ import annotations

import errno

FULL_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
FULL_ERRNOS[errno.EFBIG] = "file too large for the file system's or the process's size limit"
# SQLite's result codes for a write that found no room (and a write that failed: on a local disk, almost always
# room; said with a question mark).
SQLITE_FULL = {"SQLITE_FULL"}
SQLITE_WRITE = {"SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_TRUNCATE", "SQLITE_IOERR"}


def _chain(e: BaseException) -> list[BaseException]:
    seen: set[int] = set()
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def full(e: BaseException, database: str | None = None) -> str | None:
    """'disk full: ...' naming the file (or `database`, the SQLite file a store error came from, when known), if
    the exception is a write that found no space; None for any other error."""
    for cur in _chain(e):
        if isinstance(cur, OSError) and cur.errno in FULL_ERRNOS:
            where = f" writing {cur.filename}" if cur.filename else ""
            return f"disk full{where}: {FULL_ERRNOS[cur.errno]} ({errno.errorcode[cur.errno]})"
    for cur in _chain(e):
        if type(cur).__module__ != "sqlite3":
            continue
        name = str(getattr(cur, "sqlite_errorname", ""))
        where = f" writing {database}" if database else " writing a SQLite store"
        if name in SQLITE_FULL or "database or disk is full" in str(cur):
            return f"disk full{where}: SQLite says the database or disk is full"
        if name in SQLITE_WRITE or str(cur) == "disk I/O error":
            return f"disk full?{where}: SQLite could not write it ({name or 'disk I/O error'}; no space left?)"
    return None
