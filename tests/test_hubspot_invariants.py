"""The hardening invariants with CRMSYNCD_CRM=hubspot: the scenarios of tests/test_lost_answers.py,
tests/test_crash.py, tests/test_bad_input.py and tests/test_sync.py run against the HubSpot sandbox
(batch writes of 100, a search feed whose index lags writes, per-input refusals in 207s).

In-process tests drive the engine through `App` built from the environment a user sets for
HubSpot (tests/test_hubspot_sync.py's `hub_env`); the storm runs `crmsyncd run` as a subprocess,
killed with SIGKILL at seeded random instants, as tests/test_crash.py does for the REST CRM."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crmsyncd.app import App, open_app
from crmsyncd.config import load_settings
from crmsyncd.domain.canonical import normalise_key
from crmsyncd.sandbox import EcosireSandbox
from crmsyncd.sandbox.hubspot import HubSpotSandbox
from crmsyncd.sandbox.store import utc_now
from crmsyncd.store.db import create_pool
from tests.conftest import TickingClock, run_cli
from tests.crash_daemon import Daemon, WriteSpy
from tests.test_crash import converge, run_env
from tests.test_hubspot_sync import TAGS, hub_contact, hub_env, writes
from tests.test_lost_answers import LOST_AFTER_COMMIT, settle

__all__ = ["hub_env"]  # the fixture, shared with tests/test_hubspot_sync.py

CONTACTS = "/crm/v3/objects/contacts"
DEALS = "/crm/v3/objects/deals"


@contextlib.asynccontextmanager
async def hubspot_app(env: dict[str, str], **overrides: Any) -> AsyncIterator[App]:
    """The app `crmsyncd` builds from `env` (HubSpot's properties set up first)."""
    setup = await run_cli("hubspot", "setup", "--tags", TAGS, env=env)
    assert setup.code == 0, setup.stderr
    with pytest.MonkeyPatch.context() as mp:  # HUBSPOT_* are read when the connector is built
        for name, value in env.items():
            mp.setenv(name, value)
        async with open_app(load_settings().model_copy(update=overrides)) as app:
            yield app


@pytest.fixture
async def hub_app(hub_env: dict[str, str]) -> AsyncIterator[App]:
    async with hubspot_app(hub_env) as app:
        yield app


class RouteLog:
    """The order in which the sandbox received requests on chosen routes, with their bodies,
    through fault rules whose predicate never matches (nothing is injected)."""

    def __init__(self, server: HubSpotSandbox, *routes: str) -> None:
        self.seen: list[tuple[str, Any]] = []
        for route in routes:
            server.faults.add(route, times=1, when=self._observer(route))

    def _observer(self, route: str) -> Callable[[Any], bool]:
        def predicate(body: Any) -> bool:
            self.seen.append((route, body))
            return False

        return predicate

    def routes(self) -> list[str]:
        return [route for route, _ in self.seen]


def live(server: HubSpotSandbox, resource: str) -> list[dict[str, Any]]:
    return [r for r in server.records(resource) if not r.get("archived")]


def copies(server: HubSpotSandbox, resource: str, name: str) -> Counter[str]:
    """How many live HubSpot records hold each value of property `name` (emails normalised)."""

    def value(record: dict[str, Any]) -> str:
        found = record["properties"].get(name) or ""
        return normalise_key(found) or "" if name == "email" else found

    return Counter(value(r) for r in live(server, resource))


async def open_errors(app: App) -> list[str]:
    rows = await app.pool.fetch(
        "SELECT entity, side, record_id, error_class, reason FROM sync_error WHERE status <> 'resolved'"
    )
    return [f"{r['entity']} {r['side']} {r['record_id']} {r['error_class']}: {r['reason']}" for r in rows]


# -- 1. lost answers of a batch create ------------------------------------------------------------


@pytest.mark.parametrize("fault", LOST_AFTER_COMMIT)
@pytest.mark.parametrize("lag", [0.0, 60.0], ids=["indexed", "index-lagging"])
async def test_a_batch_create_committed_then_lost_is_found_by_email_not_repeated(
    hub_env: dict[str, str], eco: EcosireSandbox, hubspot: HubSpotSandbox, fault: dict[str, Any], lag: float
) -> None:
    """150 contacts (two batches) and three deals; the first batch create of each loses its
    answer after HubSpot committed it. The next pass looks the contacts up by email (batch read,
    which the search index's lag does not delay) before anything is created again, and the deals
    (no match key) by content once the search index shows them; none is created twice."""
    people = eco.seed(
        "contacts", [{"name": f"Lost Answer{i}", "email": f"lost{i}@mail.example"} for i in range(150)]
    )
    eco.seed(
        "deals",
        [
            # Its contact in the batch that is answered: linked by the time deals are written.
            {"title": "Lost deal", "amount": 500, "currency": "usd", "contactId": people[-1]["id"]},
            {"title": "Lost deal 2", "amount": 700, "currency": "eur"},
            {"title": "Lost deal 3", "amount": 900, "currency": "usd"},
        ],
    )
    hubspot.search_lag = lag
    hubspot.faults.add(f"POST {CONTACTS}/batch/create", times=1, **fault)
    hubspot.faults.add(f"POST {DEALS}/batch/create", times=1, **fault)
    # The connector is told how far HubSpot's index lags (HUBSPOT_SEARCH_LAG), as a user would.
    async with hubspot_app({**hub_env, "HUBSPOT_SEARCH_LAG": str(lag)}, http_timeout=0.5) as app:
        first = await app.engine.sync_pass(app.entities)
        assert first.counts.parked["transient"] >= 100
        assert len(live(hubspot, "contacts")) == 150  # both batches committed
        assert len(live(hubspot, "deals")) >= 1

        log = RouteLog(hubspot, f"POST {CONTACTS}/batch/read", f"POST {CONTACTS}/batch/create")
        await app.engine.retry_pass(app.entities, include_not_due=True)
        # Found before any create: no contact is created again. While the search index lags,
        # only a read by email (HubSpot's batch read, idProperty=email) can find them.
        assert f"POST {CONTACTS}/batch/create" not in log.routes(), log.routes()
        if lag:
            by_email = [body for _, body in log.seen if body.get("idProperty") == "email"]
            assert sum(len(body["inputs"]) for body in by_email) >= 100
        if lag:
            # The deals' copies are not searchable yet: not proven absent, so not created again,
            # and not tried again before the index can show them (no attempt spent on waiting).
            assert max(copies(hubspot, "deals", "dealname").values()) == 1
            waits = await app.pool.fetch(
                "SELECT extract(epoch FROM next_attempt_at - now())::float8 AS wait, status"
                " FROM sync_error WHERE entity = 'deals' AND status <> 'resolved'"
            )
            assert waits and all(r["wait"] >= lag and r["status"] == "pending" for r in waits), waits
            hubspot.clock = lambda: utc_now() + timedelta(seconds=lag + 1)
        await settle(app)

        assert copies(hubspot, "contacts", "email") == {f"lost{i}@mail.example": 1 for i in range(150)}
        assert copies(hubspot, "deals", "dealname") == {"Lost deal": 1, "Lost deal 2": 1, "Lost deal 3": 1}
        assert hubspot.requests[f"POST {CONTACTS}/batch/create"] == 2
        deal = next(d for d in live(hubspot, "deals") if d["properties"]["dealname"] == "Lost deal")
        ana = next(c for c in live(hubspot, "contacts") if c["properties"]["email"] == "lost149@mail.example")
        assert [a["id"] for a in deal["associations"]["contacts"]["results"]] == [ana["id"]]
        pairs = await app.pool.fetch("SELECT entity, ecosire_id, crm_id FROM record_map")
        assert len(pairs) == 153 and all(p["ecosire_id"] and p["crm_id"] for p in pairs)
        assert await open_errors(app) == []


# -- 3. bad input -----------------------------------------------------------------------------------


async def test_bad_hubspot_records_and_a_refused_input_are_parked_naming_the_field(
    hub_app: App, eco: EcosireSandbox, hubspot: HubSpotSandbox
) -> None:
    """Bad values read from HubSpot are parked naming the record and the field; an input HubSpot
    refuses in a batch (a tag that is no option of `ecosire_tags`: INVALID_OPTION) parks that
    record alone, naming the property, while its batch's other inputs are written."""
    app = hub_app
    good = hubspot.seed(
        "contacts", [hub_contact("Hub", f"Good{i}", f"good{i}@mail.example") for i in range(3)]
    )
    bad = hubspot.seed(
        "contacts",
        [
            hub_contact("Not", "Anemail", "not an email"),
            {"properties": {"email": "nameless@mail.example"}},
        ],
    )
    [bad_amount, good_deal] = hubspot.seed(
        "deals",
        [
            {"properties": {"dealname": "Lots", "amount": "lots"}},
            {"properties": {"dealname": "Fine deal", "amount": "12.5"}},
        ],
    )
    people = eco.seed(
        "contacts",
        [
            *(
                {"name": f"Eco Person{i}", "email": f"eco{i}@mail.example", "tags": ["vip"]}
                for i in range(20)
            ),
            {"name": "Gold Tagged", "email": "gold@mail.example", "tags": ["vip", "gold"]},
        ],
    )
    gold = people[-1]

    report = await app.engine.sync_pass(app.entities)

    assert report.status == "ok", report.error
    rows = await app.pool.fetch(
        "SELECT entity, side, record_id, error_class, reason FROM sync_error WHERE status <> 'resolved'"
    )
    found = {(r["entity"], r["side"], r["record_id"]): (r["error_class"], r["reason"]) for r in rows}
    assert sorted(found) == sorted(
        [
            ("contacts", "crm", bad[0]["id"]),
            ("contacts", "crm", bad[1]["id"]),
            ("deals", "crm", bad_amount["id"]),
            ("contacts", "ecosire", gold["id"]),
        ]
    )
    assert found[("contacts", "crm", bad[0]["id"])] == (
        "rejected",
        "ecosire 422 POST /contacts: email must be an email",
    )
    assert "'firstname+lastname': required, but null" in found[("contacts", "crm", bad[1]["id"])][1]
    assert "'amount': expected a decimal amount" in found[("deals", "crm", bad_amount["id"])][1]
    error_class, reason = found[("contacts", "ecosire", gold["id"])]
    assert error_class == "rejected" and "ecosire_tags" in reason and "INVALID_OPTION" in reason
    # The rest synced: the 20 in gold's one batch (HubSpot's 207 names gold alone), HubSpot's
    # good contacts and deal.
    assert hubspot.requests[f"POST {CONTACTS}/batch/create"] == 1
    assert copies(hubspot, "contacts", "email") == {
        **{f"eco{i}@mail.example": 1 for i in range(20)},
        **{f"good{i}@mail.example": 1 for i in range(3)},
        "not an email": 1,
        "nameless@mail.example": 1,
    }
    eco_emails = {r["email"] for r in eco.records("contacts")}
    assert {g["properties"]["email"] for g in good} <= eco_emails
    assert not {"not an email", "nameless@mail.example"} & eco_emails
    assert [d["title"] for d in eco.records("deals")] == ["Fine deal"]
    assert good_deal["id"] in {r["crm_id"] for r in await app.pool.fetch("SELECT crm_id FROM record_map")}
    # Parked, they do not come back to haunt: the next pass writes nothing.
    again = await app.engine.sync_pass(app.entities)
    assert again.status == "ok" and again.counts.writes == 0


# -- 4. echo-free quiet passes --------------------------------------------------------------------


async def test_quiet_passes_with_hubspot_write_nothing_and_cost_a_search_and_a_listing_per_entity(
    hub_env: dict[str, str], eco: EcosireSandbox, hubspot: HubSpotSandbox
) -> None:
    """After an initial sync both ways (contacts and deals), passes write nothing: our own writes,
    read back, are echoes. A quiet pass costs HubSpot one search per entity, the archived listing
    the feed reads at its end (deletions do not show in search), and the contacts of the deals
    re-read at the cursor's stamp: five requests."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    eco.clock = TickingClock(start)
    hubspot.clock = TickingClock(start)
    people = eco.seed(
        "contacts",
        [{"name": f"Eco Person{i}", "email": f"eco{i}@mail.example", "tags": ["vip"]} for i in range(150)],
    )
    hubs = hubspot.seed(
        "contacts", [hub_contact("Hub", f"Person{i}", f"hub{i}@mail.example") for i in range(120)]
    )
    eco.seed(
        "deals",
        [{"title": f"Eco deal {i}", "amount": 100 + i, "contactId": people[i]["id"]} for i in range(30)],
    )
    hubspot.seed(
        "deals",
        [
            {
                "properties": {"dealname": f"Hub deal {i}", "amount": "5"},
                "associations": {"contacts": [hubs[i]["id"]]},
            }
            for i in range(30)
        ],
    )
    # Stamps 3 s apart (TickingClock) and a search lag below that: the re-read window holds only
    # the cursor's own stamp, as on a day that has been quiet for longer than the lag.
    async with hubspot_app({**hub_env, "HUBSPOT_SEARCH_LAG": "1"}) as app:
        first = await app.engine.sync_pass(app.entities)
        assert first.status == "ok" and first.counts.created == {"crm": 180, "ecosire": 150}
        passes = [await app.engine.sync_pass(app.entities) for _ in range(2)]
        hubspot.requests.clear()
        eco.requests.clear()
        quiet = await app.engine.sync_pass(app.entities)

    assert all(p.counts.writes == 0 for p in passes) and quiet.counts.writes == 0
    assert writes(hubspot) == 0 and writes(eco) == 0
    print(f"a quiet pass: HubSpot {dict(hubspot.requests)}, ECOSIRE {dict(eco.requests)}")
    assert dict(hubspot.requests) == {
        f"POST {CONTACTS}/search": 1,
        f"GET {CONTACTS}": 1,  # archived=true
        f"POST {DEALS}/search": 1,
        # The deals at the cursor's stamp (one batch create stamps its 30 alike) are read again
        # (search filters GTE the stamp) and their contacts with them; then dropped as echoes.
        "POST /crm/v4/associations/deals/contacts/batch/read": 1,
        f"GET {DEALS}": 1,
    }
    assert dict(eco.requests) == {"GET /contacts": 1, "GET /deals": 1}


# -- 2. kill -9 storm ---------------------------------------------------------------------------------

STORM_SEED = 20261202
STORM_KILLS = 10


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_at_random_moments_with_hubspot_duplicates_nothing(
    hub_env: dict[str, str],
    eco: EcosireSandbox,
    hubspot: HubSpotSandbox,
    record_property: Callable[[str, object], None],
) -> None:
    """An initial sync of 300 contacts and 150 deals each way (deals on their own side's
    contacts; ten contacts and five deals a side more while it is down), `crmsyncd run` killed
    with SIGKILL STORM_KILLS times at instants drawn from a seeded random.Random (some of them
    just after a deal batch is sent: deals are written last, and have no match key to be found
    by), restarted each time; HubSpot's search lags writes by a second. At the end: every record
    once on each side, all linked, and passes write nothing."""
    assert (await run_cli("hubspot", "setup", "--tags", TAGS, env=hub_env)).code == 0
    eco.latency = hubspot.latency = 0.003
    hubspot.search_lag = 1.0
    emails: set[str] = set()
    titles: set[str] = set()

    def add(first: int, people: int, deals: int) -> None:
        """`people` new contacts a side, and `deals` new deals a side on them."""
        span = range(first, first + people)
        eco_people = eco.seed(
            "contacts", [{"name": f"Eco Person{i}", "email": f"eco{i}@mail.example"} for i in span]
        )
        hub_people = hubspot.seed(
            "contacts", [hub_contact("Hub", f"Person{i}", f"hub{i}@mail.example") for i in span]
        )
        eco.seed(
            "deals",
            [
                {"title": f"Eco deal {first + i}", "amount": 1000 + i, "contactId": eco_people[i]["id"]}
                for i in range(deals)
            ],
        )
        hubspot.seed(
            "deals",
            [
                {
                    "properties": {"dealname": f"Hub deal {first + i}", "amount": f"{10 + i}.5"},
                    "associations": {"contacts": [hub_people[i]["id"]]},
                }
                for i in range(deals)
            ],
        )
        emails.update(f"{side}{i}@mail.example" for side in ("eco", "hub") for i in span)
        titles.update(f"{side} deal {first + i}" for side in ("Eco", "Hub") for i in range(deals))

    add(0, 300, 150)
    spy = WriteSpy()
    spy.watch(eco, "POST /deals")
    spy.watch(hubspot, f"POST {DEALS}/batch/create")
    env = run_env({**hub_env, "HUBSPOT_SEARCH_LAG": "2"}, CRMSYNCD_RETRY_INTERVAL="2")
    rng = random.Random(STORM_SEED)
    started = time.monotonic()
    for life in range(STORM_KILLS):
        daemon = Daemon(env, life)
        spy.arm()
        await daemon.start()
        mode = rng.choice(("time", "deals"))
        delay = rng.uniform(0.5, 3.0) if mode == "time" else rng.uniform(0.0, 0.3)
        if mode == "deals":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.hit.wait(), 20)
            deadline = time.monotonic() + delay
        else:
            deadline = daemon.started_at + delay
        assert await daemon.live_until(deadline), f"life {life} ended by itself:\n{daemon.tail()}"
        await daemon.kill()
        print(f"kill {life + 1} ({mode}, {delay:.2f}s)")
        add(1000 * (life + 1), 10, 5)  # users add records while it is down
    final = Daemon(env, STORM_KILLS)
    await final.start()
    pool = await create_pool(hub_env["CRMSYNCD_DATABASE_URL"])
    try:
        converged, passes = await converge(final, pool, 120)
        assert await final.stop() == 0, final.tail()
        linked = await pool.fetch(
            "SELECT entity, ecosire_id, crm_id FROM record_map"
            " WHERE ecosire_id IS NOT NULL AND crm_id IS NOT NULL"
        )
        errors = await pool.fetch(
            "SELECT entity, side, record_id, reason FROM sync_error WHERE status <> 'resolved'"
        )
    finally:
        await pool.close()

    sides = {
        "ecosire contacts": Counter(normalise_key(r["email"]) or "" for r in eco.records("contacts")),
        "hubspot contacts": copies(hubspot, "contacts", "email"),
        "ecosire deals": Counter(str(r["title"]) for r in eco.records("deals")),
        "hubspot deals": copies(hubspot, "deals", "dealname"),
    }
    duplicates = {side: sum(n - 1 for n in seen.values()) for side, seen in sides.items()}
    records = {side: sum(seen.values()) for side, seen in sides.items()}
    numbers = {
        "kills": STORM_KILLS,
        "records_per_side": records,
        "duplicates": duplicates,
        "linked_pairs": len(linked),
        "open_errors": len(errors),
        "converged": converged,
        "passes_to_converge": passes,
        "storm_seconds": round(time.monotonic() - started, 1),
    }
    for name, value in numbers.items():
        record_property(name, value)
    print("hubspot crash storm:", numbers)
    assert converged, f"no convergence after {passes} passes:\n{final.tail()}"
    assert sum(duplicates.values()) == 0, {
        s: [k for k, n in c.items() if n > 1][:10] for s, c in sides.items()
    }
    assert set(sides["ecosire contacts"]) == set(sides["hubspot contacts"]) == emails
    assert set(sides["ecosire deals"]) == set(sides["hubspot deals"]) == titles
    # Every record linked to its counterpart, and nothing left parked.
    by_entity = Counter(r["entity"] for r in linked)
    assert by_entity == {"contacts": len(emails), "deals": len(titles)}
    assert {r["ecosire_id"] for r in linked if r["entity"] == "contacts"} == {
        r["id"] for r in eco.records("contacts")
    }
    assert {r["crm_id"] for r in linked if r["entity"] == "deals"} == {
        r["id"] for r in live(hubspot, "deals")
    }
    assert errors == []
