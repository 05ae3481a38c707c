"""Immutable fields end to end: the contact's email is ECOSIRE's ("ECOSIRE wins (immutable)").

Once a pair is linked, a CRM user's edit of the email is written back, counted as `reverted`, and
costs nothing afterwards; ECOSIRE's own changes and new CRM contacts flow as before. Against both
sandbox APIs over real HTTP, state in real PostgreSQL, the commands run as a user runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import orjson

from crmsyncd.app import App
from crmsyncd.domain.canonical import canonicalize
from crmsyncd.domain.records import Side
from crmsyncd.engine.passes import PassReport
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import TickingClock, run_cli
from tests.test_sync import contact, crm_contact


def email_of(server: EcosireSandbox | CrmSandbox, record_id: str) -> str:
    record = server.get_record("contacts", record_id)
    assert record is not None, f"contact {record_id} is gone"
    return str(record["email" if isinstance(server, EcosireSandbox) else "emailAddress"])


async def quiet_pass(app: App, eco: EcosireSandbox, crm: CrmSandbox) -> PassReport:
    """A pass after convergence: it writes nothing on either API."""
    eco.reset_counts()
    crm.reset_counts()
    report = await app.engine.sync_pass(app.entities)
    assert report.status == "ok"
    assert report.counts.writes == 0 and report.counts.reverted == {}
    assert [k for k in (*eco.requests, *crm.requests) if not k.startswith("GET")] == []
    return report


async def assert_snapshots_are_what_both_sides_hold(app: App, eco: EcosireSandbox, crm: CrmSandbox) -> None:
    # What makes our write-back an echo, not a user's edit, when it is read again.
    contacts = app.mapping.entity("contacts")
    rows = await app.pool.fetch("SELECT ecosire_id, crm_id, ecosire_snapshot, crm_snapshot FROM record_map")
    assert rows
    for row in rows:
        e, c = eco.get_record("contacts", row["ecosire_id"]), crm.get_record("contacts", row["crm_id"])
        assert e is not None and c is not None
        assert row["ecosire_snapshot"] == canonicalize(contacts, Side.ECOSIRE, e, {})
        assert row["crm_snapshot"] == canonicalize(contacts, Side.CRM, c, {})


async def test_a_crm_edit_of_a_linked_contacts_email_is_reverted_and_counted(
    app: App, env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    [e] = eco.seed("contacts", [contact("Ana Silva", "Ana.Silva@mail.example", type="person")])
    [c] = crm.seed("contacts", [crm_contact("Ana Silva", "  ana.silva@MAIL.example ")])
    linked = await app.engine.sync_pass(app.entities)
    # Linking is the first merge: the CRM takes ECOSIRE's spelling, as any ecosire_wins field would.
    assert linked.counts.linked == 1 and linked.counts.reverted == {}
    assert email_of(crm, c["id"]) == "Ana.Silva@mail.example"

    # A CRM user changes the email, and the name with it.
    crm.edit("contacts", c["id"], emailAddress="ana.personal@mail.example", fullName="Ana S.")
    result = await run_cli("sync", "--once", env=env)

    assert result.code == 0, result.stderr
    summary = next(json.loads(x) for x in result.stderr.splitlines() if '"sync_pass"' in x)
    assert summary["reverted"] == {"crm": 1}
    assert summary["updated"] == {"crm": 1, "ecosire": 1}
    e2, c2 = eco.get_record("contacts", e["id"]), crm.get_record("contacts", c["id"])
    assert e2 is not None and c2 is not None
    assert e2["email"] == c2["emailAddress"] == "Ana.Silva@mail.example"
    assert e2["name"] == c2["fullName"] == "Ana S."  # the rest of the edit flows as usual
    assert len(eco.records("contacts")) == len(crm.records("contacts")) == 1
    await assert_snapshots_are_what_both_sides_hold(app, eco, crm)

    status = await run_cli("status", "--json", env=env)
    assert status.code == 0, status.stderr
    assert orjson.loads(status.stdout)["last_pass"]["counts"]["reverted"] == {"crm": 1}
    text = await run_cli("status", env=env)
    assert "of which reverted crm 1" in text.stdout

    await quiet_pass(app, eco, crm)
    assert email_of(crm, c["id"]) == "Ana.Silva@mail.example"


async def test_an_ecosire_change_of_the_email_still_flows_to_the_crm(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    [e] = eco.seed("contacts", [contact("Ben Kim", "ben@mail.example", type="company")])
    await app.engine.sync_pass(app.entities)
    [c] = crm.records("contacts")

    eco.edit("contacts", e["id"], email="ben.kim@work.example")
    report = await app.engine.sync_pass(app.entities)

    assert report.counts.updated == {"crm": 1} and report.counts.reverted == {}
    assert email_of(crm, c["id"]) == "ben.kim@work.example"
    await assert_snapshots_are_what_both_sides_hold(app, eco, crm)
    await quiet_pass(app, eco, crm)


async def test_a_contact_new_on_the_crm_is_created_in_ecosire_with_its_email(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    [c] = crm.seed("contacts", [crm_contact("Cleo Park", "Cleo.Park@mail.example")])

    created = await app.engine.sync_pass(app.entities)

    assert created.counts.created == {"ecosire": 1} and created.counts.reverted == {}
    [e] = eco.records("contacts")
    assert e["email"] == email_of(crm, c["id"]) == "Cleo.Park@mail.example"
    await quiet_pass(app, eco, crm)

    # From then on the address the CRM brought is ECOSIRE's, and the CRM cannot change it.
    crm.edit("contacts", c["id"], emailAddress="cleo@elsewhere.example")
    reverted = await app.engine.sync_pass(app.entities)
    assert reverted.counts.reverted == {"crm": 1} and reverted.counts.updated == {"crm": 1}
    assert email_of(crm, c["id"]) == "Cleo.Park@mail.example"
    assert email_of(eco, e["id"]) == "Cleo.Park@mail.example"
    await quiet_pass(app, eco, crm)


async def test_an_immutable_field_that_cannot_be_reverted_stops_the_start_with_exit_2(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    mapping = tmp_path / "mapping.toml"
    head = (
        '[entities.contacts]\nmatch_key = "email"\n'
        '[entities.contacts.fields.email]\necosire = "email"\ncrm = "emailAddress"\nimmutable = true\n'
    )
    cases = [
        # ECOSIRE's value must be written back to the CRM, but nothing flows to the CRM.
        (
            'direction = "crm_to_ecosire"\nrule = "ecosire_wins"\n',
            "cannot revert an edit on crm: nothing flows to crm",
        ),
        # No side is named the winner: nothing says whose value is the identity.
        (
            'direction = "both"\nrule = "last_updated_wins"\n',
            "an immutable field needs rule ecosire_wins or crm_wins, not last_updated_wins",
        ),
    ]
    for tail, reason in cases:
        mapping.write_text(head + tail)
        result = await run_cli(
            "sync", "--once", env={**env, "CRMSYNCD_MAPPING": str(mapping), "CRMSYNCD_ENTITIES": "contacts"}
        )
        assert result.code == 2, result.stderr
        assert f"{mapping}: entities.contacts.fields.email.immutable: " in result.stderr
        assert reason in result.stderr
    # Refused before anything was read or written.
    assert not eco.requests and not crm.requests
