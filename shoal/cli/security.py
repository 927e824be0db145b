"""Certificates and join tokens: ``shoal certs`` and ``shoal token``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli import render
from shoal.errors import ShoalError, UserError
from shoal.platform import settings
from shoal.platform.control.client import Client
from shoal.store.connection import redacted

if TYPE_CHECKING:
    pass

from shoal.cli.common import (
    OutputOpt,
    RedisOpt,
    app,
    fail,
    lines,
    progress,
    show,
    with_client,
    with_store,
)


def new_join_token(url: str, *, ttl: float = 3600.0, uses: int = 1) -> str:
    """A join token made in the store at ``url``."""
    from shoal.platform.ca.tokens import JoinTokens
    from shoal.store.pki import PKIStore

    return with_store(
        url, lambda c: JoinTokens(PKIStore(c.redis, c.keys)).create(ttl=ttl, uses=uses)
    )


token_app = typer.Typer(help="Join tokens for new nodes and gateways.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create", short_help="Make a join token for a new node or gateway.")
def token_create(
    redis: RedisOpt = None,
    ttl: Annotated[str, typer.Option(help="How long the token is valid.")] = "1h",
    uses: Annotated[int, typer.Option(help="How many components it may admit.")] = 1,
    output: OutputOpt = "table",
) -> None:
    """Make a join token: a node or gateway started with it (--join-token or
    $SHOAL_JOIN_TOKEN) gets its first certificate; without one it gets none.

    Example: shoal node --redis redis://10.0.0.5:6379 --join-token $(shoal token create)
    """
    from shoal.platform.control.rollout import parse_interval

    try:
        seconds = parse_interval(ttl, "--ttl")
        url = settings.redis_url(redis)
    except ShoalError as e:
        raise fail(e) from None
    token = new_join_token(url, ttl=seconds, uses=uses)
    show({"token": token, "ttl": seconds, "uses": uses}, output, lines(token))


certs_app = typer.Typer(
    help="The mesh's certificates: holders, renewal, root rotation.",
    no_args_is_help=True,
)
app.add_typer(certs_app, name="certs")


@certs_app.command("status", short_help="The trust bundle and who holds which certificate.")
def certs_status(redis: RedisOpt = None, output: OutputOpt = "table") -> None:
    """The trust bundle, and every component's identities, issuer, expiry and trust.

    Example: shoal certs status
    """
    from shoal.platform.ca.admin import certs_status as read_status

    st = with_client(redis, lambda c: read_status(c.redis, c.keys))
    show(render.certs_dict(st), output, lambda: render.certs(st))


@certs_app.command("rotate", short_help="Renew every leaf now, or rotate the root (--root).")
def certs_rotate(
    redis: RedisOpt = None,
    root: Annotated[
        bool, typer.Option("--root", help="Make a new root and move the mesh to it.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the mesh.")] = 120.0,
    output: OutputOpt = "table",
) -> None:
    """Renew every leaf certificate now, or (--root) rotate the root CA without dropping a
    request: trust old+new, re-issue every leaf from the new root, then retire the old one.

    Example: shoal certs rotate --root --dry-run
    """
    from shoal.platform.ca.admin import certs_status as read_status
    from shoal.platform.ca.admin import renew_leaves, rotate_root

    say = progress(output)

    async def go(c: Client) -> dict[str, Any]:
        if dry_run:
            st = await read_status(c.redis, c.keys)
            show(render.certs_dict(st), output, lambda: render.rotation_plan(st, root=root))
            return {}
        if root:
            return {"root": await rotate_root(c.redis, c.keys, timeout, say)}
        epoch = await renew_leaves(c.redis, c.keys, timeout, say)
        say("done: every component holds renewed certificates")
        return {"epoch": epoch}

    done = with_client(redis, go)
    if done:
        show(done, output, lines())


@certs_app.command("issue", short_help="Sign a mesh certificate with this host's CA.")
def certs_issue(
    identity: Annotated[
        str, typer.Argument(help="SPIFFE ID, e.g. spiffe://cluster.local/svc/hello.")
    ],
    out: Annotated[str, typer.Option(help="Directory for cert.pem, key.pem, bundle.pem.")] = ".",
    hours: Annotated[float, typer.Option(help="Validity in hours.")] = 1.0,
    output: OutputOpt = "table",
) -> None:
    """Sign a mesh certificate with the CA on this host (the controller's state dir), for
    debugging with openssl/curl or for a workload outside Shoal.

    Example: shoal certs issue spiffe://cluster.local/gateway --out /tmp/mesh
    """
    from datetime import timedelta

    from shoal.platform.ca.admin import issue_local
    from shoal.platform.ca.signer import CAFiles

    try:
        paths = issue_local(
            CAFiles(settings.state_dir() / "ca"),
            settings.trust_domain(),
            identity,
            timedelta(hours=hours),
            Path(out),
        )
    except ShoalError as e:
        raise fail(e) from None
    written = [str(p) for p in paths]
    show({"wrote": written}, output, lines("wrote " + ", ".join(written)))


store_app = typer.Typer(help="The store itself: its users.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("users", short_help="Create or reset one Redis user per component.")
def store_users(
    redis: RedisOpt = None,
    out: Annotated[
        str,
        typer.Option(
            help="Directory for gateway.url, node.url, controller.url, dashboard.url (0600)."
        ),
    ] = ".",
    output: OutputOpt = "table",
) -> None:
    """Create (or reset, with new passwords) one Redis user per component kind for this
    cluster (SHOAL_PREFIX) on an external store, and write each one's URL to a private file:
    each component then gets only the keys and commands it needs. Needs an administrator's
    URL; with Sentinel, run it against every server's redis:// URL (Redis does not replicate
    users).

    Example: shoal store users --redis @admin.url --out /etc/shoal
    Example: shoal node --redis @/etc/shoal/node.url
    """
    from shoal.store import acl

    try:
        url = settings.redis_url(redis)
        if not url.startswith(("redis://", "rediss://")):
            raise UserError(
                f"{redacted(url)}: give each server's redis:// URL in turn (Redis does not "
                "replicate ACL users to replicas)"
            )
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
    except ShoalError as e:
        raise fail(e) from None
    except OSError as e:
        raise fail(UserError(f"cannot write to {out}: {e.strerror}")) from None

    async def go(c: Client) -> tuple[dict[str, str], str]:
        made = await acl.create_users(c.redis, c.keys.prefix)
        files = {}
        for role, secret in made.items():
            path = directory / f"{role}.url"
            path.touch(mode=0o600)
            path.chmod(0o600)
            user = acl.user_name(role, c.keys.prefix)
            path.write_text(acl.url_for(url, user, secret) + "\n")
            files[user] = str(path)
        return files, await acl.persist(c.redis)

    files, persisted = with_store(url, go)
    text = [f"{user:24} {path}" for user, path in files.items()] + [f"users {persisted}"]
    show({"users": files, "persisted": persisted}, output, lines(*text))
