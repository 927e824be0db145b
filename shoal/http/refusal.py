"""What the edge answers when a request is the client's fault, and its ``x-shoal-cause``.

A :class:`Rejection` is a value: the pure checks return it, the I/O shell turns it into a
response. On HTTP/1.x every rejection closes the connection (the body was not read, or the
framing cannot be trusted); on HTTP/2 it ends the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

BAD_FRAMING = "bad_framing"  # Content-Length with Transfer-Encoding, bad or conflicting lengths
BAD_REQUEST = "bad_request"  # e.g. two Host headers
BAD_PATH = "bad_path"  # a path the normaliser refuses (encoded slash, bad escape, NUL, ...)
HEADERS_TOO_LARGE = "headers_too_large"
URI_TOO_LONG = "uri_too_long"
BODY_TOO_LARGE = "body_too_large"
REQUEST_TIMEOUT = "request_timeout"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request refused at the edge: the status to answer, its cause and a human message."""

    status: int
    cause: str
    message: str

    def body(self) -> bytes:
        """The plain-text body the edge answers with."""
        return f"{self.cause}: {self.message}\n".encode()
