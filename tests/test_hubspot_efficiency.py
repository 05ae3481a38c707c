"""HubSpot's requests spent well: batches as full as the work allows when HubSpot's limits set the
pace, and searches kept under their own limit without a 429, so that an initial sync stays near
what a batch size of 100 and a page size of 200 allow (the bench's HubSpot part measures the same
at 10,000 contacts a side)."""

from __future__ import annotations

import math

from crmsyncd.connectors.http import make_session
from crmsyncd.connectors.hubspot import HubSpotConnector
from crmsyncd.sandbox import EcosireSandbox
from crmsyncd.sandbox.hubspot import HubSpotSandbox, Limits
from crmsyncd.sandbox.hubspot.seed import sandbox_settings
from tests.conftest import run_cli
from tests.test_hubspot_sync import TAGS, hub_contact, hub_env

__all__ = ["hub_env"]  # the fixture, shared with tests/test_hubspot_sync.py

BATCH = "POST /crm/v3/objects/contacts/batch"


async def test_a_paced_initial_sync_writes_hubspot_in_nearly_full_batches(
    hub_env: dict[str, str], eco: EcosireSandbox, hubspot: HubSpotSandbox
) -> None:
    assert (await run_cli("hubspot", "setup", "--tags", TAGS, env=hub_env)).code == 0
    eco_only, hub_only = 700, 400
    eco.seed(
        "contacts", [{"name": f"Eco Person{i}", "email": f"eco{i}@mail.example"} for i in range(eco_only)]
    )
    hubspot.seed(
        "contacts", [hub_contact("Hub", f"Person{i}", f"hub{i}@mail.example") for i in range(hub_only)]
    )
    # HubSpot's own limits, its 10-second window scaled down so that pacing is felt at this size,
    # and a HubSpot that takes its time to answer, as the real one does.
    hubspot.limits.ten_second, hubspot.limits.search_per_second = 40, 5
    hubspot.latency, eco.latency = 0.05, 0.005
    hubspot.requests.clear()

    result = await run_cli("sync", "--once", env=hub_env)
    assert result.code == 0, result.stderr
    live = [r for r in hubspot.records("contacts") if not r.get("archived")]
    assert len(live) == eco_only + hub_only

    # Created: the ECOSIRE-only contacts; updated: the HubSpot-only ones get ECOSIRE's type back
    # once they exist in ECOSIRE. One batch more than the minimum for each at most (the end of a
    # pass), however the writes interleave.
    creates = hubspot.requests[f"{BATCH}/create"]
    updates = hubspot.requests[f"{BATCH}/update"]
    assert creates <= math.ceil(eco_only / 100) + 1, creates
    assert updates <= math.ceil(hub_only / 100) + 1, updates
    assert hubspot.requests.get("rate_limited", 0) == 0


async def test_searches_at_hubspots_real_pace_are_never_answered_429() -> None:
    # Real time, real sockets: HubSpot counts arrivals in its one-second window, and arrivals
    # jitter by a few milliseconds around the starts the connector spaces.
    limits = Limits(ten_second=None, oauth_ten_second=None, daily=None, search_per_second=5)
    async with HubSpotSandbox(search_lag=0.0, limits=limits, latency=0.02) as hub:
        hub.seed("contacts", [hub_contact("Hub", f"Person{i}", f"hub{i}@mail.example") for i in range(25)])
        session = make_session(10)
        try:
            settings = sandbox_settings(hub).model_copy(update={"page_size": 1})
            connector = HubSpotConnector(settings, session)
            read = [r async for page in connector.changes("contacts", since=None) for r in page.records]
        finally:
            await session.close()
        assert len(read) == 25
        assert hub.requests["POST /crm/v3/objects/contacts/search"] == 25
        assert hub.limiter.refused == {}
