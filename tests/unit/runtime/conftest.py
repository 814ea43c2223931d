"""Fixtures for the runtime tests: kit runtimes built once per test session."""

from __future__ import annotations

import pytest

from gemma_mtp import Runtime
from gemma_mtp.testing import tiny_runtime


@pytest.fixture(scope="session")
def agreeing() -> Runtime:
    """Dense pair whose assistant agrees with the target most of the time."""
    return tiny_runtime("agreeing", "dense")


@pytest.fixture(scope="session")
def random_pair() -> Runtime:
    """Dense pair with random weights: the assistant almost never agrees."""
    return tiny_runtime("random", "dense")
