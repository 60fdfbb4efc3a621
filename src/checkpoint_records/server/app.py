"""The registry's ASGI app: ingest and read APIs under ``/v1``, the web page at ``/``, one store.

Every API route (and ``/openapi.json``) needs a token when tokens are configured; the page's routes
check the same :class:`Auth` themselves, so its login form stays reachable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from ..page import page_router
from ..store import RecordStore
from . import problems
from .auth import Auth

API_PREFIX = "/v1"
TITLE = "checkpoint-records registry"

#: Builds a router mounted at ``/`` next to the API, given the store and the server's :class:`Auth`.
RouterFactory = Callable[[RecordStore, Auth], APIRouter]

PAGE_ROUTERS: tuple[RouterFactory, ...] = (page_router,)


def create_app(
    store: RecordStore, *, tokens: Sequence[str] = (), routers: Sequence[RouterFactory] = PAGE_ROUTERS
) -> FastAPI:
    """The server for ``store``; with ``tokens``, every route needs one of them.

    ``routers`` (the web page's, by default) are mounted at ``/`` after the API.
    """
    auth = Auth(tokens)

    async def authorized(request: Request) -> None:
        if not auth.check(request):
            raise problems.Problem(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    app = FastAPI(title=TITLE, version=_version(), openapi_url=None, docs_url=None, redoc_url=None)
    app.state.store, app.state.auth = store, auth
    problems.install(app)
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorized)])
    app.include_router(api)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorized)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    for router in routers:
        app.include_router(router(store, auth))
    return app


def _version() -> str:
    try:
        return version("checkpoint-records")
    except PackageNotFoundError:
        return "0"
