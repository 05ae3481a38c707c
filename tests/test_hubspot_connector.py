"""The HubSpot connector against the HubSpot sandbox (a real server; no mocks): the change feed
past the 10,000-result cap, equal stamps, the index lag and archived records; batch writes with
their per-input results; deals and their contact; OAuth renewal; HubSpot's limits; identity; the
settings; `crmsyncd hubspot setup`.

Time is stepped, never slept: the sandbox's clocks (`clock`, `limiter.monotonic`) and the
connector's (an InstantClock) are moved by the tests.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from pydantic import SecretStr

from crmsyncd.config import ConfigError
from crmsyncd.connectors.base import ConnectorError, Outcome, SystemIdentity
from crmsyncd.connectors.http import make_session
from crmsyncd.connectors.hubspot import HubSpotConnector, HubSpotSettings, load_hubspot_settings
from crmsyncd.connectors.port import FeedPage, PagingLoop
from crmsyncd.domain.records import format_timestamp
from crmsyncd.sandbox.hubspot import HubSpotSandbox, Limits
from crmsyncd.sandbox.hubspot.batch import BatchPolicy
from crmsyncd.sandbox.hubspot.oauth import OAuthApp
from tests.conftest import InstantClock, SteppedClock, run_cli

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    s = make_session(5.0)
    yield s
    await s.close()


def connector(
    hub: HubSpotSandbox, session: Any, *, clock: InstantClock | None = None, **settings: Any
) -> HubSpotConnector:
    values: dict[str, Any] = {
        "api_url": hub.url,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "rate_limit_jitter": 0.0,
        "timeout": 5.0,
    }
    if "client_id" not in settings:
        values["access_token"] = SecretStr(hub.api_key)
    values.update(settings)
    return HubSpotConnector(HubSpotSettings(**values), session, clock=clock, rng=random.Random(3))


async def read_all(conn: HubSpotConnector, resource: str, since: datetime | None) -> list[FeedPage]:
    return [page async for page in conn.changes(resource, since=since)]


def stamped(count: int, per_stamp: int, start: datetime = START) -> list[dict[str, Any]]:
    """`count` contacts, `per_stamp` of them sharing each stamp (a millisecond apart)."""
    return [
        {
            "properties": {"email": f"c{i:05d}@example.com", "firstname": f"C{i}"},
            "createdAt": format_timestamp(start),
            "updatedAt": format_timestamp(start + timedelta(milliseconds=i // per_stamp)),
        }
        for i in range(count)
    ]


# ----- the change feed ------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_feed_reads_every_record_across_the_10000_cap_with_equal_stamps_at_the_reanchor(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    """10,450 contacts, three to a stamp: the 10,000th result is the first of a group of three, so
    the re-anchor before the cap falls inside equal stamps. Every contact is read exactly once,
    no search is refused for passing the cap, checkpoints never go back, the last page is
    complete and holds the greatest (stamp, id)."""
    seeded = hubspot.seed("contacts", stamped(10_450, per_stamp=3))
    conn = connector(hubspot, session)
    pages = await read_all(conn, "contacts", None)
    ids = [record_id for page in pages for record_id, _, _ in page.records]
    assert len(ids) == len(set(ids)) == 10_450
    assert set(ids) == {r["id"] for r in seeded}
    assert conn.stats.by_status.get(400, 0) == 0
    assert pages[0].total == 10_450
    assert pages[-1].complete and not any(p.complete for p in pages[:-1])
    checkpoints = [p.checkpoint for p in pages if p.checkpoint is not None]
    assert all(a.stamp <= b.stamp for a, b in pairwise(checkpoints))
    last = max((stamp, rid) for page in pages for rid, stamp, _ in page.records)
    assert pages[-1].checkpoint is not None
    assert (pages[-1].checkpoint.stamp, pages[-1].checkpoint.record_id) == last
    # Each page's checkpoint is safe: every record at or before it was yielded by then.
    read_so_far: set[str] = set()
    by_id = {r["id"]: r for r in seeded}
    for page in pages:
        read_so_far |= {rid for rid, _, _ in page.records}
        if page.checkpoint is not None:
            before = {
                rid for rid, r in by_id.items() if r["updatedAt"] <= format_timestamp(page.checkpoint.stamp)
            }
            assert before <= read_so_far
    record = pages[0].records[0][2]
    assert {"id", "email", "firstname", "updatedAt", "createdAt"} <= set(record)


@pytest.mark.slow
async def test_more_than_10000_records_with_one_stamp_stop_the_read_rather_than_lose_some(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    hubspot.seed("contacts", stamped(10_050, per_stamp=20_000))
    conn = connector(hubspot, session)
    read: list[str] = []
    with pytest.raises(PagingLoop) as caught:
        async for page in conn.changes("contacts", since=None):
            read += [rid for rid, _, _ in page.records]
    assert "more than 10000 records share the lastmodifieddate" in str(caught.value)
    assert len(read) == len(set(read)) == 10_000


async def test_a_record_the_index_shows_late_is_read_when_since_is_moved_back_by_the_overlap(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    """B is written before C but reaches the search index after it (HubSpot's lag varies): a read
    then sees C and not B. From C's stamp B is lost; from C's stamp less the overlap it is read."""
    clock = SteppedClock(START)
    hubspot.clock = clock
    conn = connector(hubspot, session)
    hubspot.search_lag = 10.0
    [b] = await conn.create_many("contacts", [{"email": "b@example.com", "firstname": "B"}])
    clock.advance(1)
    hubspot.search_lag = 0.0
    [c] = await conn.create_many("contacts", [{"email": "c@example.com", "firstname": "C"}])
    assert b.record is not None and c.record is not None
    pages = await read_all(conn, "contacts", START)
    assert [rid for p in pages for rid, _, _ in p.records] == [c.record["id"]]
    checkpoint = pages[-1].checkpoint
    assert checkpoint is not None
    clock.advance(15)  # B is searchable now
    after = await read_all(conn, "contacts", checkpoint.stamp + timedelta(milliseconds=1))
    assert b.record["id"] not in [rid for p in after for rid, _, _ in p.records]
    overlap = await read_all(conn, "contacts", checkpoint.stamp - timedelta(seconds=2))
    assert b.record["id"] in [rid for p in overlap for rid, _, _ in p.records]


async def test_archived_records_are_reported_deleted_once_after_the_search(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    clock = SteppedClock(START)
    hubspot.clock = clock
    old, gone, kept = hubspot.seed(
        "contacts",
        [{"properties": {"email": f"{n}@example.com"}} for n in ("old", "gone", "kept")],
    )
    hubspot.archive("contacts", old["id"])
    clock.advance(60)
    since = clock.now
    clock.advance(5)
    hubspot.archive("contacts", gone["id"])
    conn = connector(hubspot, session)
    pages = await read_all(conn, "contacts", since)
    assert [d for p in pages for d in p.deleted] == [gone["id"]]
    assert pages[-1].deleted == [gone["id"]] and pages[-1].complete
    assert hubspot.requests["GET /crm/v3/objects/contacts"] == 1
    first = await read_all(conn, "contacts", None)
    assert sorted(d for p in first for d in p.deleted) == sorted([old["id"], gone["id"]])
    assert kept["id"] in [rid for p in first for rid, _, _ in p.records]


# ----- batch writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("multi_status", ["trace_ids", "never"], ids=["per-input", "all-or-nothing"])
async def test_a_batch_create_with_one_bad_input_creates_the_others_and_names_the_property(
    hubspot: HubSpotSandbox, session: Any, multi_status: str
) -> None:
    """Per-input (HubSpot's multi-status, switched on by trace ids) or refused whole (the batch is
    split until the bad input is alone): the four good contacts are created, each result is its
    own input's, and the bad one's error names the property and HubSpot's code."""
    hubspot.batch = BatchPolicy(multi_status=multi_status)
    conn = connector(hubspot, session)
    bodies: list[dict[str, Any]] = [{"email": f"p{i}@example.com", "firstname": f"P{i}"} for i in range(5)]
    bodies[2]["favourite_colour"] = "teal"
    results = await conn.create_many("contacts", bodies)
    assert [r.error is None for r in results] == [True, True, False, True, True]
    for body, result in zip(bodies, results, strict=True):
        if result.record is not None:
            assert result.record["email"] == body["email"]
            assert hubspot.get_record("contacts", result.record["id"]) is not None
    error = results[2].error
    assert error is not None and error.outcome is Outcome.PERMANENT
    assert "favourite_colour" in error.message and "PROPERTY_DOESNT_EXIST" in error.message
    assert sorted(r["properties"]["email"] for r in hubspot.records("contacts")) == [
        f"p{i}@example.com" for i in (0, 1, 3, 4)
    ]


async def test_207_results_go_to_their_own_inputs_whatever_the_answers_order(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    """The sandbox answers results sorted by id; inputs here are in descending id order, one of
    them missing and one with a stage no pipeline has."""
    deals = hubspot.seed("deals", [{"properties": {"dealname": f"D{i}"}} for i in range(4)])
    conn = connector(hubspot, session)
    changes = [
        (deals[3]["id"], {"dealname": "three"}),
        ("999999", {"dealname": "nobody"}),
        (deals[1]["id"], {"dealstage": "no-such-stage"}),
        (deals[0]["id"], {"dealname": "zero"}),
    ]
    results = await conn.update_many("deals", changes)
    assert results[0].record is not None and results[0].record["id"] == deals[3]["id"]
    assert results[0].record["dealname"] == "three"
    assert results[1].error is not None and results[1].error.outcome is Outcome.NOT_FOUND
    assert results[2].error is not None and results[2].error.outcome is Outcome.PERMANENT
    assert "dealstage" in results[2].error.message and "INVALID_OPTION" in results[2].error.message
    assert results[3].record is not None and results[3].record["dealname"] == "zero"
    stored = {r["id"]: r["properties"]["dealname"] for r in hubspot.records("deals")}
    assert stored[deals[3]["id"]] == "three" and stored[deals[0]["id"]] == "zero"


async def test_upsert_by_email_updates_the_contact_holding_it_and_creates_the_rest(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    [existing] = hubspot.seed("contacts", [{"properties": {"email": "ann@example.com", "firstname": "Ann"}}])
    conn = connector(hubspot, session)
    results = await conn.upsert_many(
        "contacts",
        "email",
        [
            {"email": "new@example.com", "firstname": "New"},
            {"email": " ANN@example.com ", "firstname": "Anne"},
            {"firstname": "No email"},
        ],
    )
    assert results[0].record is not None and results[0].record["id"] != existing["id"]
    assert results[1].record is not None and results[1].record["id"] == existing["id"]
    assert results[2].error is not None and "'email'" in results[2].error.message
    assert hubspot.get_record("contacts", existing["id"])["properties"]["firstname"] == "Anne"  # type: ignore[index]
    assert len(hubspot.records("contacts")) == 2


async def test_a_lost_answer_of_a_batch_create_raises_committed_maybe_and_the_records_exist(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    hubspot.faults.add("POST /crm/v3/objects/contacts/batch/create", status=502, after_commit=True)
    conn = connector(hubspot, session)
    with pytest.raises(ConnectorError) as caught:
        await conn.create_many("contacts", [{"email": "lost@example.com", "firstname": "Lost"}])
    assert caught.value.committed_maybe and caught.value.outcome is Outcome.RETRY
    found = await conn.find_by_field("contacts", "email", " Lost@Example.com")
    assert [r["email"] for r in found] == ["lost@example.com"]


async def test_deals_are_created_with_their_contact_and_moved_to_another(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    first, second = hubspot.seed("contacts", [{"properties": {"email": f"{n}@example.com"}} for n in "ab"])
    conn = connector(hubspot, session)
    [made] = await conn.create_many(
        "deals", [{"dealname": "Big", "amount": "12.50", "contactId": first["id"]}]
    )
    assert made.record is not None
    deal_id = made.record["id"]
    assert hubspot.portal.associated("deals", deal_id, "contacts") == [first["id"]]
    assert (await conn.get_many("deals", [deal_id]))[deal_id]["contactId"] == first["id"]
    [moved] = await conn.update_many("deals", [(deal_id, {"contactId": second["id"]})])
    assert moved.record is not None and moved.record["contactId"] == second["id"]
    assert hubspot.portal.associated("deals", deal_id, "contacts") == [second["id"]]
    pages = await read_all(conn, "deals", None)
    assert [body["contactId"] for p in pages for _, _, body in p.records] == [second["id"]]


async def test_lookups_read_by_ids_in_batches_and_find_by_field(
    hubspot: HubSpotSandbox, session: Any
) -> None:
    seeded = hubspot.seed(
        "contacts", [{"properties": {"email": f"l{i}@example.com", "firstname": "Same"}} for i in range(150)]
    )
    hubspot.archive("contacts", seeded[0]["id"])
    conn = connector(hubspot, session)
    wanted = [r["id"] for r in seeded] + ["424242"]
    found = await conn.get_many("contacts", wanted)
    assert set(found) == {r["id"] for r in seeded[1:]}
    assert hubspot.requests["POST /crm/v3/objects/contacts/batch/read"] == 2
    by_name = await conn.find_by_field("deals", "dealname", "x")
    assert by_name == []
    named = await conn.find_by_field("contacts", "firstname", " same ")
    assert len(named) == 149


# ----- OAuth ------------------------------------------------------------------------------------


async def test_oauth_tokens_are_renewed_ahead_of_expiry_and_once_when_refused_as_expired(
    session: Any,
) -> None:
    app = OAuthApp(expires_in=100)
    clock = SteppedClock(START)
    local = InstantClock()
    unlimited = Limits(ten_second=None, oauth_ten_second=None, daily=None, search_per_second=None)
    async with HubSpotSandbox(search_lag=0.0, limits=unlimited, oauth=app) as hub:
        hub.clock = clock
        [contact] = hub.seed("contacts", [{"properties": {"email": "o@example.com"}}])
        conn = connector(
            hub,
            session,
            clock=local,
            client_id=SecretStr(app.client_id),
            client_secret=SecretStr(app.client_secret),
            refresh_token=SecretStr(app.refresh_tokens[0]),
        )
        ids = [contact["id"]]
        assert await conn.get_many("contacts", ids)
        assert app.refreshes == 1
        # 95 s into a 100 s token: within the margin (10% of its life), renewed before use.
        clock.advance(95)
        local.now += 95
        assert await conn.get_many("contacts", ids)
        assert app.refreshes == 2 and conn.stats.by_status.get(401, 0) == 0
        # Refused as expired all the same (revoked early, clocks apart): renewed once, repeated.
        app.rotate_refresh_tokens = True
        app.expire_all(clock.now)
        assert await conn.get_many("contacts", ids)
        assert app.refreshes == 3 and conn.stats.by_status[401] == 1
        # The refresh token handed back in place of the old one is the one used next.
        app.expire_all(clock.now)
        assert await conn.get_many("contacts", ids)
        assert app.refreshes == 4
        # A refresh the token endpoint refuses: AUTH_FAILED naming the variables, no secret.
        held = [app.client_secret, *app.refresh_tokens, *list(app._access)]
        app.refresh_tokens.clear()
        app.expire_all(clock.now)
        with pytest.raises(ConnectorError) as caught:
            await conn.get_many("contacts", ids)
    message = str(caught.value)
    assert caught.value.outcome is Outcome.AUTH_FAILED
    assert "HUBSPOT_CLIENT_ID, HUBSPOT_CLIENT_SECRET and HUBSPOT_REFRESH_TOKEN" in message
    assert not any(secret in message for secret in held)
    assert not any(secret in repr(conn) + repr(conn.client.auth) for secret in held)


# ----- limits -----------------------------------------------------------------------------------


async def test_the_ten_second_window_is_followed_from_the_headers_without_a_429(session: Any) -> None:
    """20 requests per rolling 10 s, 4 workers sharing the connector, 70 requests (three and a
    half windows' allowance): no 429, and most of the allowance used (70 at the limit take 30 s
    at least; the first answers come after a burst of four, whose gap recurs every window)."""
    clock = InstantClock()
    limits = Limits(ten_second=20, oauth_ten_second=None, daily=None, search_per_second=None)
    async with HubSpotSandbox(search_lag=0.0, limits=limits) as hub:
        hub.limiter.monotonic = clock.monotonic
        [contact] = hub.seed("contacts", [{"properties": {"email": "r@example.com"}}])
        conn = connector(hub, session, clock=clock)
        started = clock.now
        left = [70]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                await conn.get_many("contacts", [contact["id"]])

        await asyncio.gather(*(worker() for _ in range(4)))
        refused = dict(hub.limiter.refused)
    elapsed = clock.now - started
    assert refused == {} and conn.stats.rate_limited == 0
    assert 30 <= elapsed <= 52, elapsed


async def test_the_daily_limit_stops_with_quota_exhausted_and_says_when_it_resumes(session: Any) -> None:
    limits = Limits(ten_second=None, oauth_ten_second=None, daily=3, search_per_second=None)
    async with HubSpotSandbox(search_lag=0.0, limits=limits) as hub:
        [contact] = hub.seed("contacts", [{"properties": {"email": "d@example.com"}}])
        conn = connector(hub, session)
        for _ in range(3):
            await conn.get_many("contacts", [contact["id"]])
        with pytest.raises(ConnectorError) as caught:
            await conn.get_many("contacts", [contact["id"]])
        assert hub.limiter.refused == {"DAILY": 1}  # not retried: waiting would take hours
    assert caught.value.outcome is Outcome.QUOTA_EXHAUSTED
    assert "daily API limit of 3 requests is spent" in caught.value.message
    assert "midnight in the portal's time zone" in caught.value.message


async def test_searches_keep_to_their_own_limit(session: Any) -> None:
    clock = InstantClock()
    limits = Limits(ten_second=None, oauth_ten_second=None, daily=None, search_per_second=5)
    async with HubSpotSandbox(search_lag=0.0, limits=limits) as hub:
        hub.limiter.monotonic = clock.monotonic
        hub.seed("contacts", stamped(30, per_stamp=1))
        conn = connector(hub, session, clock=clock, page_size=2)
        pages = await read_all(conn, "contacts", None)
        refused = dict(hub.limiter.refused)
    assert sum(len(p.records) for p in pages) == 30
    assert refused == {}


# ----- identity, settings, setup ------------------------------------------------------------------


async def test_identify_names_the_portal(hubspot: HubSpotSandbox, session: Any) -> None:
    conn = connector(hubspot, session)
    assert await conn.identify() == SystemIdentity("hubspot", hubspot.url.rstrip("/"), "4455667")


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({}, "HUBSPOT_ACCESS_TOKEN: required"),
        (
            {"HUBSPOT_ACCESS_TOKEN": "pat-x-1", "HUBSPOT_CLIENT_ID": "id-1"},
            "HUBSPOT_ACCESS_TOKEN, HUBSPOT_CLIENT_ID: set either",
        ),
        (
            {"HUBSPOT_CLIENT_ID": "id-1", "HUBSPOT_CLIENT_SECRET": "shh-secret-1"},
            "HUBSPOT_REFRESH_TOKEN: missing; OAuth needs all three",
        ),
        ({"HUBSPOT_ACCESS_TOKEN": "pat-x-1", "HUBSPOT_PAGE_SIZE": "500"}, "HUBSPOT_PAGE_SIZE"),
        ({"HUBSPOT_ACCESS_TOKEN": "pat-x-1", "HUBSPOT_API_URL": "api.hubapi.com"}, "HUBSPOT_API_URL"),
    ],
    ids=["neither", "both", "oauth-partial", "page-size", "url"],
)
def test_settings_errors_name_the_variables_and_no_secret(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, str], named: str
) -> None:
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_hubspot_settings()
    assert named in str(caught.value)
    assert "pat-x-1" not in str(caught.value) and "shh-secret-1" not in str(caught.value)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_ACCESS_TOKEN", "pat-na1-abc")
    settings = load_hubspot_settings()
    assert settings.api_url == "https://api.hubapi.com" and not settings.oauth
    assert (settings.page_size, settings.batch_size) == (200, 100)
    assert "pat-na1-abc" not in repr(settings)


async def test_hubspot_setup_creates_the_properties_once_and_says_so(hubspot: HubSpotSandbox) -> None:
    env = {
        "HUBSPOT_API_URL": hubspot.url,
        "HUBSPOT_ACCESS_TOKEN": hubspot.api_key,
        "CRMSYNCD_LOG_FORMAT": "json",
    }
    first = await run_cli("hubspot", "setup", "--tags", "vip,partner", env=env)
    assert first.code == 0, first.stderr
    assert "contacts property ecosire_type: created" in first.stdout
    assert (
        "contacts property ecosire_tags: created (enumeration, checkbox with options vip, partner)"
        in first.stdout
    )
    tags = hubspot.portal.definitions["contacts"]["ecosire_tags"]
    assert [o.value for o in tags.options] == ["vip", "partner"]
    again = await run_cli("hubspot", "setup", "--tags", "vip,partner,press", env=env)
    assert again.code == 0, again.stderr
    assert "created" not in again.stdout
    assert "contacts property ecosire_type: exists already, left as it is" in again.stdout
    assert "ecosire_tags: exists already, left as it is; it lacks the options press" in again.stdout
    assert hubspot.requests["POST /crm/v3/properties/contacts"] == 4


async def test_hubspot_setup_without_credentials_exits_2_naming_the_variable(hubspot: HubSpotSandbox) -> None:
    result = await run_cli("hubspot", "setup", env={"HUBSPOT_API_URL": hubspot.url})
    assert result.code == 2
    assert "HUBSPOT_ACCESS_TOKEN: required" in result.stderr
