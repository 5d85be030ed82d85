"""Where a study lives: an SQLite file in ``out_dir`` by default, or any database URL Optuna's RDB storage takes.

Both go through Optuna's ``RDBStorage`` with heartbeats: every running trial writes a heartbeat every
``heartbeat_s`` seconds, and a trial whose heartbeat is older than three intervals (its process was killed,
its machine lost) is marked failed by the next worker that looks and re-queued with the same parameters
(Optuna's ``RetryHeartbeatStaleTrialCallback``, at most 3 retries). That makes the embedded file resumable after a
``kill -9`` and lets several processes, on one machine (SQLite) or many (PostgreSQL), share one study.

The search settings (space, goals, strategy, baseline measurements) are stored in the study itself, as the
JSON user attribute ``nnic``, so that a worker on another machine runs exactly the search the study was made
for, and a call with different settings is refused instead of mixing two searches.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SETTINGS_ATTR = "nnic"
DB_NAME = "study.db"
MAX_RETRY = 3


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


def storage_url(storage: str | None, out_dir: Path | None) -> str:
    """The database URL: ``storage`` as given, or an SQLite file in ``out_dir``."""
    if storage is None:
        if out_dir is None:
            raise ValueError("out_dir: needed when storage is None (the study is kept in out_dir/study.db)")
        out_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(out_dir / DB_NAME).resolve()}"
    if not isinstance(storage, str) or "://" not in storage:
        raise ValueError(f"storage: expected a database URL such as postgresql://user:password@host/db or "
                         f"sqlite:///path/study.db, got {storage!r}")
    return storage


def _driver_url(url: str) -> str:
    """``postgresql://`` through psycopg2 (the ``auto`` extra's driver) unless psycopg 3 is installed, which
    SQLAlchemy 2.1 picks by default for a bare ``postgresql://``."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None:
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def open_storage(url: str, *, heartbeat_s: int = 5) -> Any:
    """Optuna RDB storage with heartbeats and retries; ``ValueError`` naming the URL when it cannot be reached."""
    import optuna
    import sqlalchemy

    if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, int) or heartbeat_s < 1:
        raise ValueError(f"heartbeat_s: expected an int >= 1 (seconds), got {heartbeat_s!r}")
    if url.startswith("sqlite"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings(), _creation_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                _driver_url(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"storage {redact(url)!r} cannot be reached: {first}") from exc


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Held while a process opens an SQLite study file: Optuna creates the tables of a new file on opening, and
    two local workers starting at once would both try ("table ... already exists"). A lock file beside the
    database serialises the opening; servers (PostgreSQL) handle concurrent sessions themselves."""
    match = re.match(r"sqlite:///(.+)$", url)
    if match is None or match.group(1) == ":memory:":
        yield
        return
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): open unserialised
        yield
        return
    lock_path = Path(match.group(1) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def study_settings(study: Any, *, wait_s: float = 60.0) -> dict[str, Any] | None:
    """The settings stored in ``study``; waits up to ``wait_s`` while another process is still creating it."""
    deadline = time.monotonic() + wait_s
    while True:
        raw = study.user_attrs.get(SETTINGS_ATTR)
        if raw is not None:
            return json.loads(raw)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def store_settings(study: Any, settings: Mapping[str, Any]) -> None:
    study.set_user_attr(SETTINGS_ATTR, json.dumps(settings, sort_keys=True))


def settings_conflict(stored: Mapping[str, Any], asked: Mapping[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The keys whose stored and asked values differ (JSON-normalised)."""
    norm = lambda v: json.loads(json.dumps(v, sort_keys=True))  # noqa: E731  tuples -> lists, as stored
    return [k for k in keys if norm(stored.get(k)) != norm(asked.get(k))]


__all__ = ["DB_NAME", "SETTINGS_ATTR", "open_storage", "redact", "settings_conflict", "storage_url",
           "store_settings", "study_settings"]
