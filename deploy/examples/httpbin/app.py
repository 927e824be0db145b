"""A few of httpbin's endpoints (the service Istio's circuit-breaking and mirroring tasks use),
as a Starlette app: ``/get``, ``/headers``, ``/status/{code}``, ``/delay/{seconds}``. Like
httpbin's server it writes an access line per request to its output (``shoal logs`` / the
instance's log file), which is how Istio's mirroring task sees the copies v2 receives.
"""

from __future__ import annotations

import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

VERSION = os.environ.get("SHOAL_REVISION", "dev")
MAX_DELAY = 10.0  # seconds, as httpbin caps /delay


def _access(request: Request, status: int) -> None:
    host = request.headers.get("host", "-")
    print(f'{VERSION} "{request.method} {request.url.path}" {status} host={host}', flush=True)


def _echo(request: Request) -> dict[str, object]:
    return {
        "args": dict(request.query_params),
        "headers": {name.title(): value for name, value in request.headers.items()},
        "url": str(request.url),
        "version": VERSION,
    }


async def get(request: Request) -> JSONResponse:
    _access(request, 200)
    return JSONResponse(_echo(request))


async def headers(request: Request) -> JSONResponse:
    _access(request, 200)
    return JSONResponse({"headers": _echo(request)["headers"]})


async def status(request: Request) -> Response:
    code = int(request.path_params["code"])
    _access(request, code)
    return Response(status_code=code)


async def delay(request: Request) -> JSONResponse:
    await asyncio.sleep(min(float(request.path_params["seconds"]), MAX_DELAY))
    _access(request, 200)
    return JSONResponse(_echo(request))


app = Starlette(
    routes=[
        Route("/get", get),
        Route("/headers", headers),
        Route("/status/{code:int}", status, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        Route("/delay/{seconds:float}", delay),
    ]
)
