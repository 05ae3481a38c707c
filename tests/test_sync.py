"""End to end: the engine against both sandbox APIs over real HTTP, state in real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from crmsyncd.app import App
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import TickingClock, by_email


def contact(name: str, email: str | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "email": email, **extra}


def crm_contact(name: str, email: str | None, **extra: Any) -> dict[str, Any]:
    return {"fullName": name, "emailAddress": email, **extra}


async def test_initial_sync_links_shared_emails_and_creates_the_rest(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed(
        "contacts",
        [
            contact("Ana Silva", "ana@mail.example", type="person", tags=["vip"]),
            contact("Ben Kim", "ben@mail.example", type="company"),
            contact("Only Eco", "only.eco@mail.example", type="person"),
        ],
    )
    crm.seed(
        "contacts",
        [
            crm_contact("Ana Silva", "  ANA@Mail.Example ", labels=["newsletter"], phoneNumber="+1 555"),
            crm_contact("Ben Kim", "Ben@mail.example"),
            crm_contact("Only Crm", "only.crm@mail.example", labels=["lead"]),
        ],
    )

    report = await app.engine.sync_pass(app.entities)

    assert report.status == "ok"
    assert report.counts.linked == 2
    assert report.counts.created == {"crm": 1, "ecosire": 1}
    eco_people = by_email(eco.records("contacts"), "email")
    crm_people = by_email(crm.records("contacts"), "emailAddress")
    assert (
        sorted(eco_people)
        == sorted(crm_people)
        == ["ana@mail.example", "ben@mail.example", "only.crm@mail.example", "only.eco@mail.example"]
    )
    # Email: ECOSIRE wins; tags: union; phone flows CRM -> ECOSIRE; type ECOSIRE -> CRM.
    assert crm_people["ana@mail.example"]["emailAddress"] == "ana@mail.example"
    assert sorted(eco_people["ana@mail.example"]["tags"]) == ["newsletter", "vip"]
    assert sorted(crm_people["ana@mail.example"]["labels"]) == ["newsletter", "vip"]
    assert eco_people["ana@mail.example"]["phone"] == "+1 555"
    assert crm_people["ben@mail.example"]["accountType"] == "company"
    assert eco_people["only.crm@mail.example"]["tags"] == ["lead"]

    rows = await app.pool.fetch(
        "SELECT ecosire_id, crm_id, ecosire_pending, crm_pending FROM record_map WHERE entity = 'contacts'"
    )
    assert len(rows) == 4
    assert all(r["ecosire_id"] and r["crm_id"] for r in rows)
    assert all(r["ecosire_pending"] is None and r["crm_pending"] is None for r in rows)
    cursors = await app.pool.fetch("SELECT entity, side, updated_at FROM sync_cursor ORDER BY entity, side")
    # Both sides of contacts were read; deals (none yet) have no stamp to place a cursor on.
    assert [(c["entity"], c["side"]) for c in cursors] == [("contacts", "crm"), ("contacts", "ecosire")]
    runs = await app.pool.fetch("SELECT status, counts FROM sync_run")
    assert [r["status"] for r in runs] == ["ok"]
    assert runs[0]["counts"]["linked"] == 2


async def test_a_second_pass_writes_nothing(app: App, eco: EcosireSandbox, crm: CrmSandbox) -> None:
    eco.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    eco.seed("contacts", [contact(f"Eco {i}", f"eco{i}@mail.example", tags=["a"]) for i in range(150)])
    crm.seed("contacts", [crm_contact(f"Crm {i}", f"crm{i}@mail.example") for i in range(120)])
    first = await app.engine.sync_pass(app.entities)
    assert first.counts.created == {"crm": 150, "ecosire": 120}
    # ECOSIRE gives a new contact type "person"; type flows ECOSIRE -> CRM, so the CRM hears it.
    assert first.counts.updated == {"crm": 120}

    passes = [await app.engine.sync_pass(app.entities) for _ in range(2)]
    eco.reset_counts()
    crm.reset_counts()
    quiet = await app.engine.sync_pass(app.entities)

    assert all(p.counts.writes == 0 for p in passes)
    assert quiet.counts.writes == 0
    writes = [k for k in (*eco.requests, *crm.requests) if not k.startswith("GET")]
    assert writes == []
    # One list request per entity and side.
    assert eco.requests == {"GET /contacts": 1, "GET /deals": 1}
    assert crm.requests == {"GET /contacts": 1, "GET /deals": 1}
    assert len(eco.records("contacts")) == len(crm.records("contacts")) == 270


async def test_every_rule_under_concurrent_edits(app: App, eco: EcosireSandbox, crm: CrmSandbox) -> None:
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))  # one time line
    [e] = eco.seed(
        "contacts",
        [
            contact(
                "Old Name",
                "rules@mail.example",
                type="person",
                phone="+1 000",
                tags=["keep", "drop-on-eco", "drop-on-crm"],
            )
        ],
    )
    await app.engine.sync_pass(app.entities)
    [c] = crm.records("contacts")
    assert sorted(c["labels"]) == ["drop-on-crm", "drop-on-eco", "keep"]

    # Both sides edit every field between two passes; the CRM edits last.
    eco.edit(
        "contacts",
        e["id"],
        name="Eco Name",
        email="Eco.Rules@mail.example",
        phone="+1 111",
        type="company",
        tags=["keep", "drop-on-crm", "added-on-eco"],
    )
    crm.edit(
        "contacts",
        c["id"],
        fullName="Crm Name",
        emailAddress="crm.rules@mail.example",
        phoneNumber="+1 222",
        accountType="person",
        labels=["keep", "drop-on-eco", "added-on-crm"],
    )
    report = await app.engine.sync_pass(app.entities)
    await app.engine.sync_pass(app.entities)

    e2 = eco.get_record("contacts", e["id"])
    c2 = crm.get_record("contacts", c["id"])
    assert e2 is not None and c2 is not None
    # name: last updated wins (the CRM edited last)
    assert e2["name"] == c2["fullName"] == "Crm Name"
    # email: ECOSIRE wins
    assert e2["email"] == c2["emailAddress"] == "Eco.Rules@mail.example"
    # phone: CRM -> ECOSIRE only
    assert e2["phone"] == c2["phoneNumber"] == "+1 222"
    # type: ECOSIRE -> CRM only
    assert e2["type"] == c2["accountType"] == "company"
    # tags: union, removals on either side honoured
    assert sorted(e2["tags"]) == sorted(c2["labels"]) == ["added-on-crm", "added-on-eco", "keep"]
    assert report.counts.conflicts["name:last_updated_wins:crm"] == 1
    assert report.counts.conflicts["email:ecosire_wins:ecosire"] == 1
    assert report.counts.conflicts["tags:union:merged"] == 1
    assert len(eco.records("contacts")) == len(crm.records("contacts")) == 1


async def test_concurrent_edits_of_different_fields_both_survive(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    [e] = eco.seed("contacts", [contact("Same", "both@mail.example", tags=["x"])])
    await app.engine.sync_pass(app.entities)
    [c] = crm.records("contacts")
    eco.edit("contacts", e["id"], name="Renamed in ECOSIRE")
    crm.edit("contacts", c["id"], labels=["x", "y"])
    await app.engine.sync_pass(app.entities)
    e2, c2 = eco.get_record("contacts", e["id"]), crm.get_record("contacts", c["id"])
    assert e2 is not None and c2 is not None
    assert e2["name"] == c2["fullName"] == "Renamed in ECOSIRE"
    assert sorted(e2["tags"]) == sorted(c2["labels"]) == ["x", "y"]


async def test_deals_follow_their_contacts(app: App, eco: EcosireSandbox, crm: CrmSandbox) -> None:
    [ec] = eco.seed("contacts", [contact("Deal Owner", "owner@mail.example")])
    [cc] = crm.seed("contacts", [crm_contact("Crm Owner", "crm.owner@mail.example")])
    eco.seed(
        "deals",
        [{"title": "Renewal", "amount": 123456, "currency": "eur", "stage": "won", "contactId": ec["id"]}],
    )
    crm.seed(
        "deals",
        [{"title": "Upsell", "amount": 99.5, "currency": "USD", "stage": "lead", "contactId": cc["id"]}],
    )

    await app.engine.sync_pass(app.entities)

    crm_deals = {d["title"]: d for d in crm.records("deals")}
    eco_deals = {d["title"]: d for d in eco.records("deals")}
    assert sorted(crm_deals) == sorted(eco_deals) == ["Renewal", "Upsell"]
    crm_owner_of_renewal = crm.get_record("contacts", crm_deals["Renewal"]["contactId"])
    assert crm_owner_of_renewal is not None
    assert crm_owner_of_renewal["emailAddress"] == "owner@mail.example"
    assert crm_deals["Renewal"]["amount"] == 1234.56 and crm_deals["Renewal"]["currency"] == "EUR"
    eco_owner_of_upsell = eco.get_record("contacts", eco_deals["Upsell"]["contactId"])
    assert eco_owner_of_upsell is not None
    assert eco_owner_of_upsell["email"] == "crm.owner@mail.example"
    assert eco_deals["Upsell"]["amount"] == 9950 and eco_deals["Upsell"]["currency"] == "usd"

    # Moving a deal to another contact on one side moves it on the other.
    crm.edit("deals", crm_deals["Renewal"]["id"], contactId=cc["id"], amount=1300)
    await app.engine.sync_pass(app.entities)
    renewal = eco.get_record("deals", eco_deals["Renewal"]["id"])
    assert renewal is not None
    assert renewal["contactId"] == eco_deals["Upsell"]["contactId"]
    assert renewal["amount"] == 130000
    quiet = await app.engine.sync_pass(app.entities)
    assert quiet.counts.writes == 0


async def test_a_rejected_record_is_parked_with_the_api_message_while_the_rest_sync(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    crm.seed(
        "contacts",
        [
            crm_contact("Ops Desk", "ops@intranet"),  # ECOSIRE wants a dot in the domain
            *[crm_contact(f"Fine {i}", f"fine{i}@mail.example") for i in range(5)],
        ],
    )
    report = await app.engine.sync_pass(app.entities)

    assert report.status == "ok"
    assert sorted(r["email"] for r in eco.records("contacts")) == [f"fine{i}@mail.example" for i in range(5)]
    errors = await app.pool.fetch(
        "SELECT side, record_id, reason, error_class, status, payload FROM sync_error"
    )
    assert len(errors) == 1
    [row] = errors
    ops = next(r for r in crm.records("contacts") if r["emailAddress"] == "ops@intranet")
    assert (row["side"], row["record_id"], row["status"]) == ("crm", ops["id"], "pending")
    assert row["error_class"] == "rejected"
    assert "email" in row["reason"] and "422" in row["reason"]
    assert row["payload"]["emailAddress"] == "ops@intranet"
    # Parked, it is not retried by the next pass, and nothing else is disturbed.
    again = await app.engine.sync_pass(app.entities)
    assert again.counts.writes == 0 and sum(again.counts.parked.values()) == 0
