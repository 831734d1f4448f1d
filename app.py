"""create_app(settings) -> Starlette: the routes, and a lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from . import __version__
from .api.direct import DirectGraphQL
from .api.schema import build_schema
from .api.transport import WEB_DIR, GraphQLApp, error_response, unauthenticated
from .db.health import NOT_MIGRATED, UNREACHABLE, problem, schema_revision
from .db.migrate import head_revision, upgrade_to_head
from .errors import DomainError, ErrorCode
from .observability.logs import configure_logging
from .observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .observability.metrics import Metrics
from .reaper import Reaper
from .resolvers.auth import authenticate, header_credentials
from .resolvers.stats import dashboard_stats_json
from .services import Services
from .settings import Settings

log = logging.getLogger("task_service")


def create_app(settings: Settings) -> Starlette:
    schema = build_schema(settings)
    sdl = schema.as_str() + "\n"
    graphql = GraphQLApp(schema, settings=settings)
    started = time.monotonic()

    metrics = Metrics(__version__)
    head = head_revision()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.auto_migrate:
            try:
                await upgrade_to_head(settings.database_url)
            except Exception as exc:  # reported once here, then by /health until fixed
                log.error("cannot migrate the database: %s", problem(exc) or exc)
        services = Services.build(settings, metrics)
        await services.start()
        await _report_schema(services, head)
        reaper = Reaper(services)
        reaper.start()
        app.state.services = services
        graphql.services = services
        log.info("%s", auth_mode(settings))
        if settings.api_key is None and settings.host not in {"127.0.0.1", "localhost", "::1"}:
            log.warning("API_KEY is not set and the service listens on %s: anyone can call it", settings.host)
        try:
            yield
        finally:
            await reaper.stop()
            await services.close()

    async def root(request: Request) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/dashboard/", status_code=307)
        # heartbeatTimeoutSeconds: an ONLINE or BUSY agent heartbeated at most this long ago
        # (the dashboard shows "< N s" once its own count of an agent's silence passes it).
        return JSONResponse(
            {
                "status": "ok",
                "service": "task-service",
                "version": __version__,
                "heartbeatTimeoutSeconds": settings.heartbeat_timeout_seconds,
            }
        )

    async def health(request: Request) -> Response:
        services: Services = request.app.state.services
        body: dict[str, Any] = {
            "service": "task-service",
            "version": __version__,
            "uptimeSeconds": round(time.monotonic() - started, 1),
            "database": "ok",
            # For operators and the leak tests: the bus's state and this process's task count
            # (a closed WebSocket must give back its listeners and tasks).
            "bus": {
                "connected": services.bus.connected,
                "listeners": services.bus.listener_count,
                "reconnects": services.bus.reconnects,
            },
            # taskEvents subscribers riding a fan-out group (events/fanout.py), and the groups.
            "fanOut": {"groups": len(services.fan_out), "riders": services.fan_out.riders},
            "tasks": len(asyncio.all_tasks()),
        }
        reasons = []
        try:
            async with services.read() as session:
                revision = await schema_revision(session)
        except Exception as exc:  # any failure to read the database makes the service unavailable
            reason = problem(exc) or f"database error ({type(exc).__name__})"
            body["database"] = "unreachable" if reason == UNREACHABLE else "error"
            reasons.append(reason)
        else:
            if revision != head:
                body["database"] = "not migrated"
                reasons.append(
                    f"{NOT_MIGRATED} (at {revision or 'no revision'}, needs {head}): run `task-service migrate`"
                )
        if not services.bus.connected:
            reasons.append("event bus down")
        if reasons:
            body["status"] = "unavailable"
            body["reason"] = "; ".join(reasons)
            return JSONResponse(body, status_code=503)
        body["status"] = "ok"
        return JSONResponse(body)

    async def docs(request: Request) -> Response:
        return RedirectResponse("/graphql", status_code=307)

    async def schema_sdl(request: Request) -> Response:
        return PlainTextResponse(sdl, media_type="text/plain; charset=utf-8")

    async def stats(request: Request) -> Response:
        services: Services = request.app.state.services
        if (refusal := await require_credential(request)) is not None:
            return refusal
        try:
            return JSONResponse(await dashboard_stats_json(services, request.query_params.get("projectId")))
        except DomainError as exc:
            status = 404 if exc.code is ErrorCode.NOT_FOUND else 400
            return JSONResponse({"error": exc.message, "code": exc.code.value}, status_code=status)

    async def prometheus(request: Request) -> Response:
        if (refusal := await require_credential(request)) is not None:
            return refusal
        services: Services = request.app.state.services
        snapshot = await services.metrics_snapshot()
        return Response(services.metrics.render(snapshot), media_type=METRICS_CONTENT_TYPE)

    routes = [
        Route("/", root),
        Route("/health", health),
        Route("/docs", docs),
        Route("/schema.graphql", schema_sdl),
        Route("/dashboard/stats", stats),
        Route("/metrics", prometheus),
        # Every method reaches the GraphQL app, which refuses all but GET and POST with a
        # GraphQL-shaped 405 (a route-level method list answers in plain text).
        Route("/graphql", graphql),
        WebSocketRoute("/graphql", graphql),
        # After /dashboard/stats: the mount takes every other path under /dashboard/.
        Mount("/dashboard", app=StaticFiles(directory=WEB_DIR, html=True), name="dashboard"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if settings.trusted_proxies:
        # X-Forwarded-For / -Proto are believed only from these peers (uvicorn itself runs
        # with proxy headers off: see cli.py), so a client cannot pick its own address.
        middleware.insert(0, Middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies))
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
            )
        )
    if settings.graphql_direct:
        # Innermost, so that it answers with the same headers (security, CORS) and client
        # address (trusted proxies) as the route behind it.
        middleware.append(Middleware(DirectGraphQL, graphql=graphql))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.settings = settings
    app.state.schema = schema
    app.state.metrics = metrics
    return app


def auth_mode(settings: Settings) -> str:
    """One line saying how callers are authenticated."""
    if settings.auth_enabled:
        return "authentication: on (API_KEY set): X-API-Key or an agent's Bearer token on every GraphQL call"
    return "authentication: off (API_KEY not set): anyone who can reach the port can act as any agent"


async def require_credential(request: Request) -> Response | None:
    """For the plain-HTTP views that need a credential when API_KEY is set (/dashboard/stats,
    /metrics): None when the caller may proceed, else the 401 to send."""
    services: Services = request.app.state.services
    api_key, authorization = header_credentials(request.headers)
    client_ip = request.client.host if request.client else None
    caller = await authenticate(services, api_key, authorization, client_ip=client_ip)
    if caller.authenticated:
        return None
    return error_response(unauthenticated(caller))


# Our pages load only our own files (the dashboard and GraphiQL are vendored), talk only to
# this origin, and may not be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)
_CSP = CONTENT_SECURITY_POLICY.encode()
_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Hardening headers on every HTTP response, and a Content-Security-Policy on pages."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        dashboard = scope["path"].startswith("/dashboard/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # The raw header list, not MutableHeaders: this runs for every response.
                headers = [*message.get("headers", ()), *_COMMON_HEADERS]
                names = {name.lower(): value for name, value in headers}
                if names.get(b"content-type", b"").startswith(b"text/html"):
                    headers.append((b"content-security-policy", _CSP))
                if dashboard and b"cache-control" not in names:
                    # Revalidate (ETag) on every load: after an upgrade no browser keeps old JS.
                    headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _report_schema(services: Services, head: str) -> None:
    """One line at startup when the database cannot serve yet (/health keeps saying why)."""
    try:
        async with services.read() as session:
            revision = await schema_revision(session)
    except Exception as exc:
        log.error("database: %s; /health answers 503 until it is back", problem(exc) or exc)
        return
    if revision != head:
        log.error(
            "database is not migrated (at %s, needs %s): run `task-service migrate`; /health answers 503 until then",
            revision or "no revision",
            head,
        )


def create_app_from_env() -> Starlette:
    """uvicorn factory (`task_service.app:create_app_from_env`): settings from the environment,
    and logging set up from them in each worker process."""
    from .settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format.value)
    app = create_app(settings)
    tune_gc()
    return app


GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation (CPython: 700)
GC_OLDEST_THRESHOLD = 1  # middle-generation collections before a full one, less one (CPython: 10)


def tune_gc() -> None:
    """The cyclic garbage collector, for a server process: what is built at startup (modules,
    the schema) lives as long as the process, so it is moved out of the collector's passes
    (gc.freeze), and the youngest generation is collected after 10,000 allocations instead
    of 700. Fanning events out to 1,000 subscribers, the collector was 13.5 % of the server's
    CPU (py-spy --native).

    With the youngest generation collected that rarely, a full collection came only every
    1.2 million allocations: about every 5 minutes at B9's moderate load, while what dies
    in a cycle after surviving two young collections (the log tail's rows leaving its
    window: SQLAlchemy's instance state is a cycle; a finished subscription's executor)
    piled up for it, and the RSS rose to the pile's high-water mark and stayed there
    (bench/PROFILE.md, B9). So a full collection follows every second collection of the
    middle generation (about 220,000 allocations). CPython still skips it until the objects
    promoted since the last one are a quarter of the old generation, so its cost stays
    proportional to what was allocated; the frozen startup objects are never traversed."""
    gc.freeze()
    _, older, _ = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, GC_OLDEST_THRESHOLD)
