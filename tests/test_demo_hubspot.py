"""`crmsyncd demo --crm hubspot` and `crmsyncd sandbox --crm hubspot --seed-demo`: the demo data
set in HubSpot's shape, synced against the HubSpot sandbox at HubSpot's own limits."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from crmsyncd.sandbox.hubspot import HubSpotSandbox, run_hubspot_sandbox
from crmsyncd.sandbox.hubspot.seed import DEMO_TAGS, hubspot_demo_dataset
from tests.conftest import run_cli

# A user's own HubSpot variables, which the demo must not read (with both a token and an OAuth
# client set, reading them would be refused as a misconfiguration).
USERS_HUBSPOT = {
    "HUBSPOT_ACCESS_TOKEN": "pat-na1-00000000-0000-4000-8000-0000000users",
    "HUBSPOT_CLIENT_ID": "users-client-id",
    "HUBSPOT_API_URL": "https://api.hubapi.com",
    "HUBSPOT_RATE_LIMIT": "1",
}


def _figures(out: str) -> str:
    """The report without its timings (seconds differ from run to run)."""
    out = re.sub(r"\s+\d+\.\d+s$", "", out, flags=re.M)
    return re.sub(r"^  between passes, .*$", "", out, flags=re.M)


async def test_demo_with_hubspot_converges_parks_nothing_and_tells_the_same_story_twice(
    tmp_path: Path,
) -> None:
    env = {"CRMSYNCD_DATA_DIR": str(tmp_path / "data"), **USERS_HUBSPOT}
    first = await run_cli("demo", "--crm", "hubspot", "--contacts", "120", env=env)
    assert first.code == 0, first.stderr
    out = first.stdout
    assert "sandbox ECOSIRE and HubSpot APIs" in out
    assert "190 requests per 10 s, 5 searches/s, search index 3 s behind writes" in out
    # The custom properties, created by `crmsyncd hubspot setup`'s code.
    assert "crmsyncd hubspot setup: contacts property ecosire_type: created" in out
    assert "crmsyncd hubspot setup: contacts property ecosire_tags: created" in out
    assert "converged after" in out and "the last wrote nothing" in out
    assert "linked by email, not duplicated: 40" in out
    assert "parked in the retry queue: none" in out
    assert "without counterpart" in out and " 0 without counterpart" in out
    assert not re.search(r"[1-9]\d* without counterpart", out)
    assert "429 answers: 0" in out
    kinds = re.search(r"HubSpot by kind: (.*)", out)
    assert kinds is not None and "search" in kinds.group(1) and "batch create" in kinds.group(1)
    assert "requests per synced record" in out
    assert USERS_HUBSPOT["HUBSPOT_ACCESS_TOKEN"] not in out + first.stderr

    second = await run_cli("demo", "--crm", "hubspot", "--contacts", "120", env=env)
    assert second.code == 0, second.stderr
    assert _figures(second.stdout) == _figures(out)


def test_hubspot_demo_data_set_is_the_demo_data_set_in_hubspots_shape() -> None:
    eco, hub = hubspot_demo_dataset(seed=7, contacts=90)
    assert (eco, hub) == hubspot_demo_dataset(seed=7, contacts=90)
    server = HubSpotSandbox()
    server.seed("contacts", hub["contacts"])
    server.seed("deals", hub["deals"])
    contacts = server.records("contacts")
    emails = {c["properties"].get("email") for c in contacts} - {None}
    shared = emails & {c["email"] for c in eco["contacts"]}
    assert 25 <= len(shared) <= 35  # a third on both sides, as the REST CRM's
    assert "ops@intranet" not in emails  # HubSpot refuses that address: no portal holds it
    for contact in contacts:
        tags = contact["properties"].get("ecosire_tags")
        assert tags is None or set(tags.split(";")) <= set(DEMO_TAGS)
        assert contact["properties"]["firstname"] and "ecosire_type" not in contact["properties"]
    ids = {c["id"] for c in contacts}
    deals = server.records("deals")
    assert len(deals) == 15
    linked = [d for d in deals if d.get("associations")]
    assert linked and all(a["id"] in ids for d in linked for a in d["associations"]["contacts"]["results"])
    stages = {"appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "contractsent"}
    assert {d["properties"]["dealstage"] for d in deals} <= stages | {"closedwon", "closedlost"}
    assert all(float(d["properties"]["amount"]) > 0 for d in deals)


async def test_sandbox_seed_demo_serves_the_hubspot_data_set_with_its_properties() -> None:
    ready: asyncio.Future[HubSpotSandbox] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_hubspot_sandbox("127.0.0.1", 0, seed_demo=True, on_ready=ready.set_result))
    hub = await ready
    try:
        expected = hubspot_demo_dataset()[1]
        assert len(hub.records("contacts")) == len(expected["contacts"])
        assert len(hub.records("deals")) == len(expected["deals"])
        options = {o.value for o in hub.portal.definitions["contacts"]["ecosire_tags"].options}
        assert options == set(DEMO_TAGS)
        assert "ecosire_type" in hub.portal.definitions["contacts"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
