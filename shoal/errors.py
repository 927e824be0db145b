"""Shoal's one exception root.

Every error Shoal raises on purpose is a ``ShoalError``; each subclass says whose fault it is
and how it surfaces (a CLI exit code, or an HTTP status plus an ``x-shoal-cause``)::

    ShoalError                      exit 1
    ├── UserError                   exit 2: the user's input (flags, manifests) is wrong
    │   └── ManifestError           a manifest field is invalid: file, document, field path, value
    ├── NotFoundError               exit 3: the named resource does not exist
    ├── StoreError                  exit 4: Redis is unreachable or answered an error
    │   └── StoreUnavailable        no Redis at the URL (and none embedded running)
    └── PlatformError               exit 5: a Shoal process could not do its job (spawn, bind)

Foreign exceptions (``redis``, ``ssl``, ``aiohttp``, ``OSError``) are translated into this tree
at the module that talks to them and never escape it.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Root of every error Shoal raises on purpose."""

    exit_code = 1


class UserError(ShoalError):
    """The user's input is wrong; nothing was changed."""

    exit_code = 2


class ManifestError(UserError):
    """A manifest document is invalid: names the file, document index, field path and value."""

    def __init__(
        self,
        message: str,
        *,
        file: str = "",
        document: int | None = None,
        field: str = "",
        value: object = None,
    ) -> None:
        self.file = file
        self.document = document
        self.field = field
        self.value = value
        self.reason = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.document is not None:
            where.append(f"document {self.document}")
        if self.field:
            where.append(f"field {self.field}")
        prefix = ": ".join([", ".join(where)]) if where else ""
        shown = f" (got {_brief(self.value)})" if self.value is not None else ""
        return f"{prefix}: {self.reason}{shown}" if prefix else f"{self.reason}{shown}"

    def located(self, *, file: str, document: int) -> ManifestError:
        """The same error, told which file and document it came from."""
        return ManifestError(
            self.reason, file=file, document=document, field=self.field, value=self.value
        )


def _brief(value: object, limit: int = 160) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a whole mapping can be long)."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


class NotFoundError(ShoalError):
    """The named resource does not exist."""

    exit_code = 3


class StoreError(ShoalError):
    """Redis could not be reached or answered with an error."""

    exit_code = 4


class StoreUnavailable(StoreError):
    """No Redis at the given URL, and no embedded one running."""


class PlatformError(ShoalError):
    """A Shoal process could not do its job (spawn a child, bind a port)."""

    exit_code = 5
