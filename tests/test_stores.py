"""Where a suite's state lives: defaults under work_dir, overrides from the suite and the environment;
store passwords redacted wherever a URL is written."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import yaml
from helpers import write_suite

from harness import stores, sweep
from harness.redact import RedactingFilter, redact
from harness.spec import load_suite


def test_defaults_are_sqlite_files_under_work_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suite = load_suite(write_suite(tmp_path))
    work = (tmp_path / ".harness").resolve()
    assert not work.exists()
    assert stores.storage_url(suite) == f"sqlite:///{work / 'optuna.db'}"
    assert work.is_dir()  # created on first use: SQLite does not create the folder
    assert stores.tracking_uri(suite) == f"sqlite:///{work / 'mlflow.db'}"
    assert stores.cache_root(suite) == work / "cache"
    assert stores.artifact_root(suite) == (work / "mlartifacts").as_uri()


def test_suite_overrides_environment_overrides_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    plain = load_suite(write_suite(tmp_path))
    assert stores.tracking_uri(plain) == "sqlite:///from-env.db"
    pinned = load_suite(
        write_suite(tmp_path, sweep={"storage": "sqlite:///o.db", "tracking_uri": "sqlite:///m.db"}, name="pinned")
    )
    assert stores.tracking_uri(pinned) == "sqlite:///m.db"
    assert stores.storage_url(pinned) == "sqlite:///o.db"


def test_study_name_follows_suite_content(tmp_path):
    a = load_suite(write_suite(tmp_path))
    again = load_suite(write_suite(tmp_path))
    edited = load_suite(write_suite(tmp_path, seed=7))
    assert stores.study_name(a) == stores.study_name(again) == f"smoke-{a.content_hash()}"
    assert stores.study_name(edited) != stores.study_name(a)


def test_storage_url_from_the_environment(tmp_path, monkeypatch):
    """A suite shared by several machines names no store: the environment does."""
    monkeypatch.setenv("HARNESS_STORAGE", "postgresql://u:pw@db.lab/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.lab:5000")
    suite = load_suite(write_suite(tmp_path))
    assert stores.storage_url(suite) == "postgresql://u:pw@db.lab/optuna"
    assert stores.tracking_uri(suite) == "http://mlflow.lab:5000"
    pinned = load_suite(write_suite(tmp_path, sweep={"storage": "sqlite:///o.db"}, name="pinned"))
    assert stores.storage_url(pinned) == "sqlite:///o.db"


def test_cache_dir_from_suite_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    assert stores.cache_root(load_suite(write_suite(tmp_path))) == (tmp_path / ".harness" / "cache").resolve()
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "nfs" / "cache"))
    assert stores.cache_root(load_suite(write_suite(tmp_path))) == tmp_path / "nfs" / "cache"
    pinned = load_suite(write_suite(tmp_path, sweep={"cache_dir": str(tmp_path / "shared")}, name="pinned"))
    assert stores.cache_root(pinned) == tmp_path / "shared"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://harness:s3cret@db:5432/optuna", "postgresql://harness:***@db:5432/optuna"),
        ("postgresql+psycopg://u:p%40ss@10.0.0.2/x", "postgresql+psycopg://u:***@10.0.0.2/x"),
        ("mysql://root:pw@h/db and http://a:b@mlflow:5000/", "mysql://root:***@h/db and http://a:***@mlflow:5000/"),
        (
            "postgresql://db/optuna?user=u&password=s3cret&sslmode=require",
            "postgresql://db/optuna?user=u&password=***&sslmode=require",
        ),
        ("sqlite:////home/me/.harness/optuna.db", "sqlite:////home/me/.harness/optuna.db"),
        ("http://mlflow:5000 and postgresql://u@db/x", "http://mlflow:5000 and postgresql://u@db/x"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_suite_yaml_and_logs_carry_no_password(tmp_path, caplog):
    url = "postgresql://harness:s3cret-pw@db.lab/optuna"
    suite = load_suite(write_suite(tmp_path, sweep={"storage": url, "tracking_uri": "http://u:s3cret-pw@ml:5000"}))
    text = suite.resolved_yaml()
    assert "s3cret-pw" not in text and "postgresql://harness:***@db.lab/optuna" in text
    assert yaml.safe_load(text)["sweep"]["tracking_uri"] == "http://u:***@ml:5000"
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    try:
        log.warning("study in %s", url)
        try:
            raise RuntimeError(f"cannot connect to {url}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    written = handler.stream.getvalue()
    assert "s3cret-pw" not in written and written.count("harness:***@db.lab") == 2


def test_unreachable_storage_is_one_line_without_password():
    """A server that refuses connections: a StoreError naming the store, password redacted, no traceback."""
    with pytest.raises(stores.StoreError) as e:
        sweep.open_storage("postgresql://harness:s3cret-pw@127.0.0.1:1/optuna")
    message = str(e.value)
    assert "\n" not in message and "s3cret-pw" not in message
    assert message.startswith("cannot open Optuna storage postgresql://harness:***@127.0.0.1:1/optuna: ")


def test_postgresql_url_without_the_driver_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on a machine without the [postgres] extra
    with pytest.raises(stores.StoreError) as e:
        sweep.open_storage("postgresql://harness:s3cret-pw@127.0.0.1:1/optuna")
    assert str(e.value) == (
        "Optuna storage postgresql://harness:***@127.0.0.1:1/optuna: the PostgreSQL driver is not installed: "
        "pip install 'harness[postgres]' (psycopg 3)"
    )
