"""The daemon's HTTP server: `/healthz` and `/readyz` for the orchestrator, `/metrics` for
Prometheus, `/` the status page. On CRMSYNCD_HTTP_HOST:CRMSYNCD_HTTP_PORT (loopback by default);
with CRMSYNCD_HTTP_TOKEN set, everything but the two probes needs `Authorization: Bearer TOKEN`
(probes stay open: a kubelet or a container HEALTHCHECK sends no credentials).

Liveness is the process and its scheduler; readiness asks the database itself (it answers, its
migrations are applied) and the run history (the last pass did not fail for refused
credentials), at every probe, so it never reports a state of its own."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crmsyncd.config import ConfigError, Settings
from crmsyncd.observability.logging import get_logger
from crmsyncd.observability.metrics import CONTENT_TYPE, Metrics
from crmsyncd.observability.status_page import render_status
from crmsyncd.store.db import DATABASE_ERRORS, describe_database_error
from crmsyncd.store.migrate import pending_migrations

if TYPE_CHECKING:
    from crmsyncd.app import App

log = get_logger()

# Seconds a probe or a scrape waits for the database: an orchestrator's probe times out in a
# few seconds, and a hung database is as unready as a refused one.
PROBE_TIMEOUT = 3.0
# Seconds the server waits for requests in flight when it stops (within the daemon's bound).
SHUTDOWN_TIMEOUT = 1.0
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class DaemonState:
    """What the probes look at, set by the daemon as it starts and stops."""

    app: App | None = None
    scheduler: Any = None  # APScheduler's AsyncIOScheduler (untyped)
    stopping: bool = False


async def readiness(state: DaemonState) -> tuple[bool, str]:
    """(ready, why): the reason names what is wrong."""
    app = state.app
    if state.stopping:
        return False, "stopping"
    if app is None:
        return False, "starting"
    try:
        pending = await asyncio.wait_for(pending_migrations(app.pool), PROBE_TIMEOUT)
        last = await asyncio.wait_for(app.engine.runs.last_finished(), PROBE_TIMEOUT)
    except TimeoutError:
        return False, f"database: no answer within {PROBE_TIMEOUT:g}s"
    except DATABASE_ERRORS as exc:
        return False, f"database: {describe_database_error(exc)}"
    if pending:
        return False, f"migrations not applied: {', '.join(map(str, pending))}"
    if last is not None and last["status"] == "failed":
        # Refused credentials (or a spent daily quota): no pass can work until that is fixed.
        return False, f"the last {last['kind']} pass (#{last['id']}) failed: {last['error']}"
    return True, "ok"


def _liveness(state: DaemonState) -> tuple[bool, str]:
    if state.stopping:
        return False, "stopping"
    if state.app is None:
        return True, "starting"  # opening the database, migrating: alive, not ready
    if state.scheduler is None or not state.scheduler.running:
        return False, "the scheduler is not running"
    return True, "ok"


def build_web_app(state: DaemonState, metrics: Metrics, token: str | None) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            # Constant time: how much of a guess matched must not show in the answer's timing.
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response(
                    {"error": "a bearer token is required (CRMSYNCD_HTTP_TOKEN)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="crmsyncd"'},
                )
        return await handler(request)

    async def healthz(request: web.Request) -> web.Response:
        alive, why = _liveness(state)
        app = state.app
        live = app.engine.live if app is not None else None
        body = {"status": why, "pass": None if live is None else live.kind}
        return web.json_response(body, status=200 if alive else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready, why = await readiness(state)
        return web.json_response({"ready": ready, "reason": why}, status=200 if ready else 503)

    async def metrics_page(request: web.Request) -> web.Response:
        if state.app is None:
            return web.json_response({"error": "starting"}, status=503)
        body = await metrics.render(state.app)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def status(request: web.Request) -> web.Response:
        if state.app is None:
            return web.Response(text="crmsyncd is starting", status=503)
        ready = await readiness(state)
        try:
            page = await asyncio.wait_for(render_status(state.app, ready=ready), PROBE_TIMEOUT)
        except DATABASE_ERRORS as exc:  # TimeoutError included
            return web.Response(
                text=f"crmsyncd: the status cannot be read now: {describe_database_error(exc)}", status=503
            )
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    web_app = web.Application(middlewares=[guard])
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    web_app.router.add_get("/metrics", metrics_page)
    web_app.router.add_get("/", status)
    return web_app


@contextlib.asynccontextmanager
async def serve_http(settings: Settings, state: DaemonState, metrics: Metrics) -> AsyncIterator[str]:
    """Serve until the block ends; yields the URL. A port in use (or a host that cannot be
    bound) is a ConfigError naming the variable: the daemon does not start without its probes."""
    token = settings.http_token.get_secret_value() if settings.http_token is not None else None
    runner = web.AppRunner(
        build_web_app(state, metrics, token or None),
        access_log=None,
        handle_signals=False,  # the daemon owns SIGTERM and SIGINT
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError([_bind_problem(settings, exc)]) from None
        port = runner.addresses[0][1]
        host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host  # IPv6
        url = f"http://{host}:{port}"
        log.info(
            "http_started", host=settings.http_host, port=port, url=url, auth="bearer" if token else "none"
        )
        yield url
    finally:
        await runner.cleanup()


def _bind_problem(settings: Settings, exc: OSError) -> str:
    where = f"{settings.http_host}:{settings.http_port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"CRMSYNCD_HTTP_PORT: port {settings.http_port} on {settings.http_host} is in use by another "
            "process; choose another port (0: any free one)"
        )
    return f"CRMSYNCD_HTTP_HOST: cannot listen on {where}: {exc.strerror or exc}"
