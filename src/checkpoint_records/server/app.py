"""The registry's ASGI app: ingest and read APIs under ``/v1``, the web page at ``/``, one store.

Every API route (and ``/openapi.json``) needs a bearer token when tokens are configured (never the page's
cookie); the page's routes check the same :class:`Auth` themselves, so its login form stays reachable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..page import page_router
from ..signing import SigningSecret
from ..store import RecordStore
from . import problems
from .auth import Auth
from .evaluations_api import evaluations_router
from .ingest import DOCUMENT_MODELS, MAX_BODY_BYTES, QUEUE_CAPACITY, Writer, ingest_router
from .llama_stack_api import llama_stack_router
from .openai_api import OPENAI_PREFIX, openai_router
from .registry_api import registry_router

API_PREFIX = "/v1"
TITLE = "checkpoint-records registry"

#: Builds a router mounted at ``/`` next to the API, given the store and the server's :class:`Auth`.
RouterFactory = Callable[[RecordStore, Auth], APIRouter]

PAGE_ROUTERS: tuple[RouterFactory, ...] = (page_router,)


def create_app(
    store: RecordStore,
    *,
    tokens: Sequence[str] = (),
    routers: Sequence[RouterFactory] = PAGE_ROUTERS,
    max_body_bytes: int = MAX_BODY_BYTES,
    queue_capacity: int = QUEUE_CAPACITY,
    signing_secret: SigningSecret | None = None,
) -> FastAPI:
    """The server for ``store``; with ``tokens``, every route needs one of them.

    ``routers`` (the web page's, by default) are mounted at ``/`` after the API. Ingest refuses bodies
    over ``max_body_bytes`` (413), answers 429 while more than ``queue_capacity`` documents wait, and
    with a ``signing_secret`` refuses (401) what it does not sign.
    """
    auth = Auth(tokens)
    writer = Writer(store, queue_capacity)

    async def authorized(request: Request) -> None:
        if not auth.bearer(request):
            raise problems.Problem(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            writer.stop()

    app = FastAPI(
        title=TITLE, version=_version(), openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.store, app.state.auth, app.state.writer = store, auth, writer
    problems.install(app, openai_prefix=API_PREFIX + OPENAI_PREFIX)
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorized)])
    api.include_router(ingest_router(writer, max_body_bytes, signing_secret))
    api.include_router(registry_router(store))
    api.include_router(openai_router(store))
    api.include_router(llama_stack_router(store))
    api.include_router(evaluations_router(store))
    app.include_router(api)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorized)])
    async def openapi() -> JSONResponse:
        if app.openapi_schema is None:
            app.openapi_schema = _describe(app)
        return JSONResponse(app.openapi_schema)

    for router in routers:
        app.include_router(router(store, auth))
    return app


def _describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the documents ingest reads itself (to refuse large bodies early)."""
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    models: list[type[BaseModel]] = [*DOCUMENT_MODELS, problems.ProblemDetails]
    _, schemas = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(schemas["$defs"])
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    document["security"] = [{"bearer": []}]
    return document


def _version() -> str:
    try:
        return version("checkpoint-records")
    except PackageNotFoundError:
        return "0"
