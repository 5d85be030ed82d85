"""Kernel test fixtures: hypothesis profiles (if the root conftest did not register them) and the ISA fixture."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from hypothesis.errors import InvalidArgument

_PROFILES = {"dev": 50, "ci": 200, "deep": 2000}
for _name, _n in _PROFILES.items():
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, max_examples=_n, deadline=None)
settings.load_profile(os.environ.get("NNIC_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

def _isas() -> list[str]:
    from nnic import kernels

    return kernels.supported_isas()


@pytest.fixture(params=_isas())
def isa(request):
    """Runs the test once per code path this CPU has (scalar, avx2, avx512), restoring the previous one."""
    from nnic import kernels

    before = kernels.active_isa()
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(before)


@pytest.fixture(params=["numpy", "torch"])
def kind(request):
    """Input kind: numpy arrays or CPU torch tensors."""
    return request.param
