"""Header predicates of the HTTP vocabulary."""

from __future__ import annotations

from shoal.http.headers import h2c_upgrade


def test_an_h2c_upgrade_needs_one_well_formed_settings_field() -> None:
    """curl --http2's request switches; a malformed or repeated HTTP2-Settings, or another
    Upgrade, does not (the request is served as HTTP/1.1)."""
    curl = [(b"upgrade", b"h2c"), (b"http2-settings", b"AAMAAABkAAQCAAAAAAIAAAAA")]
    assert h2c_upgrade(curl)
    assert h2c_upgrade([(b"upgrade", b"h2c"), (b"http2-settings", b"")])
    assert not h2c_upgrade([(b"upgrade", b"h2c"), (b"http2-settings", b"AAMA")])
    assert not h2c_upgrade([(b"upgrade", b"h2c"), (b"http2-settings", b"!!!notbase64")])
    assert not h2c_upgrade([*curl, (b"http2-settings", b"")])
    assert not h2c_upgrade([(b"upgrade", b"websocket"), (b"http2-settings", b"")])
