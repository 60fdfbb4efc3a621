"""Every error the server answers is an RFC 7807 problem document (``application/problem+json``) with
exactly the fields of the shared ``error.schema.json``: ``status``, ``title``, ``detail``, ``instance``;
except under the OpenAI-shaped routes, which answer OpenAI's own error object (``{"error": {"message",
"type", "param", "code"}}``), the one the ``openai`` SDK reads its message from.

``HttpSink`` turns ``title: detail`` into the reason it keeps for a rejected record, so ``detail`` names
the offending field (``status.size: Input should be a valid integer``) and never echoes a credential.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class ProblemDetails(BaseModel):
    """The error document (the shared ``error.schema.json``), for the OpenAPI description."""

    model_config = ConfigDict(extra="forbid")

    status: int
    title: str
    detail: str
    instance: str | None = None


class Problem(Exception):
    """Raised by a route to answer with a problem document."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


def problem_response(
    status: int, detail: str, instance: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "title": HTTPStatus(status).phrase, "detail": detail}
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


def openai_error_response(
    status: int, detail: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """OpenAI's error object: ``type`` as OpenAI names its classes of error, ``code`` the status in
    words (``not_found``), ``invalid_api_key`` for a refused token as OpenAI says it."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    code = "invalid_api_key" if status == 401 else HTTPStatus(status).phrase.lower().replace(" ", "_")
    body = {"error": {"message": detail, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def field_path(location: Sequence[int | str]) -> str:
    """A pydantic error location as a JSON path: ``("status", "files", 0, "size")`` -> ``status.files[0].size``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


def describe_errors(errors: Sequence[Mapping[str, Any]], limit: int = 5) -> str:
    """Pydantic errors as ``field: message; ...`` (the first ``limit``); never the values themselves."""
    parts = [f"{field_path(error.get('loc', ()))}: {error.get('msg', 'invalid')}" for error in errors[:limit]]
    more = len(errors) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def install(app: FastAPI, openai_prefix: str) -> None:
    """Answer HTTP errors, invalid parameters and :class:`Problem` as problem documents, or as OpenAI's
    error object under ``openai_prefix``."""

    def answer(
        request: Request,
        status: int,
        detail: str,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
    ) -> JSONResponse:
        path = request.url.path
        if path == openai_prefix or path.startswith(openai_prefix + "/"):
            return openai_error_response(status, detail, param, headers)
        return problem_response(status, detail, path, headers)

    async def on_problem(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, Problem)
        return answer(request, error.status, error.detail, error.headers)

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        return answer(request, error.status_code, str(error.detail), error.headers)

    async def on_invalid(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        # FastAPI's locations start with where the value came from ("query", "path"): keep the name.
        errors = [{**item, "loc": tuple(item.get("loc", ()))[1:]} for item in error.errors()]
        param = field_path(errors[0]["loc"]) if errors else None
        return answer(request, 422, describe_errors(errors), param=param)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)
