"""Connectors against real HTTP servers on loopback, each answering what its case needs.

Timing assertions use the arrival times the server records, never sleeps in the test."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import formatdate
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from crmsyncd.connectors import (
    Connector,
    ConnectorError,
    EcosireConnector,
    EcosireSettings,
    Outcome,
    RestConnector,
    RestSettings,
    make_session,
)
from crmsyncd.connectors.pacing import Pacer, RateLimitHeaders
from tests.conftest import InstantClock

KEY = "eco_live_Sup3rSecretKeyValue0123"


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float  # the server's wall clock on arrival


Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class FakeApi:
    handler: Handler
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    # Handlers that must hang (timeouts) wait on this; it is set before the server stops.
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                method=request.method,
                path=request.path,
                raw_path=request.raw_path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=await request.read(),
                at=time.time(),
            )
        )
        return await self.handler(request, len(self.seen) - 1)


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[FakeApi]:
    api = FakeApi(handler)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = runner.addresses
    port = sockets[0][1]
    api.url = f"http://127.0.0.1:{port}/api"
    try:
        yield api
    finally:
        api.release.set()
        await runner.cleanup()


def reply(
    status: int = 200,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def envelope(records: list[Any], page: int = 1, total_pages: int = 1) -> dict[str, Any]:
    return {
        "data": records,
        "meta": {"total": len(records), "page": page, "limit": 100, "totalPages": total_pages},
    }


def error(status: int, message: str | list[str], name: str = "Error") -> web.Response:
    return reply(status, {"statusCode": status, "message": message, "error": name})


FAST: dict[str, Any] = {
    "api_key": SecretStr(KEY),
    # Configured, so not ECOSIRE's documented 60 a minute: the fake APIs here send no rate-limit
    # headers, and a configured value is the pace of a server that sends none.
    "requests_per_minute": 1_000_000,
    "timeout": 5.0,
    "backoff_base": 0.001,
    "backoff_cap": 0.01,
    "rate_limit_jitter": 0.01,
    "rate_limit_wait_cap": 5.0,
}


def ecosire(api: FakeApi, session: aiohttp.ClientSession, **overrides: Any) -> EcosireConnector:
    settings = EcosireSettings(base_url=api.url, **{**FAST, **overrides})
    return EcosireConnector(settings, session, rng=random.Random(7))


def crm(api: FakeApi, session: aiohttp.ClientSession, **overrides: Any) -> RestConnector:
    settings = RestSettings(base_url=api.url, **{**FAST, **overrides})
    return RestConnector(settings, session, rng=random.Random(7))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = make_session()
    yield s
    await s.close()


def contact(cid: str, email: str | None) -> dict[str, Any]:
    return {"id": cid, "name": cid, "email": email, "updatedAt": "2026-03-01T14:30:00Z"}


# --- lists ---------------------------------------------------------------------------------------


async def test_ecosire_list_sends_query_and_reads_envelope(session: aiohttp.ClientSession) -> None:
    records = [contact("c1", "a@x.com"), {"name": "no id"}]

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return reply(
            body={"data": records, "meta": {"total": 342, "page": 2, "limit": 2, "totalPages": 171}},
            headers={"Date": "Wed, 01 Apr 2026 12:00:00 GMT"},
        )

    async with serve(handler) as api:
        conn = ecosire(api, session)
        after = datetime(2026, 3, 1, 16, 30, tzinfo=timezone(timedelta(hours=2)))
        page = await conn.list_page("contacts", updated_after=after, page=2, limit=2)

    (seen,) = api.seen
    assert (seen.method, seen.path) == ("GET", "/api/contacts")
    assert seen.query == {
        "page": "2",
        "limit": "2",
        "sortBy": "updatedAt",
        "sortOrder": "asc",
        "updatedAfter": "2026-03-01T14:30:00.000Z",
    }
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert page.records == records  # the record without an id stays: the engine parks it
    assert (page.page, page.total_pages, page.total) == (2, 171, 342)
    assert page.server_time == datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
    assert conn.stats.lists == 1 and conn.stats.by_status == {200: 1}


async def test_rest_list_uses_configured_names(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return reply(body=envelope([]))

    async with serve(handler) as api:
        conn = crm(
            api,
            session,
            paths={"contacts": "/v2/people"},
            updated_field="modified",
            updated_after_param="since",
            page_param="p",
            limit_param="n",
            sort_by_param="order",
            sort_order_param="dir",
        )
        page = await conn.list_page("contacts", updated_after=None, page=1, limit=50)

    assert page.records == [] and page.total_pages == 1
    assert api.seen[0].path == "/api/v2/people"
    assert api.seen[0].query == {"p": "1", "n": "50", "order": "modified", "dir": "asc"}
    assert conn.updated_field == "modified"


@pytest.mark.parametrize(
    "body",
    [
        [contact("c1", None)],
        {"data": {"id": "c1"}, "meta": {"total": 1, "page": 1, "totalPages": 1}},
        {"data": ["c1"], "meta": {"total": 1, "page": 1, "totalPages": 1}},
        {"data": [], "meta": {"total": "1", "page": 1, "totalPages": 1}},
        {"data": []},
    ],
    ids=["list", "data-object", "data-item", "meta-string", "no-meta"],
)
async def test_malformed_envelope_is_retry(session: aiohttp.ClientSession, body: Any) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return reply(body=body)

    async with serve(handler) as api:
        conn = crm(api, session, read_attempts=2)
        with pytest.raises(ConnectorError) as caught:
            await conn.list_page("contacts", updated_after=None, page=1, limit=10)

    assert caught.value.outcome is Outcome.RETRY
    assert "malformed list response" in caught.value.message
    assert len(api.seen) == 2


# --- classification ------------------------------------------------------------------------------


async def test_auth_failure_never_shows_the_key(
    session: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        # A careless server echoes the credential back; it must not travel further.
        echoed = f"bad token {request.headers['Authorization']}"
        return error(503, echoed) if n == 0 else error(401, echoed, "Unauthorized")

    async with serve(handler) as api:
        conn = ecosire(api, session)
        with pytest.raises(ConnectorError) as caught:
            await conn.get("contacts", "c1")

    exc = caught.value
    assert exc.outcome is Outcome.AUTH_FAILED and exc.status == 401
    assert "bad token" in exc.message and "check ECOSIRE_API_KEY" in exc.message
    out = capsys.readouterr()
    for text in (str(exc), repr(exc), exc.message, repr(conn), repr(conn.settings), out.out, out.err):
        assert KEY not in text
    assert str(conn.settings).count("**********") == 1


async def test_a_403_names_the_keys_permissions(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error(403, "Forbidden", "Forbidden")

    async with serve(handler) as api:
        with pytest.raises(ConnectorError) as caught:
            await crm(api, session).update("contacts", "c1", {"fullName": "x"})
    assert caught.value.outcome is Outcome.AUTH_FAILED
    assert "refused the request" in str(caught.value) and "permissions of CRM_API_KEY" in str(caught.value)


@pytest.mark.parametrize(
    ("op", "status", "message", "outcome", "expected"),
    [
        ("get", 404, "Contact not found", Outcome.NOT_FOUND, "Contact not found"),
        ("get", 403, "Forbidden resource", Outcome.AUTH_FAILED, "Forbidden resource"),
        ("create", 409, "email already registered", Outcome.CONFLICT, "email already registered"),
        (
            "create",
            422,
            ["name must be a string", "email must be an email"],
            Outcome.PERMANENT,
            "name must be a string; email must be an email",
        ),
        ("create", 400, "x" * 5000, Outcome.PERMANENT, "x" * 299 + "…"),
    ],
)
async def test_error_classes(
    session: aiohttp.ClientSession,
    op: str,
    status: int,
    message: str | list[str],
    outcome: Outcome,
    expected: str,
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error(status, message)

    async with serve(handler) as api:
        conn = ecosire(api, session)
        with pytest.raises(ConnectorError) as caught:
            if op == "get":
                await conn.get("contacts", "c1")
            else:
                await conn.create("contacts", {"name": "A", "email": "a@x.com"})

    assert caught.value.outcome is outcome
    assert caught.value.status == status
    assert caught.value.message.split("; the ecosire API")[0] == expected
    assert len(api.seen) == 1  # none of these is worth a second try


# --- transient failures --------------------------------------------------------------------------


async def test_503_on_get_is_retried(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error(503, "maintenance") if n == 0 else reply(body=contact("c1", "a@x.com"))

    async with serve(handler) as api:
        conn = ecosire(api, session)
        record = await conn.get("contacts", "c1")

    assert record["id"] == "c1"
    assert len(api.seen) == 2
    assert conn.stats.reads == 2 and conn.stats.retried == 1
    assert conn.stats.by_status == {503: 1, 200: 1}


async def test_503_on_post_is_not_retried(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return error(503, "maintenance")

    async with serve(handler) as api:
        conn = ecosire(api, session)
        with pytest.raises(ConnectorError) as caught:
            await conn.create("contacts", {"name": "A"})

    assert caught.value.outcome is Outcome.RETRY
    assert caught.value.committed_maybe is True
    assert [s.method for s in api.seen] == ["POST"]


async def test_created_record_without_id_may_have_committed(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return reply(201, {"name": "A"})

    async with serve(handler) as api:
        conn = ecosire(api, session)
        with pytest.raises(ConnectorError) as caught:
            await conn.create("contacts", {"name": "A"})

    assert caught.value.outcome is Outcome.RETRY and caught.value.committed_maybe
    assert len(api.seen) == 1


async def test_connect_failure_on_post_did_not_commit(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = EcosireSettings(base_url=f"http://127.0.0.1:{port}/api", **FAST)
    conn = EcosireConnector(settings, session)
    with pytest.raises(ConnectorError) as caught:
        await conn.create("contacts", {"name": "A"})
    assert caught.value.outcome is Outcome.RETRY
    assert caught.value.committed_maybe is False


async def test_unserialisable_body_is_permanent(session: aiohttp.ClientSession) -> None:
    settings = EcosireSettings(base_url="http://127.0.0.1:9/api", **FAST)
    conn = EcosireConnector(settings, session)
    with pytest.raises(ConnectorError) as caught:
        await conn.create("contacts", {"name": object()})
    assert caught.value.outcome is Outcome.PERMANENT
    assert conn.stats.total == 0  # nothing was sent


async def test_connectors_satisfy_the_protocol(session: aiohttp.ClientSession) -> None:
    url, key = "http://127.0.0.1:9/api", SecretStr(KEY)
    # Typed as the Protocol: mypy checks that both classes conform.
    connectors: list[Connector] = [
        EcosireConnector(EcosireSettings(url, key), session),
        RestConnector(RestSettings(url, key), session),
    ]
    assert [(c.side.value, c.id_field, c.updated_field) for c in connectors] == [
        ("ecosire", "id", "updatedAt"),
        ("crm", "id", "updatedAt"),
    ]
    for c in connectors:
        await c.close()


async def test_connection_reset_on_get_is_retried(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        # aiohttp itself resends an idempotent request once after a dropped connection (RFC 9112
        # 9.3.1), so two drops are needed before our own retry is exercised.
        if n < 2:
            assert request.transport is not None
            request.transport.abort()  # the connection dies without an answer
            return web.Response()
        return reply(body=contact("c1", "a@x.com"))

    async with serve(handler) as api:
        conn = ecosire(api, session)
        record = await conn.get("contacts", "c1")

    assert record["id"] == "c1"
    assert len(api.seen) == 3
    assert conn.stats.reads == 2 and conn.stats.retried == 1


async def test_timeout_on_get_is_retried(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 0:
            await api.release.wait()  # never answers within the client's timeout
        return reply(body=envelope([contact("c1", "a@x.com")]))

    async with serve(handler) as api:
        conn = ecosire(api, session, timeout=0.3)
        page = await conn.list_page("contacts", updated_after=None, page=1, limit=10)

    assert [r["id"] for r in page.records] == ["c1"]
    assert len(api.seen) == 2


@pytest.mark.parametrize(
    ("content_type", "raw", "fragment"),
    [
        ("text/html", b"<html>maintenance</html>", "content type 'text/html'"),
        ("application/json", b'{"data": [', "invalid JSON"),
        ("application/json", b'{"id": "\xff"}', "invalid JSON"),
    ],
    ids=["html", "truncated", "not-utf8"],
)
async def test_garbled_2xx_is_retry(
    session: aiohttp.ClientSession, content_type: str, raw: bytes, fragment: str
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=200, body=raw, headers={"Content-Type": content_type})

    async with serve(handler) as api:
        conn = ecosire(api, session, read_attempts=3)
        with pytest.raises(ConnectorError) as caught:
            await conn.get("contacts", "c1")

    assert caught.value.outcome is Outcome.RETRY
    assert fragment in caught.value.message
    assert "gave up after 3 attempts" in caught.value.message
    assert len(api.seen) == 3 and conn.stats.retried == 2


# --- rate limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [3600.0, -3600.0], ids=["server-ahead", "server-behind"])
async def test_429_waits_for_reset_on_the_servers_clock(session: aiohttp.ClientSession, skew: float) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        server_now = int(time.time() + skew)
        headers = {"Date": formatdate(server_now, usegmt=True)}
        if n > 0:
            return reply(body=contact("c1", "a@x.com"), headers=headers)
        response = error(429, "ThrottlerException: Too Many Requests")
        response.headers.update(headers)
        response.headers.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(server_now + 1)})
        return response

    async with serve(handler) as api:
        conn = ecosire(api, session)
        await conn.get("contacts", "c1")

    gap = api.seen[1].at - api.seen[0].at
    # One second by the server's clock; read against our clock it would be an hour or nothing.
    assert 0.9 <= gap < 2.0
    assert conn.stats.rate_limited == 1 and conn.stats.reads == 2


async def test_429_honours_retry_after_on_a_write(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 0:
            response = error(429, "Too Many Requests")
            response.headers["Retry-After"] = "1"
            return response
        return reply(201, {"id": "new-1", "fullName": "A"})

    async with serve(handler) as api:
        conn = crm(api, session)
        created = await conn.create("contacts", {"fullName": "A"})

    assert created["id"] == "new-1"
    # 429 means "not processed": the one write that is safe to repeat.
    assert [s.method for s in api.seen] == ["POST", "POST"]
    assert 0.9 <= api.seen[1].at - api.seen[0].at < 2.0
    assert conn.stats.creates == 2 and conn.stats.rate_limited == 1


async def test_429_gives_up_after_bounded_tries(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = error(429, "Too Many Requests")
        response.headers["Retry-After"] = "0"
        return response

    async with serve(handler) as api:
        conn = crm(api, session, rate_limit_tries=3)
        with pytest.raises(ConnectorError) as caught:
            await conn.update("contacts", "c1", {"fullName": "B"})

    assert caught.value.outcome is Outcome.RATE_LIMITED
    assert len(api.seen) == 3


async def test_spent_budget_holds_every_caller_until_reset(session: aiohttp.ClientSession) -> None:
    resets: list[int] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        now = time.time()
        if n == 0:
            resets.append(int(now) + 1)
            limit, remaining, reset = 60, 0, resets[0]
        else:  # the next window allows plenty, so its budget spreads the callers by milliseconds
            limit, remaining, reset = 6000, 6000 - n, int(now) + 60
        return reply(
            body=contact("c1", "a@x.com"),
            headers={
                "Date": formatdate(int(now), usegmt=True),
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(reset),
            },
        )

    async with serve(handler) as api:
        conn = ecosire(api, session)
        await conn.get("contacts", "c1")
        await asyncio.gather(*(conn.get("contacts", "c1") for _ in range(3)))

    assert len(api.seen) == 4
    for later in api.seen[1:]:
        # The Date header's whole seconds place the reset up to a second later than it is; the
        # callers then go one after another, evenly spaced, not in a burst.
        assert resets[0] - 0.01 <= later.at < resets[0] + 1.5
    assert conn.stats.rate_limited == 0


async def test_local_limiter_spaces_requests(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return reply(body=contact("c1", "a@x.com"))

    async with serve(handler) as api:
        conn = ecosire(api, session, requests_per_minute=1200)  # one per 50 ms
        await asyncio.gather(*(conn.get("contacts", "c1") for _ in range(5)))

    arrivals = sorted(s.at for s in api.seen)
    assert arrivals[-1] - arrivals[0] >= 0.15


def test_reset_forms() -> None:
    date = "Wed, 01 Apr 2026 12:00:00 GMT"
    epoch = int(datetime(2026, 4, 1, 12, tzinfo=UTC).timestamp())
    absolute = RateLimitHeaders({"Date": date, "X-RateLimit-Reset": str(epoch + 30)}, local_now=0.0)
    assert absolute.reset_in == 30.0
    delta = RateLimitHeaders({"X-RateLimit-Reset": "12", "X-RateLimit-Remaining": "3"}, 5.0)
    assert (delta.reset_in, delta.remaining) == (12.0, 3)
    http_date = RateLimitHeaders(
        {"Date": date, "Retry-After": "Wed, 01 Apr 2026 12:00:07 GMT"}, local_now=0.0
    )
    assert http_date.retry_after == 7.0


async def test_pacer_counts_requests_still_in_flight() -> None:
    clock = InstantClock(1_800_000_000.0)
    pacer = Pacer(None, clock=clock, wait_cap=65.0, jitter=0.0, rng=random.Random(1))
    first = await pacer.acquire()
    await pacer.acquire()  # in flight while the first answer arrives
    pacer.observe(first, {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": str(clock.now + 10)})
    # The server's "1 left" was spent by the request already on its way: the next one waits.
    await pacer.acquire()
    assert clock.slept == [10.0]
    # A new window: the budget is unknown until the next answer, and nobody waits.
    await pacer.acquire()
    assert clock.slept == [10.0]


async def test_pacer_caps_a_servers_long_wait() -> None:
    clock = InstantClock(1_800_000_000.0)
    pacer = Pacer(None, clock=clock, wait_cap=5.0, jitter=0.0, rng=random.Random(1))
    wait = pacer.on_rate_limited({"Retry-After": "3600"}, fallback=1.0)
    assert wait == 5.0
    await pacer.acquire()
    assert clock.slept == [5.0]


# --- lookups and writes --------------------------------------------------------------------------


async def test_ecosire_find_keeps_exact_matches_only(session: aiohttp.ClientSession) -> None:
    pages = {
        "1": [
            contact("c1", "ann@x.com"),
            contact("c2", "joann@x.com"),
            contact("c3", " Ann@X.COM "),
            contact("c4", None),
        ],
        "2": [contact("c3", "ann@x.com"), contact("c5", "ann@x.co"), contact("c6", "ANN@x.com")],
    }

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        page = request.query["page"]
        return reply(body=envelope(pages[page], page=int(page), total_pages=2))

    async with serve(handler) as api:
        conn = ecosire(api, session)
        found = await conn.find_by_field("contacts", "email", "  ANN@x.com ")

    assert sorted(r["id"] for r in found) == ["c1", "c3", "c6"]
    assert api.seen[0].query["search"] == "ANN@x.com"
    assert api.seen[0].query["limit"] == "100"
    assert conn.stats.lookups == 2


async def test_rest_find_filters_and_crud(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.method == "GET" and "emailAddress" in request.query:
            loose = [{"id": "k1", "emailAddress": "b@x.com"}, {"id": "k2", "emailAddress": "B@x.com"}]
            return reply(body=envelope(loose))
        if request.method == "POST":
            return reply(201, {"id": "k3", **orjson.loads(await request.read())})
        if request.method == "PATCH":
            return reply(body={"id": "k3", "fullName": "B"})
        if request.method == "DELETE":
            return web.Response(status=204)
        return reply(body={"id": "k3"})

    async with serve(handler) as api:
        conn = crm(api, session)
        found = await conn.find_by_field("contacts", "emailAddress", "b@X.com")
        created = await conn.create("deals", {"title": "Big", "amount": 1200})
        updated = await conn.update("deals", "k3", {"fullName": "B"})
        await conn.delete("deals", "k3")
        fetched = await conn.get("deals", "../k3")

    assert [r["id"] for r in found] == ["k1", "k2"]
    assert api.seen[0].query == {"emailAddress": "b@X.com", "page": "1", "limit": "100"}
    assert created == {"id": "k3", "title": "Big", "amount": 1200}
    assert api.seen[1].headers["Content-Type"] == "application/json"
    assert orjson.loads(api.seen[1].body) == {"title": "Big", "amount": 1200}
    assert updated["fullName"] == "B"
    assert [(s.method, s.raw_path) for s in api.seen[2:]] == [
        ("PATCH", "/api/deals/k3"),
        ("DELETE", "/api/deals/k3"),
        ("GET", "/api/deals/..%2Fk3"),  # an id stays one path segment
    ]
    assert fetched == {"id": "k3"}
    stats = conn.stats
    assert (stats.lookups, stats.creates, stats.updates, stats.deletes, stats.reads) == (1, 1, 1, 1, 1)
    assert stats.total == 5
