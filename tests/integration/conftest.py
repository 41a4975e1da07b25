"""Fixtures of the integration tests that start real processes."""

from __future__ import annotations

import pytest

from tests.integration.procs import Cluster


@pytest.fixture
def cluster(tmp_path):
    """A :class:`~tests.integration.procs.Cluster` of real processes, all stopped afterwards."""
    c = Cluster(tmp_path)
    yield c
    c.close()
