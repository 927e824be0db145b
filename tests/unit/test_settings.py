"""Secrets never come from a command line: ``--redis`` and ``--join-token`` values."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import UserError
from shoal.platform import settings
from shoal.store.connection import carries_secret


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("redis://user@10.0.0.5:6379", False),
        ("redis://:pw@127.0.0.1:6379/0", True),
        ("rediss://shoal:pw@db:6380", True),
        ("redis+sentinel://s1:26379,s2:26379/mymaster?sentinel_password=pw", True),
        ("redis+sentinel://:pw@s1:26379/mymaster", True),
    ],
)
def test_a_url_carries_a_secret_when_it_has_a_password(url: str, secret: bool) -> None:
    assert carries_secret(url) is secret


def test_a_store_password_on_the_command_line_is_refused() -> None:
    with pytest.raises(UserError, match=r"--redis: a store password .* \(ps\)") as e:
        settings.store_flag("redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in str(e.value)
    assert settings.store_flag("redis://10.0.0.5:6379") == "redis://10.0.0.5:6379"
    assert settings.store_flag(None) is None


def test_a_join_token_on_the_command_line_is_refused_and_the_environment_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(UserError, match="--join-token: a join token on the command line"):
        settings.join_token("abcd.efgh")
    monkeypatch.setenv("SHOAL_JOIN_TOKEN", "abcd.efgh")
    assert settings.join_token(None) == "abcd.efgh"


def test_a_secret_file_is_read_only_when_private(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abcd.efgh\n")
    path.chmod(0o640)
    with pytest.raises(
        UserError, match=f"other users may read it \\(mode 640\\): chmod 600 {path}"
    ):
        settings.join_token(f"@{path}")
    path.chmod(0o600)
    assert settings.join_token(f"@{path}") == "abcd.efgh"
    with pytest.raises(UserError, match="cannot read a join token from"):
        settings.join_token(f"@{tmp_path / 'missing'}")
    path.write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        settings.join_token(f"@{path}")
