"""Passwords (and this machine's paths) out of everything the harness writes: logs, MLflow artifacts, results/.

Store URLs carry credentials (`postgresql://user:pw@host/db`); a study's log, its
trials' `suite.yaml` and a committed report must show `user:***@host` instead.
Pure string work, so the suite spec and the logging setup can use it without
importing a database library.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

# scheme://user:password@  (a password holding '@' or '/' must be percent-encoded in a URL, so it stops there)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)[^\s/@]+@")
# ?password=...  (libpq and SQLAlchemy also take the password as a query parameter)
_QUERY = re.compile(r"([?&](?:password|passwd|pwd)=)[^&\s]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL password replaced by `***` (`user:***@host`, `password=***`)."""
    return _QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def portable(text: str) -> str:
    """`text` redacted, with this machine's working directory and home written `.` and `~`: a store URL as a
    log or committed report shows it (`sqlite:///./.harness/optuna.db` is the same relative SQLite URL)."""
    for root, short in ((str(Path.cwd().resolve()), "."), (str(Path.home()), "~")):
        text = text.replace(root + "/", short + "/")
    return redact(text)


class RedactingFilter(logging.Filter):
    """A handler filter: the formatted message, exception text included, is redacted before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
