"""Fixtures shared by the integration tests."""

from tests.support.gateway import gateway

__all__ = ["gateway"]
