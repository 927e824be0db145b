"""Where Shoal keeps its state and finds its store: flags, then environment, then defaults."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from shoal.errors import StoreUnavailable, UserError
from shoal.store.connection import carries_secret
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
    """The store to use: ``--redis`` (a URL, or ``@FILE`` holding one), else
    ``$SHOAL_REDIS_URL``, else the running embedded one."""
    url = store_flag(flag) or os.environ.get("SHOAL_REDIS_URL") or recorded_url(state_dir())
    if not url:
        raise StoreUnavailable(
            f"no Shoal store found: nothing running under {state_dir()} "
            "(start one with 'shoal up') and no --redis URL or SHOAL_REDIS_URL given"
        )
    return url


def store_flag(flag: str | None) -> str | None:
    """The store URL ``--redis`` gives (read from ``@FILE``; never a password itself)."""
    return flag_value(flag, "--redis", "a store password", "SHOAL_REDIS_URL", carries_secret)


def join_token(flag: str | None) -> str | None:
    """The join token: ``--join-token @FILE``, else ``$SHOAL_JOIN_TOKEN``."""
    return flag_value(flag, "--join-token", "a join token", "SHOAL_JOIN_TOKEN", bool) or (
        os.environ.get("SHOAL_JOIN_TOKEN") or None
    )


def flag_value(
    flag: str | None, name: str, what: str, env: str, secret: Callable[[str], bool]
) -> str | None:
    """A flag's value as given, or read from the file ``@PATH`` names. A secret typed on the
    command line itself is refused: every local user can read command lines (``ps``)."""
    if flag is None:
        return None
    if flag.startswith("@"):
        return secret_file(Path(flag[1:]), what)
    if secret(flag):
        raise UserError(
            f"{name}: {what} on the command line can be read by every local user (ps); "
            f"put it in ${env}, or in a file only you can read and pass {name} @FILE"
        )
    return flag


def secret_file(path: Path, what: str) -> str:
    """The text of ``path`` (stripped), which holds ``what``: refused if other users may read
    it, as ssh refuses a private key they may read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as e:
        raise UserError(f"cannot read {what} from {path}: {e.strerror}") from None
    if mode & 0o077:
        raise UserError(
            f"{path} holds {what} but other users may read it (mode {mode & 0o777:o}): "
            f"chmod 600 {path}"
        )
    if not text:
        raise UserError(f"{path} is empty: it should hold {what}")
    return text
