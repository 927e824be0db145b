"""Istio's Bookinfo in miniature, as Starlette apps, so that the manifests of Istio's traffic
and security tasks can be tried on Shoal as they are written.

As in Bookinfo, ``productpage`` calls ``details`` and ``reviews``; ``reviews`` v1 shows no
stars, v2 asks ``ratings`` and shows black stars, v3 red ones. Every call carries the
caller's ``end-user`` header on (Bookinfo's productpage sets it for a logged-in user; here the
client sends it), and the timeouts are Bookinfo's: productpage gives reviews 3 s and one more
try, and details 3 s; reviews v2 gives ratings 10 s, v3 2.5 s. A call that fails shows as an
``error`` in the page, as Bookinfo's "Sorry, product reviews are currently unavailable".
Each answer is JSON naming the revision that served it; ``reviews`` also shows the request
headers it received and answers with a header ``foo: bar`` (what the header example of Istio's
VirtualService reference sets and removes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

VERSION = os.environ.get("SHOAL_REVISION", "dev")
MESH = os.environ.get("SHOAL_MESH_URL", "http://127.0.0.1:15001")
PROPAGATED = ("end-user", "x-request-id", "traceparent", "tracestate")
STARS = {"v2": "black", "v3": "red"}
RATINGS_TIMEOUT = {"v2": 10.0, "v3": 2.5}  # seconds, as Bookinfo's reviews has them

_session: aiohttp.ClientSession | None = None


async def call(
    request: Request, host: str, path: str, timeout: float, tries: int = 1
) -> dict[str, object]:
    """GET ``path`` of ``host`` through the mesh with the request's propagated headers: the
    answer's JSON, or what went wrong (status and error)."""
    global _session
    if _session is None:
        _session = aiohttp.ClientSession()
    headers = {"Host": host, **{h: request.headers[h] for h in PROPAGATED if h in request.headers}}
    failure: dict[str, object] = {}
    for _ in range(tries):
        try:
            async with _session.get(
                f"{MESH}{path}", headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as answer:
                if answer.status == 200:
                    found: dict[str, object] = await answer.json()
                    return found
                failure = {"status": answer.status, "cause": answer.headers.get("x-shoal-cause")}
        except TimeoutError:
            failure = {"status": None, "cause": f"no answer within {timeout:g}s"}
        except aiohttp.ClientError as err:
            failure = {"status": None, "cause": str(err)}
    return {"error": f"{host} is currently unavailable", **failure}


async def productpage(request: Request) -> JSONResponse:
    details, reviews = await asyncio.gather(
        call(request, "details", "/details/0", 3.0),
        call(request, "reviews", "/reviews/0", 3.0, tries=2),
    )
    page = {"service": "productpage", "version": VERSION, "user": request.headers.get("end-user")}
    return JSONResponse({**page, "details": details, "reviews": reviews})


async def details(request: Request) -> JSONResponse:
    book = {"id": 0, "author": "William Shakespeare", "year": 1595, "pages": 200}
    return JSONResponse({"service": "details", "version": VERSION, **book})


async def reviews(request: Request) -> JSONResponse:
    answer: dict[str, object] = {
        "service": "reviews",
        "version": VERSION,
        "reviews": [
            {"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare."},
            {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining."},
        ],
    }
    color = STARS.get(VERSION)
    if color is not None:
        ratings = await call(request, "ratings", "/ratings/0", RATINGS_TIMEOUT[VERSION])
        answer["ratings"] = ratings if "error" in ratings else {**ratings, "color": color}
    answer["headers"] = dict(request.headers)
    return JSONResponse(answer, headers={"foo": "bar"})


async def ratings(request: Request) -> JSONResponse:
    scores = {"Reviewer1": 5, "Reviewer2": 4}
    return JSONResponse({"service": "ratings", "version": VERSION, "ratings": scores})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    if _session is not None:
        await _session.close()


def _app(path: str, endpoint: Callable[[Request], Awaitable[JSONResponse]]) -> Starlette:
    routes = [Route(path, endpoint), Route("/healthz", healthz)]
    return Starlette(routes=routes, lifespan=_lifespan)


productpage_app = _app("/productpage", productpage)
details_app = _app("/details/{id}", details)
reviews_app = _app("/reviews/{id}", reviews)
ratings_app = _app("/ratings/{id}", ratings)
