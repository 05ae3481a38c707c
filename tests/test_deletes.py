"""Deletes: seen as a 404 on write or as an id missing from a full listing; the entity's policy
(flag, propagate, ignore) applies; a deleted record is never re-created; mass deletion trips a
circuit breaker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

import pytest

from crmsyncd.app import App, open_app
from crmsyncd.config import Settings
from crmsyncd.domain.mapping import parse_mapping
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox


def _mapping(policy: str) -> str:
    text = resources.files("crmsyncd.domain").joinpath("default_mapping.toml").read_text("utf-8")
    return text.replace('match_key = "email"\n', f'match_key = "email"\ndelete_policy = "{policy}"\n')


@pytest.fixture(params=["flag"])
async def policy_app(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[App]:
    mapping = parse_mapping(_mapping(request.param), "test mapping")
    async with open_app(settings, mapping) as app:
        yield app


async def _linked(app: App, eco: EcosireSandbox, n: int) -> list[dict[str, object]]:
    eco.seed("contacts", [{"name": f"P{i}", "email": f"p{i}@mail.example"} for i in range(n)])
    await app.engine.sync_pass(app.entities)
    return eco.records("contacts")


async def test_flag_a_404_on_write_keeps_the_survivor_and_never_recreates(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    people = await _linked(app, eco, 3)
    gone = next(c for c in crm.records("contacts") if c["emailAddress"] == "p0@mail.example")
    crm.remove("contacts", str(gone["id"]))
    eco.edit("contacts", str(people[0]["id"]), name="Edited after the CRM deleted it")

    report = await app.engine.sync_pass(app.entities)
    assert report.status == "ok"
    assert report.counts.deleted_seen == {"crm": 1}
    rows = await app.pool.fetch("SELECT side, record_id, error_class, status, reason FROM sync_error")
    assert [(r["side"], r["record_id"], r["error_class"], r["status"]) for r in rows] == [
        ("ecosire", people[0]["id"], "deleted", "dead")
    ]
    assert "was deleted" in rows[0]["reason"] and "delete policy: flag" in rows[0]["reason"]
    state = await app.pool.fetchval("SELECT state FROM record_map WHERE ecosire_id = $1", people[0]["id"])
    assert state == "deleted"
    # Later edits of the survivor never bring the deleted record back.
    eco.edit("contacts", str(people[0]["id"]), name="Edited again")
    crm.reset_counts()
    await app.engine.sync_pass(app.entities)
    await app.engine.retry_pass(app.entities, include_not_due=True)
    assert "POST /contacts" not in crm.requests
    assert sorted(c["emailAddress"] for c in crm.records("contacts")) == [
        "p1@mail.example",
        "p2@mail.example",
    ]
    assert len(eco.records("contacts")) == 3


@pytest.mark.parametrize("policy_app", ["propagate"], indirect=True)
async def test_propagate_deletes_the_counterpart(
    policy_app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    app = policy_app
    people = await _linked(app, eco, 12)
    eco.remove("contacts", str(people[3]["id"]))
    report = await app.engine.reconcile_pass(app.entities)
    assert report.status == "ok"
    assert report.counts.deleted == {"crm": 1}
    assert len(crm.records("contacts")) == 11
    assert "p3@mail.example" not in {c["emailAddress"] for c in crm.records("contacts")}
    assert await app.pool.fetchval("SELECT count(*) FROM sync_error") == 0
    quiet = await app.engine.sync_pass(app.entities)
    assert quiet.counts.writes == 0


@pytest.mark.parametrize("policy_app", ["ignore"], indirect=True)
async def test_ignore_leaves_the_counterpart_and_no_error(
    policy_app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    app = policy_app
    people = await _linked(app, eco, 3)
    gone = crm.records("contacts")[1]
    crm.remove("contacts", str(gone["id"]))
    eco.edit("contacts", str(next(p for p in people if p["email"] == gone["emailAddress"])["id"]), name="x")
    report = await app.engine.sync_pass(app.entities)
    assert report.counts.deleted_seen == {"crm": 1} and not report.counts.deleted
    assert await app.pool.fetchval("SELECT count(*) FROM sync_error") == 0
    assert len(eco.records("contacts")) == 3 and len(crm.records("contacts")) == 2


async def test_reconciliation_flags_a_record_missing_from_the_full_listing(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    await _linked(app, eco, 20)
    gone = crm.records("contacts")[7]
    crm.remove("contacts", str(gone["id"]))
    quiet = await app.engine.sync_pass(app.entities)  # a delta read cannot see a deletion
    assert quiet.counts.deleted_seen == {}

    report = await app.engine.reconcile_pass(app.entities)
    assert report.status == "ok" and report.counts.deleted_seen == {"crm": 1}
    rows = await app.pool.fetch("SELECT error_class, status, reason FROM sync_error")
    assert [(r["error_class"], r["status"]) for r in rows] == [("deleted", "dead")]
    assert "missing from a full listing" in rows[0]["reason"]
    assert len(crm.records("contacts")) == 19 and len(eco.records("contacts")) == 20


async def test_the_circuit_breaker_stops_a_mass_deletion_and_says_so(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    await _linked(app, eco, 20)
    for record in crm.records("contacts")[:8]:  # 40% gone, the guard allows 10%
        crm.remove("contacts", str(record["id"]))
    report = await app.engine.reconcile_pass(app.entities)
    assert report.status == "blocked"
    assert report.error is not None
    assert "circuit breaker" in report.error and "8 of 20" in report.error
    assert await app.pool.fetchval("SELECT count(*) FROM record_map WHERE state = 'deleted'") == 0
    assert await app.pool.fetchval("SELECT count(*) FROM sync_error") == 0
