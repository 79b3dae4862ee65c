"""Where a suite's state lives: defaults under work_dir, overrides from the suite and the environment."""

from __future__ import annotations

from helpers import write_suite

from harness import stores
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
