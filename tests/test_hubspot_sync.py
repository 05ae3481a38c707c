"""crmsyncd with CRMSYNCD_CRM=hubspot, end to end: `crmsyncd sync --once` as users run it, against
the ECOSIRE sandbox and the HubSpot sandbox over real HTTP, state in real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crmsyncd.sandbox import EcosireSandbox
from crmsyncd.sandbox.hubspot import HubSpotSandbox
from tests.conftest import SteppedClock, by_email, run_cli

TAGS = "vip,newsletter,lead"


@pytest.fixture
def hub_env(
    database_url: str, eco: EcosireSandbox, hubspot: HubSpotSandbox, tmp_path: Path
) -> Iterator[dict[str, str]]:
    yield {
        "CRMSYNCD_DATABASE_URL": database_url,
        "CRMSYNCD_DATA_DIR": str(tmp_path / "data"),
        "ECOSIRE_API_URL": eco.url,
        "ECOSIRE_API_KEY": eco.api_key,
        "ECOSIRE_RATE_LIMIT": "100000",
        "CRMSYNCD_CRM": "hubspot",
        "HUBSPOT_API_URL": hubspot.url,
        "HUBSPOT_ACCESS_TOKEN": hubspot.api_key,
        "CRMSYNCD_RETRY_BACKOFF": "0.01",
        "CRMSYNCD_HTTP_TIMEOUT": "5",
        "CRMSYNCD_LOG_FORMAT": "json",
    }


def hub_contact(first: str, last: str, email: str, **properties: Any) -> dict[str, Any]:
    return {"properties": {"firstname": first, "lastname": last, "email": email, **properties}}


def writes(server: HubSpotSandbox | EcosireSandbox) -> int:
    return sum(
        n
        for route, n in server.requests.items()
        if route.split(" ")[0] in ("PATCH", "DELETE", "PUT")
        or (route.startswith("POST") and "/search" not in route and "/batch/read" not in route)
    )


async def test_contacts_and_deals_sync_both_ways_with_hubspot_and_a_second_pass_writes_nothing(
    hub_env: dict[str, str], eco: EcosireSandbox, hubspot: HubSpotSandbox
) -> None:
    setup = await run_cli("hubspot", "setup", "--tags", TAGS, env=hub_env)
    assert setup.code == 0, setup.stderr

    eco_people = eco.seed(
        "contacts",
        [
            {"name": "Ana Maria Silva", "email": "ana@mail.example", "type": "person", "tags": ["vip"]},
            {"name": "Ben Kim", "email": "ben@mail.example", "type": "company"},
            *({"name": f"Eco Person{i}", "email": f"eco{i}@mail.example"} for i in range(150)),
        ],
    )
    hubspot.seed(
        "contacts",
        [
            hub_contact("Ana", "Silva", "ANA@mail.example", phone="+1 555", ecosire_tags="newsletter"),
            hub_contact("Hub", "Only", "hub.only@mail.example", ecosire_tags="lead"),
            *(hub_contact("Hub", f"Person{i}", f"hub{i}@mail.example") for i in range(120)),
        ],
    )
    ben = next(p for p in eco_people if p["email"] == "ben@mail.example")
    eco.seed(
        "deals",
        [{"title": "Renewal", "amount": 123450, "currency": "usd", "stage": "won", "contactId": ben["id"]}],
    )

    first = await run_cli("sync", "--once", env=hub_env)
    assert first.code == 0, first.stderr

    eco_by = by_email(eco.records("contacts"), "email")
    hub_by = {
        str(r["properties"]["email"]).casefold(): r["properties"]
        for r in hubspot.records("contacts")
        if not r.get("archived")
    }
    assert sorted(eco_by) == sorted(hub_by)
    assert len(eco_by) == 2 + 150 + 1 + 120  # Ana linked by email, not copied
    # name <-> firstname + lastname: the first word, and the rest.
    assert (hub_by["ben@mail.example"]["firstname"], hub_by["ben@mail.example"]["lastname"]) == ("Ben", "Kim")
    assert hub_by["eco3@mail.example"]["lastname"] == "Person3"
    assert eco_by["hub.only@mail.example"]["name"] == "Hub Only"
    # Tags: union, HubSpot's ;-joined form; phone CRM -> ECOSIRE; type ECOSIRE -> CRM.
    assert sorted(eco_by["ana@mail.example"]["tags"]) == ["newsletter", "vip"]
    assert sorted(hub_by["ana@mail.example"]["ecosire_tags"].split(";")) == ["newsletter", "vip"]
    assert eco_by["ana@mail.example"]["phone"] == "+1 555"
    assert hub_by["ben@mail.example"]["ecosire_type"] == "company"
    assert eco_by["hub.only@mail.example"]["tags"] == ["lead"]

    # The deal: amount as a decimal, the stage through the table, associated with Ben's contact.
    (deal,) = [d for d in hubspot.records("deals") if not d.get("archived")]
    assert deal["properties"]["dealname"] == "Renewal"
    assert float(deal["properties"]["amount"]) == 1234.5
    assert deal["properties"]["dealstage"] == "closedwon"
    hub_ben = next(r for r in hubspot.records("contacts") if r["properties"]["email"] == "ben@mail.example")
    assert [a["id"] for a in deal["associations"]["contacts"]["results"]] == [hub_ben["id"]]

    # Batches of 100, as full as the work allows: 151 contacts created (Ben and the 150), at
    # least 2 calls; the 121 HubSpot-only contacts get ECOSIRE's default type back, plus Ana's
    # tags: 122 updates, at least 2 calls; the deal, 1. A batch leaves when full or after its
    # linger, which a loaded machine can cut short: twice the minimum is the bound asserted here
    # (one request a record, unbatched, would be 274); the bench measures the exact figure.
    assert 2 <= hubspot.requests["POST /crm/v3/objects/contacts/batch/create"] <= 4
    assert 2 <= hubspot.requests["POST /crm/v3/objects/contacts/batch/update"] <= 4
    assert hubspot.requests["POST /crm/v3/objects/deals/batch/create"] == 1

    hubspot.requests.clear()
    eco.requests.clear()
    second = await run_cli("sync", "--once", env=hub_env)
    assert second.code == 0, second.stderr
    assert writes(hubspot) == 0 and writes(eco) == 0


async def test_a_hubspot_edit_and_an_archived_contact_reach_ecosire(
    hub_env: dict[str, str], eco: EcosireSandbox, hubspot: HubSpotSandbox
) -> None:
    assert (await run_cli("hubspot", "setup", "--tags", TAGS, env=hub_env)).code == 0
    eco.seed(
        "contacts",
        [{"name": f"Eco Person{i}", "email": f"eco{i}@mail.example"} for i in range(30)],
    )
    assert (await run_cli("sync", "--once", env=hub_env)).code == 0
    hub = {r["properties"]["email"]: r for r in hubspot.records("contacts")}
    hubspot.edit("contacts", hub["eco1@mail.example"]["id"], lastname="Renamed", phone="+44 20")
    hubspot.archive("contacts", hub["eco2@mail.example"]["id"])

    after = await run_cli("sync", "--once", env=hub_env)
    assert after.code == 0, after.stderr
    eco_by = by_email(eco.records("contacts"), "email")
    assert eco_by["eco1@mail.example"]["name"] == "Eco Renamed"
    assert eco_by["eco1@mail.example"]["phone"] == "+44 20"
    # Archived in HubSpot: the default delete policy flags it; ECOSIRE's record is kept, unsynced.
    assert "eco2@mail.example" in eco_by
    listing = await run_cli("errors", "list", "--json", env=hub_env)
    assert "eco2@mail.example" in listing.stdout or hub["eco2@mail.example"]["id"] in listing.stdout
    assert "reported deleted by its API" in listing.stdout


async def test_refused_hubspot_token_exits_1_naming_the_variable(
    hub_env: dict[str, str], eco: EcosireSandbox
) -> None:
    eco.seed("contacts", [{"name": "Ana Silva", "email": "ana@mail.example"}])
    result = await run_cli("sync", "--once", env={**hub_env, "HUBSPOT_ACCESS_TOKEN": "pat-wrong-000"})
    assert result.code == 1
    assert "HUBSPOT_ACCESS_TOKEN" in result.stderr
    assert "pat-wrong-000" not in result.stderr + result.stdout


async def test_missing_hubspot_credentials_exit_2_naming_the_variables(hub_env: dict[str, str]) -> None:
    env = {k: v for k, v in hub_env.items() if k != "HUBSPOT_ACCESS_TOKEN"}
    result = await run_cli("sync", "--once", env=env)
    assert result.code == 2
    assert "HUBSPOT_ACCESS_TOKEN" in result.stderr


async def test_an_edit_the_search_index_shows_after_later_ones_is_still_synced(
    hub_env: dict[str, str], eco: EcosireSandbox, hubspot: HubSpotSandbox
) -> None:
    """HubSpot's search index takes its time, unevenly: an edit can become searchable after an
    edit stamped later, which a pass reads and moves its cursor past. The next pass re-reads at
    least the connector's search lag (HUBSPOT_SEARCH_LAG) before its cursor, so the late one is
    found although it is stamped before the cursor by more than CRMSYNCD_OVERLAP."""
    clock = SteppedClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    hubspot.clock = clock
    assert (await run_cli("hubspot", "setup", "--tags", TAGS, env=hub_env)).code == 0
    eco.seed("contacts", [{"name": f"Eco Person{i}", "email": f"eco{i}@mail.example"} for i in range(3)])
    assert (await run_cli("sync", "--once", env=hub_env)).code == 0
    hub = {r["properties"]["email"]: r["id"] for r in hubspot.records("contacts")}

    clock.advance(60)
    hubspot.search_lag = 8.0  # this edit is searchable 8 s from now
    hubspot.edit("contacts", hub["eco1@mail.example"], lastname="Late")
    hubspot.search_lag = 0.0
    clock.advance(3)
    hubspot.edit("contacts", hub["eco2@mail.example"], lastname="Early")  # stamped later, seen first
    assert (await run_cli("sync", "--once", env=hub_env)).code == 0
    eco_by = by_email(eco.records("contacts"), "email")
    assert eco_by["eco2@mail.example"]["name"] == "Eco Early"
    assert eco_by["eco1@mail.example"]["name"] == "Eco Person1"  # not searchable yet

    clock.advance(10)  # the late edit is in the index now, stamped 3 s before the cursor
    assert (await run_cli("sync", "--once", env={**hub_env, "CRMSYNCD_OVERLAP": "1"})).code == 0
    assert by_email(eco.records("contacts"), "email")["eco1@mail.example"]["name"] == "Eco Late"
