"""Fixtures shared by the integration tests."""

from tests.support.cluster import cluster
from tests.support.gateway import gateway

__all__ = ["cluster", "gateway"]
