"""Where Shoal keeps its state and finds its store: flags, then environment, then defaults."""

from __future__ import annotations

import os
from pathlib import Path

from shoal.errors import StoreUnavailable
from shoal.store.embedded import recorded_url

DEFAULT_PREFIX = "shoal:"
DEFAULT_MESH_PORT = 15006  # a node router's inbound mTLS port: Istio's inbound port
DEFAULT_TRUST_DOMAIN = "cluster.local"  # Istio's, so principals read as they do there


def state_dir() -> Path:
    """``$SHOAL_HOME``, default ``./.shoal``."""
    return Path(os.environ.get("SHOAL_HOME", ".shoal")).absolute()


def key_prefix() -> str:
    """``$SHOAL_PREFIX``, default ``shoal:``: lets several clusters share one Redis."""
    return os.environ.get("SHOAL_PREFIX", DEFAULT_PREFIX)


def trust_domain() -> str:
    """``$SHOAL_TRUST_DOMAIN``, default ``cluster.local``: the authority of every SPIFFE ID."""
    return os.environ.get("SHOAL_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN)


def redis_url(flag: str | None) -> str:
    """The store to use: ``--redis``, else ``$SHOAL_REDIS_URL``, else the running embedded one."""
    url = flag or os.environ.get("SHOAL_REDIS_URL") or recorded_url(state_dir())
    if not url:
        raise StoreUnavailable(
            f"no Shoal store found: nothing running under {state_dir()} "
            "(start one with 'shoal up') and no --redis URL or SHOAL_REDIS_URL given"
        )
    return url
