"""Retries re-read their source: a parked record is retried from a fresh read of the record where
it came from, never from the copy stored when it was parked. A record deleted meanwhile is never
created again; one edited meanwhile is written with its edited values; a deal waiting for its
contact is retried as soon as that contact is linked, within the attempt limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from crmsyncd.app import App, open_app
from crmsyncd.config import Settings
from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.domain.records import Side
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import run_cli


def by_name(name: str, field: str = "name") -> Any:
    return lambda body: body.get(field) == name


async def error_rows(app: App) -> list[asyncpg.Record]:
    return await app.pool.fetch(
        "SELECT entity, side, record_id, map_id, error_class, status, attempts, reason"
        " FROM sync_error ORDER BY id"
    )


async def test_a_parked_record_deleted_at_its_source_is_never_created_by_a_retry(
    app: App, env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    kept, refused, nameless, linked = crm.seed(
        "contacts",
        [
            {"fullName": "Crm Kept", "emailAddress": "kept@mail.example"},
            {"fullName": "Crm Refused", "emailAddress": "refused@mail.example"},
            {"fullName": None, "emailAddress": "nameless@mail.example"},  # unreadable: no name
            {"fullName": "Crm Linked", "emailAddress": "linked@mail.example"},
        ],
    )
    eco.faults.add("POST /contacts", status=422, when=by_name("Crm Refused"), times=100)
    first = await app.engine.sync_pass(app.entities)
    assert first.status == "ok", first.error
    assert sorted(r["name"] for r in eco.records("contacts")) == ["Crm Kept", "Crm Linked"]
    # A linked pair whose CRM edit ECOSIRE refuses, parked too.
    crm.edit("contacts", linked["id"], fullName="Crm Linked, edited")
    eco.faults.add("PATCH /contacts/{id}", status=422, times=100)
    second = await app.engine.sync_pass(app.entities)
    assert second.status == "ok", second.error
    parked = {(r["record_id"], r["error_class"], r["status"]) for r in await error_rows(app)}
    assert parked == {
        (refused["id"], "rejected", "pending"),
        (nameless["id"], "bad_record", "dead"),
        (linked["id"], "rejected", "pending"),
    }
    assert await app.engine.errors.replay(None) == 3  # every row given its chance again

    # Then the user deletes all three in the CRM, and the retry queue is run.
    for record in (refused, nameless, linked):
        crm.remove("contacts", record["id"])
    eco.reset_counts()
    retried = await run_cli("retry", "--once", "--all", env=env)
    assert retried.code == 0, retried.stderr

    assert eco.requests["POST /contacts"] == 0 and eco.requests["PATCH /contacts/{id}"] == 0
    assert sorted(r["name"] for r in eco.records("contacts")) == ["Crm Kept", "Crm Linked"]
    rows = {r["record_id"]: r for r in await error_rows(app)}
    for record in (refused, nameless, linked):
        row = rows[record["id"]]
        assert row["status"] == "resolved", row
        assert "deleted at its source" in row["reason"], row["reason"]
    # Under the default policy (flag) the survivor of the linked pair is kept and flagged.
    eco_linked = next(r for r in eco.records("contacts") if r["name"] == "Crm Linked")
    flag = rows[eco_linked["id"]]
    assert (flag["side"], flag["error_class"], flag["status"]) == ("ecosire", "deleted", "dead")
    states = await app.pool.fetch(
        "SELECT crm_id, state, deleted_side FROM record_map WHERE crm_id = ANY($1::text[])",
        [refused["id"], linked["id"]],
    )
    assert {(r["crm_id"], r["state"], r["deleted_side"]) for r in states} == {
        (refused["id"], "deleted", "crm"),
        (linked["id"], "deleted", "crm"),
    }
    # Nothing is left to retry, and later passes create nothing either.
    assert await app.engine.errors.counts() == {"pending": 0, "dead": 1, "resolved": 3}
    await app.engine.sync_pass(app.entities)
    await app.engine.retry_pass(app.entities, include_not_due=True)
    # The flag replayed is dead again: a deleted pair is never written again.
    assert await app.engine.errors.replay(None) == 1
    await app.engine.retry_pass(app.entities)
    assert await app.engine.errors.counts() == {"pending": 0, "dead": 1, "resolved": 3}
    assert eco.requests["POST /contacts"] == 0 and eco.requests["PATCH /contacts/{id}"] == 0
    assert kept["id"] in {r["id"] for r in crm.records("contacts")}


async def test_a_parked_record_edited_at_its_source_is_retried_with_its_edited_values(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    refused, nameless = eco.seed(
        "contacts",
        [
            {"name": "Old Name", "email": "refused@mail.example", "tags": ["old"]},
            {"name": None, "email": "nameless@mail.example"},  # unreadable: parked at staging
        ],
    )
    crm.faults.add("POST /contacts", status=422, when=by_name("Old Name", "fullName"), times=1)
    await app.engine.sync_pass(app.entities)
    assert crm.records("contacts") == []
    assert await app.engine.errors.replay(None) == 2

    # Edited at the source while parked, and retried before any sync pass reads the edits.
    eco.edit("contacts", refused["id"], name="New Name", tags=["new"])
    eco.edit("contacts", nameless["id"], name="Named Now")
    crm.reset_counts()
    retried = await app.engine.retry_pass(app.entities)
    assert retried.status == "ok", retried.error

    written = {r["emailAddress"]: r for r in crm.records("contacts")}
    assert written["refused@mail.example"]["fullName"] == "New Name"
    assert written["refused@mail.example"]["labels"] == ["new"]
    assert written["nameless@mail.example"]["fullName"] == "Named Now"
    assert crm.requests["POST /contacts"] == 2
    assert {r["status"] for r in await error_rows(app)} == {"resolved"}
    quiet = await app.engine.sync_pass(app.entities)
    assert quiet.counts.writes == 0


@pytest.fixture
async def patient_app(settings: Settings) -> AsyncIterator[App]:
    """Five attempts, and a backoff of hours: a row due now is due because it was made so."""
    async with open_app(settings.model_copy(update={"max_attempts": 5, "retry_backoff": 1e6})) as app:
        yield app


async def test_a_deal_waiting_for_its_contact_syncs_once_the_contact_is_linked(
    patient_app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    app = patient_app
    [contact] = crm.seed("contacts", [{"fullName": None, "emailAddress": "late@mail.example"}])
    [deal] = crm.seed(
        "deals", [{"title": "Waiting", "amount": 12.5, "currency": "EUR", "contactId": contact["id"]}]
    )
    attempts_seen: list[int] = []

    async def attempts() -> dict[str, tuple[str, int]]:
        rows = [r for r in await error_rows(app) if r["entity"] == "deals"]
        attempts_seen.extend(r["attempts"] for r in rows)
        return {r["record_id"]: (r["status"], r["attempts"]) for r in rows}

    await app.engine.sync_pass(app.entities)
    assert await attempts() == {deal["id"]: ("pending", 1)}
    # Retried to death while the contact stays unreadable; passes and an edit of the deal meanwhile.
    for _ in range(6):
        await app.engine.retry_pass(app.entities, include_not_due=True)
        await app.engine.sync_pass(app.entities)
    assert await attempts() == {deal["id"]: ("dead", 5)}
    crm.edit("deals", deal["id"], stage="negotiation")
    await app.engine.sync_pass(app.entities)
    await app.engine.retry_pass(app.entities, include_not_due=True)
    assert (await attempts())[deal["id"]][0] == "dead", attempts_seen
    # A second deal parked once, its next try hours away.
    [second] = crm.seed("deals", [{"title": "Second", "amount": 3, "contactId": contact["id"]}])
    await app.engine.sync_pass(app.entities)
    assert (await attempts())[second["id"]] == ("pending", 1)

    # The contact is fixed and linked by a sync pass; the next retry pass (due rows only) syncs
    # both deals, pointing at the contact's ECOSIRE id.
    crm.edit("contacts", contact["id"], fullName="Late Contact")
    await app.engine.sync_pass(app.entities)
    [eco_contact] = eco.records("contacts")
    retried = await app.engine.retry_pass(app.entities)
    assert retried.status == "ok", retried.error
    deals = {d["title"]: d for d in eco.records("deals")}
    assert sorted(deals) == ["Second", "Waiting"], attempts_seen
    assert {d["contactId"] for d in deals.values()} == {eco_contact["id"]}
    assert deals["Waiting"]["stage"] == "negotiation" and deals["Waiting"]["amount"] == 1250
    assert {status for status, _ in (await attempts()).values()} == {"resolved"}
    assert max(attempts_seen) <= 5, attempts_seen


async def test_get_many_reads_each_id_once_and_leaves_out_the_gone(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    seeded = eco.seed("contacts", [{"name": f"P{i}", "email": f"p{i}@mail.example"} for i in range(20)])
    eco.remove("contacts", seeded[3]["id"])
    ids = [r["id"] for r in seeded]
    for side, server, records in ((Side.ECOSIRE, eco, ids), (Side.CRM, crm, ["c_404"])):
        server.reset_counts()
        found = await app.engine.connectors[side].get_many("contacts", [*records, *records[:5]])
        assert server.requests["GET /contacts/{id}"] == len(records)
        if side is Side.ECOSIRE:
            assert sorted(found) == sorted(i for i in ids if i != seeded[3]["id"])
            assert found[ids[0]]["name"] == "P0"
        else:
            assert found == {}
    # Anything but a 404 is raised, as `get` raises it.
    eco.faults.add("GET /contacts/{id}", status=503, times=100)
    with pytest.raises(ConnectorError) as raised:
        await app.engine.connectors[Side.ECOSIRE].get_many("contacts", ids[:3])
    assert raised.value.outcome is Outcome.RETRY and "503" in str(raised.value)


async def test_a_source_that_cannot_be_read_now_writes_nothing_and_parks_again(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    [refused] = eco.seed("contacts", [{"name": "Refused", "email": "refused@mail.example"}])
    crm.faults.add("POST /contacts", status=422, when=by_name("Refused", "fullName"), times=1)
    await app.engine.sync_pass(app.entities)
    eco.faults.add("GET /contacts/{id}", status=503, times=100)
    crm.reset_counts()
    retried = await app.engine.retry_pass(app.entities, include_not_due=True)
    assert retried.status == "ok", retried.error
    assert crm.requests["POST /contacts"] == 0 and crm.records("contacts") == []
    [row] = await error_rows(app)
    assert (row["record_id"], row["status"], row["attempts"]) == (refused["id"], "pending", 2)
    assert "could not read the record again at its source" in row["reason"] and "503" in row["reason"]
    # Readable again, it syncs.
    eco.faults.clear()
    await app.engine.retry_pass(app.entities, include_not_due=True)
    assert [r["fullName"] for r in crm.records("contacts")] == ["Refused"]
    assert [r["status"] for r in await error_rows(app)] == ["resolved"]
