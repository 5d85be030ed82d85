"""Shared fixtures: a fresh plugin registry per test that asks for one, hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NNIC_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def fresh_registry(monkeypatch):
    """Forget loaded plugins before and after the test, so env vars and fake distributions take effect."""
    from nnic import plugins

    plugins.reload()
    yield plugins
    monkeypatch.undo()
    plugins.reload()
