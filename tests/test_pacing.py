"""Pacing from the server's word: X-RateLimit-* set the pace, the configured value is the pace of a
silent server and a cap, a changed limit is followed, and a window's budget is used, not exceeded.

Outcomes are counted by the sandbox's own fixed-window limiter (requests per window, 429s), never
timed with sleeps. Where the exact gap between requests is the point, the pacer runs on a clock
whose sleeps advance it at once, against the real sandbox server or the sandbox's own limiter.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import pytest
from pydantic import SecretStr

from crmsyncd.app import open_app
from crmsyncd.config import load_settings
from crmsyncd.connectors import (
    EcosireConnector,
    EcosireSettings,
    RestConnector,
    RestSettings,
    make_session,
)
from crmsyncd.connectors.collection import CollectionConnector
from crmsyncd.connectors.pacing import Pacer
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox, SandboxServer
from crmsyncd.sandbox.ratelimit import FixedWindowLimiter
from tests.conftest import InstantClock

WORKERS = 8  # concurrent callers sharing one connector, as the engine's workers do


def connector(
    server: SandboxServer, session: Any, *, configured: int | None, clock: InstantClock | None = None
) -> CollectionConnector:
    common: dict[str, Any] = {
        "api_key": SecretStr(server.api_key),
        "requests_per_minute": configured,
        "rate_limit_wait_cap": 5.0,
        "rate_limit_jitter": 0.05,
    }
    if isinstance(server, EcosireSandbox):
        return EcosireConnector(
            EcosireSettings(base_url=server.url, **common), session, clock=clock, rng=random.Random(7)
        )
    return RestConnector(
        RestSettings(base_url=server.url, **common), session, clock=clock, rng=random.Random(7)
    )


def one_record(server: SandboxServer) -> str:
    body = {"name": "A"} if isinstance(server, EcosireSandbox) else {"fullName": "A"}
    return str(server.seed("contacts", [body])[0]["id"])


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    s = make_session()
    yield s
    await s.close()


# ----- through the sandbox, on the real clock: counted outcomes -------------------------------


@pytest.mark.parametrize(
    ("side", "configured"),
    [("ecosire", None), ("ecosire", 1_000_000), ("crm", None)],
    ids=["ecosire-unset", "ecosire-configured-higher", "crm-unset"],
)
async def test_concurrent_callers_use_the_servers_window_without_429s(
    session: Any, side: str, configured: int | None
) -> None:
    """40 requests per 1-second window, 40 times ECOSIRE's documented 60 a minute: eight callers
    of one connector draw no 429 and get far more than one request into each window (what the
    documented default would allow). A configured value above the server's limit changes nothing."""
    limit = 40
    server: SandboxServer = (
        EcosireSandbox(rate_limit_per_minute=limit, rate_window=1.0)
        if side == "ecosire"
        else CrmSandbox(rate_limit_per_minute=limit, rate_window=1.0)
    )
    async with server:
        record = one_record(server)
        conn = connector(server, session, configured=configured)

        async def worker() -> None:
            while len(server.window_counts()) < 4:  # three windows complete, a fourth opened
                await conn.get("contacts", record)

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    complete = server.window_counts()[:-1]
    assert server.requests["rate_limited"] == 0, complete
    assert max(complete) <= limit
    # The Reset header's whole seconds cost up to a second of each 1-second window, so a quarter
    # is a floor that holds on a busy machine; ECOSIRE's 60-second window is measured in the bench.
    assert min(complete) >= limit // 4, complete


async def test_the_pace_follows_a_limit_lowered_and_raised_between_answers(session: Any) -> None:
    """The server lowers its limit from 40 to 8 per 2-second window as a window opens, then raises
    it back: no request of the lowered window draws a 429, and the raised window gets more than the
    lowered limit would allow."""
    high, low = 40, 8
    async with EcosireSandbox(rate_limit_per_minute=high, rate_window=2.0) as eco:
        record = one_record(eco)
        conn = connector(eco, session, configured=None)
        limits = {2: low, 3: high}  # window number -> the limit from its first request on

        async def worker() -> None:
            while (opened := len(eco.window_counts())) < 4:
                if opened in limits:
                    eco.rate_limit_per_minute = limits.pop(opened)
                await conn.get("contacts", record)

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    counts = eco.window_counts()
    assert eco.requests["rate_limited"] == 0, counts
    assert counts[1] <= low, counts  # the lowered window, its opening request included
    assert counts[2] >= 2 * low, counts  # the raised one: followed upwards too


async def test_unset_ecosire_rate_limit_lets_the_server_set_the_daemons_pace(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon as configured by a user who left ECOSIRE_RATE_LIMIT unset, against an ECOSIRE
    allowing 40 requests per 1-second window: 60 contacts to create there pass without a 429, at
    the server's pace (at 60 a minute they would need a minute and one request per window)."""
    monkeypatch.delenv("ECOSIRE_RATE_LIMIT")
    settings = load_settings()
    assert settings.ecosire_rate_limit is None
    async with EcosireSandbox(rate_limit_per_minute=40, rate_window=1.0) as eco, CrmSandbox() as crm:
        crm.seed(
            "contacts", [{"fullName": f"P {i}", "emailAddress": f"p{i}@mail.example"} for i in range(60)]
        )
        settings = settings.model_copy(
            update={"ecosire_api_url": eco.url, "crm_api_url": crm.url, "entities_text": "contacts"}
        )
        async with open_app(settings) as app:
            report = await app.engine.sync_pass(app.entities)
        assert report.status == "ok"
        assert len(eco.records("contacts")) == 60
        assert eco.requests["rate_limited"] == 0
        assert max(eco.window_counts()) >= 10, eco.window_counts()


# ----- through the sandbox, on an instant clock: the gaps chosen ------------------------------


async def test_documented_default_only_until_the_server_sends_headers(session: Any) -> None:
    """ECOSIRE_RATE_LIMIT unset and a server that sends no rate-limit headers: 60 a minute, one
    request a second. Once its answers carry X-RateLimit-* (6000 a minute), the server's pace."""
    clock = InstantClock()
    async with EcosireSandbox(rate_limit_per_minute=None) as eco:
        record = one_record(eco)
        conn = connector(eco, session, configured=None, clock=clock)
        for _ in range(3):
            await conn.get("contacts", record)
        assert clock.slept == [1.0, 1.0]
        eco.rate_limit_per_minute = 6000
        for _ in range(4):
            await conn.get("contacts", record)
    # The first answer with headers came to a request still paced at the default.
    assert clock.slept[2] == 1.0
    assert all(0 < gap < 0.05 for gap in clock.slept[3:]), clock.slept  # ~60 / 6000 s


async def test_crm_without_headers_or_setting_is_unlimited(session: Any) -> None:
    clock = InstantClock()
    async with CrmSandbox() as crm:
        record = one_record(crm)
        conn = connector(crm, session, configured=None, clock=clock)
        await asyncio.gather(*(conn.get("contacts", record) for _ in range(5)))
    assert clock.slept == []


@pytest.mark.parametrize(("configured", "gap"), [(120, 0.5), (1_000_000, None)], ids=["lower", "higher"])
async def test_a_configured_limit_caps_the_servers_pace(
    session: Any, configured: int, gap: float | None
) -> None:
    """The server allows 6000 a minute (a request every 10 ms). Configured at 120 a minute, the
    connector keeps to 0.5 s between requests; configured above the server, the server's pace."""
    clock = InstantClock()
    async with EcosireSandbox(rate_limit_per_minute=6000) as eco:
        record = one_record(eco)
        conn = connector(eco, session, configured=configured, clock=clock)
        for _ in range(4):
            await conn.get("contacts", record)
    assert len(clock.slept) == 3
    if gap is not None:
        assert clock.slept == pytest.approx([gap] * 3)
    else:
        assert all(0 < g < 0.05 for g in clock.slept), clock.slept


# ----- the pacer against the sandbox's own limiter, on an instant clock ------------------------


class FixedWindowServer:
    """The sandbox's limiter and headers (as SandboxServer sends them: Date in whole seconds, Reset
    rounded up to one) on the instant clock, answering at once."""

    def __init__(self, clock: InstantClock, limit: int, window: float) -> None:
        self.clock, self.limit, self.window = clock, limit, window
        self.limiter = FixedWindowLimiter(monotonic=clock.monotonic)
        self.limited = 0
        self.sent_at: list[float] = []

    def answer(self) -> dict[str, str]:
        now = self.clock.time()
        self.sent_at.append(now)
        quota = self.limiter.hit("key", self.limit, self.window)
        self.limited += not quota.allowed
        return {
            "Date": formatdate(math.floor(now), usegmt=True),
            "X-RateLimit-Limit": str(quota.limit),
            "X-RateLimit-Remaining": str(quota.remaining),
            "X-RateLimit-Reset": str(math.ceil(now + quota.resets_in)),
        }


async def test_a_minute_window_is_spent_evenly_nearly_in_full_and_follows_a_lowered_limit() -> None:
    """ECOSIRE's documented shape: 600 requests per 60-second fixed window. The pacer gets at least
    95% of each window's budget through, never a 429, never more than a request or two above the
    even pace in any second; lowered to 100, the next window holds 100 or fewer and still 95%."""
    clock = InstantClock()
    server = FixedWindowServer(clock, limit=600, window=60.0)
    pacer = Pacer(None, clock=clock, wait_cap=65.0, jitter=0.0, rng=random.Random(1))
    while len(server.limiter.counts("key")) < 5:
        if len(server.limiter.counts("key")) == 3:
            server.limit = 100
        seq = await pacer.acquire()
        pacer.observe(seq, server.answer())
    counts = server.limiter.counts("key")
    assert server.limited == 0
    assert counts[0] >= 570 and counts[1] >= 570, counts
    assert 95 <= counts[3] <= 100, counts
    # Evenly spread: in the first window, no second holds more than the even 10 and a request.
    first_window = [t for t in server.sent_at if t < server.sent_at[0] + 60]
    assert max(sum(1 for t in first_window if s <= t < s + 1) for s in first_window) <= 11
