"""Mapping changes after the first sync (issue 8, failures 5 and 6), as a user makes them.

A field added to the mapping is backfilled by the next pass (a full read of both sides, the new
field merged as on a first link); a backfill cut short is done again; a renamed entity or resource
is refused at start instead of starting afresh; `crmsyncd resync` re-reads and re-merges on demand
and writes only real differences. Commands run as a user runs them, against both sandbox APIs and
a real PostgreSQL."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import TickingClock, by_email, run_cli
from tests.test_sync import contact, crm_contact

_CONTACTS = """
[entities.{name}]
ecosire = "contacts"
crm = "contacts"
match_key = "email"

[entities.{name}.fields.name]
ecosire = "name"
crm = "fullName"
direction = "both"
rule = "last_updated_wins"
required = true

[entities.{name}.fields.email]
ecosire = "email"
crm = "emailAddress"
direction = "both"
rule = "ecosire_wins"
immutable = true
"""

_PHONE = """
[entities.{name}.fields.phone]
ecosire = "phone"
crm = "phoneNumber"
direction = "both"
rule = "last_updated_wins"
"""


def write_mapping(path: Path, *, phone: bool, name: str = "contacts") -> dict[str, str]:
    """A contacts-only mapping, with or without the phone; the variables that select it."""
    path.write_text(_CONTACTS.format(name=name) + (_PHONE.format(name=name) if phone else ""))
    return {
        "CRMSYNCD_MAPPING": str(path),
        "CRMSYNCD_ENTITIES": name,
        "CRM_RESOURCE_PATHS": "contacts=/contacts",
    }


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def writes(*servers: EcosireSandbox | CrmSandbox) -> list[str]:
    return [key for server in servers for key in server.requests if not key.startswith("GET")]


async def query(env: dict[str, str], sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(env["CRMSYNCD_DATABASE_URL"])
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def seed_pairs(eco: EcosireSandbox, crm: CrmSandbox, n: int) -> None:
    """`n` contacts on both sides sharing an email, with phones unmapped so far: ECOSIRE's only
    (i % 4 == 0), the CRM's only (1), different on both (2: the CRM's is the newer record), equal
    on both (3)."""
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    eco_phone = {0: "+1 100 {i}", 2: "+1 200 {i}", 3: "+1 300 {i}"}
    crm_phone = {1: "+44 100 {i}", 2: "+44 200 {i}", 3: "+1 300 {i}"}
    eco.seed(
        "contacts",
        [contact(f"Person {i}", f"p{i}@mail.example", phone=_phone(eco_phone, i)) for i in range(n)],
    )
    crm.seed(
        "contacts",
        [
            crm_contact(f"Person {i}", f"p{i}@mail.example", phoneNumber=_phone(crm_phone, i))
            for i in range(n)
        ],
    )


def _phone(table: dict[int, str], i: int) -> str | None:
    pattern = table.get(i % 4)
    return None if pattern is None else pattern.format(i=i)


def assert_phones_backfilled(eco: EcosireSandbox, crm: CrmSandbox, n: int) -> None:
    """Every pair holds one phone on both sides, and none was lost: an empty side takes the other's
    (a first link never erases), a conflict goes to the newer record (the CRM's)."""
    eco_people = by_email(eco.records("contacts"), "email")
    crm_people = by_email(crm.records("contacts"), "emailAddress")
    assert len(eco_people) == len(crm_people) == n
    expected = {0: "+1 100 {i}", 1: "+44 100 {i}", 2: "+44 200 {i}", 3: "+1 300 {i}"}
    wrong = {}
    for i in range(n):
        key = f"p{i}@mail.example"
        held = (eco_people[key]["phone"], crm_people[key]["phoneNumber"])
        if held != (expected[i % 4].format(i=i),) * 2:
            wrong[key] = held
    assert wrong == {}, f"{len(wrong)} pairs not backfilled, e.g. {list(wrong.items())[:3]}"


async def test_a_field_added_after_the_first_sync_is_backfilled_and_then_costs_nothing(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    n = 300
    seed_pairs(eco, crm, n)
    without_phone = {**env, **write_mapping(tmp_path / "without_phone.toml", phone=False)}
    first = await run_cli("sync", "--once", env=without_phone)
    assert first.code == 0, first.stderr
    assert events(first.stderr, "sync_pass")[0]["linked"] == n

    # The user maps the phone, both ways.
    with_phone = {**env, **write_mapping(tmp_path / "with_phone.toml", phone=True)}
    eco.reset_counts()
    crm.reset_counts()
    backfill = await run_cli("sync", "--once", env=with_phone)

    assert backfill.code == 0, backfill.stderr
    assert_phones_backfilled(eco, crm, n)
    summary = events(backfill.stderr, "sync_pass")[0]
    # Only the real differences were written: the CRM's phone to ECOSIRE for the CRM-only and the
    # conflicting pairs, ECOSIRE's to the CRM for the ECOSIRE-only ones; equal phones cost nothing.
    assert summary["updated"] == {"ecosire": n // 2, "crm": n // 4}
    assert summary["created"] == {}
    assert eco.requests["PATCH /contacts/{id}"] == n // 2 and crm.requests["PATCH /contacts/{id}"] == n // 4
    started = events(backfill.stderr, "backfill_started")
    assert [(e["entity"], e["fields"]) for e in started] == [("contacts", ["phone"])]
    progress = events(backfill.stderr, "backfill_progress")
    assert {e["side"] for e in progress} == {"ecosire", "crm"}
    last_read = {e["side"]: e for e in progress}
    assert all(e["read"] == e["total"] == n for e in last_read.values())
    [done] = events(backfill.stderr, "backfill_done")
    assert done["fields"] == ["phone"] and done["written"] == {"ecosire": n // 2, "crm": n // 4}

    status = orjson.loads((await run_cli("status", "--json", env=with_phone)).stdout)
    [row] = status["backfills"]
    assert (row["entity"], row["fields"], row["state"]) == ("contacts", ["phone"], "done")
    text = await run_cli("status", env=with_phone)
    assert "backfill contacts (phone): done" in text.stdout

    # The next pass has nothing left to do.
    eco.reset_counts()
    crm.reset_counts()
    quiet = await run_cli("sync", "--once", env=with_phone)
    assert quiet.code == 0, quiet.stderr
    assert events(quiet.stderr, "sync_pass")[0]["writes"] == 0
    assert events(quiet.stderr, "backfill_started") == []
    assert writes(eco, crm) == []

    # Removing the field costs no re-read: the fingerprint is stored, and nothing is written.
    dropped = await run_cli("sync", "--once", env=without_phone)
    assert dropped.code == 0 and events(dropped.stderr, "backfill_started") == []
    fields = await query(env, "SELECT field FROM mapping_field WHERE entity = 'contacts'")
    assert sorted(r["field"] for r in fields) == ["email", "name"]
    # Mapped again, it is backfilled again, and the phones, equal on both sides, cost nothing.
    again = await run_cli("sync", "--once", env=with_phone)
    assert [e["fields"] for e in events(again.stderr, "backfill_started")] == [["phone"]]
    assert events(again.stderr, "sync_pass")[0]["writes"] == 0
    assert writes(eco, crm) == []


async def test_a_backfill_cut_short_is_not_recorded_as_done_and_the_next_pass_completes_it(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    n = 80
    seed_pairs(eco, crm, n)
    without_phone = {**env, **write_mapping(tmp_path / "without_phone.toml", phone=False)}
    assert (await run_cli("sync", "--once", env=without_phone)).code == 0
    with_phone = {**env, **write_mapping(tmp_path / "with_phone.toml", phone=True)}

    # ECOSIRE refuses the key at the backfill's tenth write: the pass stops there.
    calls = itertools.count(1)
    eco.faults.add("PATCH /contacts/{id}", status=401, when=lambda body: next(calls) == 10)
    cut = await run_cli("sync", "--once", env=with_phone)

    assert cut.code == 1, cut.stderr
    assert events(cut.stderr, "backfill_done") == []
    fields = await query(env, "SELECT field FROM mapping_field WHERE entity = 'contacts'")
    assert sorted(r["field"] for r in fields) == ["email", "name"]  # the old fingerprint stands
    status = orjson.loads((await run_cli("status", "--json", env=with_phone)).stdout)
    assert [(b["entity"], b["fields"], b["state"]) for b in status["backfills"]] == [
        ("contacts", ["phone"], "in progress")
    ]
    eco_people = by_email(eco.records("contacts"), "email")
    crm_people = by_email(crm.records("contacts"), "emailAddress")
    assert sum(eco_people[k]["phone"] != crm_people[k]["phoneNumber"] for k in eco_people) > 0

    again = await run_cli("sync", "--once", env=with_phone)
    assert again.code == 0, again.stderr
    assert [e["fields"] for e in events(again.stderr, "backfill_started")] == [["phone"]]
    assert len(events(again.stderr, "backfill_done")) == 1
    assert_phones_backfilled(eco, crm, n)
    fields = await query(env, "SELECT field FROM mapping_field WHERE entity = 'contacts'")
    assert sorted(r["field"] for r in fields) == ["email", "name", "phone"]

    eco.reset_counts()
    crm.reset_counts()
    quiet = await run_cli("sync", "--once", env=with_phone)
    assert quiet.code == 0 and events(quiet.stderr, "sync_pass")[0]["writes"] == 0
    assert writes(eco, crm) == []


async def test_a_renamed_entity_or_resource_is_refused_at_start_with_the_way_out(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    eco.seed("contacts", [contact("Ana", "ana@mail.example"), contact("No Mail", None)])
    crm.seed("contacts", [crm_contact("Ben", "ben@mail.example"), crm_contact("Nor Mail", None)])
    original = {**env, **write_mapping(tmp_path / "without_phone.toml", phone=False)}
    assert (await run_cli("sync", "--once", env=original)).code == 0
    assert len(eco.records("contacts")) == len(crm.records("contacts")) == 4

    # The entity is renamed in the mapping: contacts -> people.
    renamed = {**env, **write_mapping(tmp_path / "people.toml", phone=False, name="people")}
    eco.reset_counts()
    crm.reset_counts()
    refused = await run_cli("sync", "--once", env=renamed)

    assert refused.code == 2, refused.stderr
    message = refused.stderr
    assert "'contacts'" in message and "'people'" in message
    assert "crmsyncd state rename-entity contacts people" in message
    assert "crmsyncd state forget-entity contacts" in message
    assert not eco.requests and not crm.requests  # nothing read, nothing written
    status = await run_cli("status", env=renamed)
    assert status.code == 0 and "'contacts'" in status.stdout and "no longer has" in status.stdout

    # Carried over under the new name: nothing is copied again, not even the records without email.
    moved = await run_cli("state", "rename-entity", "contacts", "people", env=renamed)
    assert moved.code == 0, moved.stderr
    synced = await run_cli("sync", "--once", env=renamed)
    assert synced.code == 0, synced.stderr
    assert events(synced.stderr, "sync_pass")[0]["writes"] == 0
    assert len(eco.records("contacts")) == len(crm.records("contacts")) == 4

    # The CRM's resource path changes under the entity: refused, naming the old and the new path.
    moved_path = {**renamed, "CRM_RESOURCE_PATHS": "contacts=/v2/contacts"}
    refused = await run_cli("sync", "--once", env=moved_path)
    assert refused.code == 2, refused.stderr
    assert "'/contacts'" in refused.stderr and "'/v2/contacts'" in refused.stderr
    assert "crmsyncd state accept-resource people" in refused.stderr
    assert not writes(eco, crm)
    accepted = await run_cli("state", "accept-resource", "people", env=moved_path)
    assert accepted.code == 0, accepted.stderr
    # Accepted: the start goes on (the sandbox has no such path, so the read fails: exit 1, not 2).
    after = await run_cli("sync", "--once", env=moved_path)
    assert after.code == 1, after.stderr
    # And the old path is now the change to accept.
    back = await run_cli("sync", "--once", env=renamed)
    assert back.code == 2 and "'/v2/contacts'" in back.stderr
    assert not writes(eco, crm)

    forgotten = await run_cli("state", "forget-entity", "people", env=renamed)
    assert forgotten.code == 0, forgotten.stderr
    rows = await query(env, "SELECT count(*) AS n FROM record_map")
    assert rows[0]["n"] == 0


async def test_resync_fixes_what_no_stamp_showed_and_a_second_resync_writes_nothing(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    eco.seed("contacts", [contact(f"Person {i}", f"p{i}@mail.example") for i in range(30)])
    assert (await run_cli("sync", "--once", env=env)).code == 0
    crm_people = by_email(crm.records("contacts"), "emailAddress")
    eco_people = by_email(eco.records("contacts"), "email")

    # Changed behind the APIs' backs: the stamps stay as they were, so no delta read sees it.
    c = crm_people["p3@mail.example"]
    crm.edit("contacts", c["id"], phoneNumber="+1 555 3", updatedAt=c["updatedAt"])
    e = eco_people["p7@mail.example"]
    eco.edit("contacts", e["id"], name="Person Seven", updatedAt=e["updatedAt"])
    missed = await run_cli("sync", "--once", env=env)
    assert events(missed.stderr, "sync_pass")[0]["writes"] == 0

    eco.reset_counts()
    crm.reset_counts()
    fixed = await run_cli("resync", "--entity", "contacts", "--json", env=env)

    assert fixed.code == 0, fixed.stderr
    doc = orjson.loads(fixed.stdout)
    assert doc["status"] == "ok" and doc["entities"] == ["contacts"]
    assert doc["updated"] == {"ecosire": 1, "crm": 1} and doc["writes"] == 2
    assert doc["read"] == {"ecosire": 30, "crm": 30}
    e3 = eco.get_record("contacts", eco_people["p3@mail.example"]["id"])
    c7 = crm.get_record("contacts", crm_people["p7@mail.example"]["id"])
    assert e3 is not None and e3["phone"] == "+1 555 3"  # phone flows CRM -> ECOSIRE
    assert c7 is not None and c7["fullName"] == "Person Seven"
    assert eco.requests["PATCH /contacts/{id}"] == 1 and crm.requests["PATCH /contacts/{id}"] == 1
    assert {e["side"] for e in events(fixed.stderr, "backfill_progress")} == {"ecosire", "crm"}

    eco.reset_counts()
    crm.reset_counts()
    again = await run_cli("resync", "--entity", "contacts", "--json", env=env)
    assert again.code == 0, again.stderr
    assert orjson.loads(again.stdout)["writes"] == 0
    assert writes(eco, crm) == []
    assert eco.requests["GET /contacts"] >= 1 and crm.requests["GET /contacts"] >= 1

    unknown = await run_cli("resync", "--entity", "tickets", env=env)
    assert unknown.code == 2 and "tickets" in unknown.stderr
