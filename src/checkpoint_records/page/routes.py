"""The web page's routes: HTML pages, their small JSON feeds under ``/ui/api``, assets under ``/ui/static``.

Thin on purpose: each route reads the store, asks :mod:`.views` what to show, and hands it to a Jinja2
template that escapes everything. Every response carries a strict Content-Security-Policy (scripts and
styles only from this package, nothing inline), so text a training job wrote can never run as code.
Read access follows the server's tokens: without a valid session a page redirects to ``/login``, whose
form trades a token for an HttpOnly, SameSite=Strict session cookie (a token never goes in a URL).
SameSite does not tell ports or sibling hosts of one site apart, so signing in and out also refuse a
request another origin's page sent (:func:`same_origin`): no one else's page signs a reader in or out.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from ..storage import live_upload_status, live_upload_statuses
from . import views

if TYPE_CHECKING:
    from ..server.auth import Auth  # the server passes its own in: the page never imports the server
    from ..store import CheckpointStats, RecordStore, StoredJob

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
#: Checkpoints listed under a job's chart unless the reader asks for all (the chart marks every one).
TABLE_ROWS = 100
#: A login form is a token and a path: anything bigger is not one.
_MAX_FORM_BYTES = 8192


class Assets:
    """The package's static files, read once: content, type and a content hash for cache-busting URLs."""

    def __init__(self) -> None:
        folder = resources.files(__package__).joinpath("static")
        self.files: dict[str, tuple[bytes, str]] = {}
        self.versions: dict[str, str] = {}
        for entry in folder.iterdir():
            if entry.is_file():
                content = entry.read_bytes()
                media = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                self.files[entry.name] = (content, media)
                self.versions[entry.name] = hashlib.sha256(content).hexdigest()[:12]

    def url(self, name: str) -> str:
        return f"/ui/static/{name}?v={self.versions[name]}"


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (never ``//host`` or a scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def same_origin(request: Request) -> bool:
    """Whether a browser sent ``request`` from this server's own pages (or it is no browser's).

    ``Sec-Fetch-Site``, which the browser sets itself, decides when present (right behind a proxy that
    rewrites the host too); else an ``Origin`` must name this host. A client that sends neither (curl, a
    script) is no page of another origin.
    """
    fetched_from = request.headers.get("sec-fetch-site")
    if fetched_from is not None:
        return fetched_from in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc == request.headers.get("host")
    except ValueError:
        return False


def page_router(store: RecordStore, auth: Auth) -> APIRouter:
    """The page's routes over ``store``, readable by whoever ``auth`` lets in."""
    router = APIRouter(include_in_schema=False)
    assets = Assets()
    templates = Environment(
        loader=PackageLoader(__package__, "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.globals["asset"] = assets.url
    cookie = auth.session_cookie

    def page(name: str, request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("signed_in", cookie in request.cookies)
        html = templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def data(content: Any, status_code: int = 200) -> JSONResponse:
        return JSONResponse(content, status_code=status_code, headers=SECURITY_HEADERS)

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", 303, headers=SECURITY_HEADERS)

    def not_found(request: Request, what: str) -> HTMLResponse:
        return page("missing.html", request, status_code=404, what=what)

    def cross_origin() -> JSONResponse:
        return data({"detail": "refused: this form was sent from another site's page"}, 403)

    @router.get("/")
    def jobs_page(request: Request, q: str = "") -> Response:
        if not auth.check(request):
            return to_login(request)
        jobs = views.job_summaries(store.jobs(), store.checkpoint_stats(), q)
        return page("jobs.html", request, jobs=jobs, query=q)

    @router.get("/jobs/{job_id}")
    def job_page(request: Request, job_id: str, all: bool = False) -> Response:
        if not auth.check(request):
            return to_login(request)
        view = job_view(job_id, None if all else TABLE_ROWS)
        if view is None:
            return not_found(request, f"job {job_id}")
        return page("job.html", request, view=view, feed=f"/ui/api/jobs/{quote(job_id, safe='')}")

    @router.get("/compare")
    def compare_page(request: Request, job: list[str] = Query(default=[])) -> Response:  # noqa: B008
        if not auth.check(request):
            return to_login(request)
        summaries = views.job_summaries(store.jobs(), store.checkpoint_stats())
        chosen = [summary for summary in summaries if summary["id"] in job]
        feed = "/ui/api/compare?" + "&".join(f"job={quote(s['id'], safe='')}" for s in chosen)
        return page("compare.html", request, jobs=chosen, all_jobs=summaries, feed=feed)

    @router.get("/checkpoints/{name_or_id:path}")
    def checkpoint_page(request: Request, name_or_id: str) -> Response:
        if not auth.check(request):
            return to_login(request)
        stored = store.get(name_or_id)
        if stored is None:
            return not_found(request, f"checkpoint {name_or_id}")
        record_id = stored.record.id
        view = views.checkpoint_view(
            stored,
            store.outbox.deliveries(record_id),
            store.record_revisions(record_id),
            live_upload_status(store, stored.record),
            store.origins([record_id]).get(record_id),
        )
        return page("checkpoint.html", request, view=view)

    def job_view(job_id: str, newest: int | None) -> dict[str, Any] | None:
        """The job's summary and its ``newest`` checkpoints (all of them with None), in a few queries
        whatever their number."""
        found = job_of(job_id)
        if found is None:
            return None
        stored, stats = found
        records = store.records(job_id) if newest is None else store.records_newest_first(job_id, newest)
        record_ids = [entry.record.id for entry in records]
        deliveries = store.outbox.deliveries_of(record_ids)
        uploads = live_upload_statuses(store, [entry.record for entry in records])
        return views.job_view(job_id, stored, stats, records, deliveries, uploads, store.origins(record_ids))

    def chart_view(job_id: str) -> dict[str, Any] | None:
        found = job_of(job_id)
        if found is None:
            return None
        stored, stats = found
        return views.chart_view(job_id, stored, stats, store.records(job_id), curves_of(job_id, stats))

    def job_of(job_id: str) -> tuple[StoredJob | None, CheckpointStats | None] | None:
        """The job's document and its checkpoints' numbers; None when the store knows neither."""
        stored, stats = store.job(job_id), next(iter(store.checkpoint_stats(job_id)), None)
        return None if stored is None and stats is None else (stored, stats)

    def curves_of(job_id: str, stats: CheckpointStats | None) -> dict[str, list[list[float]]]:
        return curves_at(job_id, store.log_version(job_id), stats.checkpoints if stats is not None else 0)

    @functools.lru_cache(maxsize=32)
    def curves_at(job_id: str, log: tuple[int, int], checkpoints: int) -> dict[str, list[list[float]]]:
        """The job's downsampled curves, computed again only once its log changed (``log``: its
        :meth:`~..store.RecordStore.log_version`, written here or received in any order) or its checkpoints
        grew: a page that follows a long run asks every few seconds, and reading 100,000 steps is the
        costly part."""
        train = store.log_series(job_id, max_points=views.MAX_CHART_POINTS, having="loss")
        evaluation = store.log_series(job_id, max_points=views.MAX_CHART_POINTS, having="eval_loss")
        return views.curves(train, evaluation)

    @router.get("/ui/api/jobs/{job_id}")
    def job_feed(request: Request, job_id: str) -> Response:
        if not auth.check(request):
            return data({"detail": "sign in first"}, 401)
        view = chart_view(job_id)
        return data({"detail": "no such job"}, 404) if view is None else data(view)

    @router.get("/ui/api/compare")
    def compare_feed(request: Request, job: list[str] = Query(default=[])) -> Response:  # noqa: B008
        if not auth.check(request):
            return data({"detail": "sign in first"}, 401)
        found = []
        for job_id in dict.fromkeys(job):
            known = job_of(job_id)
            if known is not None:
                summary = views.job_summary(job_id, *known)
                found.append({**summary, "curves": curves_of(job_id, known[1])})
        return data({"jobs": found})

    @router.get("/ui/static/{name}")
    def static(name: str) -> Response:
        if name not in assets.files:
            return Response(status_code=404)
        content, media = assets.files[name]
        headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
        return Response(content, media_type=media, headers=headers)

    @router.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:
        if not auth.required:  # nothing to sign in to
            return RedirectResponse(safe_next(next), 303, headers=SECURITY_HEADERS)
        return page("login.html", request, next=safe_next(next), failed=False, signed_in=False)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return cross_origin()
        body = b""
        async for chunk in request.stream():  # never hold more than a login form's worth
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return data({"detail": "a login form is a token, nothing bigger"}, 413)
        form = parse_qs(body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        target = safe_next((form.get("next") or ["/"])[0])
        session = auth.open_session(token) if token else None
        if session is None:
            return page("login.html", request, status_code=401, next=target, failed=True, signed_in=False)
        response = RedirectResponse(target, 303, headers=SECURITY_HEADERS)
        response.set_cookie(
            cookie,
            session,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.api_route("/logout", methods=["GET", "POST"])
    def logout(request: Request) -> Response:
        if not same_origin(request):
            return cross_origin()
        session = request.cookies.get(cookie)
        if session:
            auth.close_session(session)
        response = RedirectResponse("/login", 303, headers=SECURITY_HEADERS)
        response.delete_cookie(cookie, path="/", httponly=True, samesite="strict")
        return response

    return router
