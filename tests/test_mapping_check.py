"""Field names checked against the APIs (issue 8, failure 2).

A mapped field the API never returns (a misspelling such as `phoneNumbr`) is reported at the first
pass: a log line, the pass summary and `crmsyncd status`; `crmsyncd mapping check` reads a page of
each side and reports unknown fields, wrong types and fields mapped twice. Against both sandbox
APIs over real HTTP, state in real PostgreSQL, the commands run as a user runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import TickingClock, by_email, run_cli
from tests.test_sync import contact, crm_contact

DEFAULT = resources.files("crmsyncd.domain").joinpath("default_mapping.toml").read_text("utf-8")
# Phone both ways under last_updated_wins, to a CRM field that does not exist: before the check,
# the first sync erased the phone of every ECOSIRE contact linked to a (newer) CRM contact.
MISSPELLED = DEFAULT.replace(
    'crm = "phoneNumber"\ndirection = "crm_to_ecosire"\nrule = "crm_wins"',
    'crm = "phoneNumbr"\ndirection = "both"\nrule = "last_updated_wins"',
)
assert 'crm = "phoneNumbr"' in MISSPELLED


def mapping_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    return str(path)


def log_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def seed_people(eco: EcosireSandbox, crm: CrmSandbox, n_eco: int, n_crm: int) -> None:
    """`n_eco` ECOSIRE contacts with a phone; the CRM holds the first `n_crm` of them, edited later
    and without a phone, as a CRM that never had one would."""
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 1, tzinfo=UTC))
    eco.seed(
        "contacts",
        [
            contact(f"Person {i}", f"person{i}@mail.example", phone=f"+1 555 {i:04d}", tags=["eco"])
            for i in range(n_eco)
        ],
    )
    crm.seed(
        "contacts", [crm_contact(f"Person {i}", f"person{i}@mail.example", labels=[]) for i in range(n_crm)]
    )


async def test_a_misspelled_crm_field_is_reported_at_the_first_pass_and_erases_no_phone(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    seed_people(eco, crm, 200, 100)
    env = {**env, "CRMSYNCD_MAPPING": mapping_file(tmp_path, MISSPELLED)}

    first = await run_cli("sync", "--once", env=env)

    assert first.code == 0, first.stderr
    lines = log_lines(first.stderr)
    warnings = [e for e in lines if e.get("event") == "mapping_field_unseen"]
    assert [(w["entity"], w["side"], w["field"], w["level"]) for w in warnings] == [
        ("contacts", "crm", "phoneNumbr", "warning")
    ]
    assert "none of the 100 contacts records read" in warnings[0]["detail"]
    assert "misspell" in warnings[0]["detail"]
    summary = next(e for e in lines if e.get("event") == "sync_pass")
    assert summary["unseen_fields"] == [
        {"entity": "contacts", "side": "crm", "field": "phoneNumbr", "sampled": 100}
    ]
    # Not a single ECOSIRE phone was erased by the CRM's missing field.
    phones = {r["email"]: r["phone"] for r in eco.records("contacts")}
    assert phones == {f"person{i}@mail.example": f"+1 555 {i:04d}" for i in range(200)}

    status = await run_cli("status", "--json", env=env)
    assert status.code == 0, status.stderr
    checks = {(c["entity"], c["side"]): c for c in orjson.loads(status.stdout)["field_checks"]}
    assert checks[("contacts", "crm")]["unseen"] == ["phoneNumbr"]
    assert checks[("contacts", "crm")]["sampled"] == 100
    assert checks[("contacts", "ecosire")]["unseen"] == []
    assert checks[("contacts", "ecosire")]["sampled"] == 100  # the first 100 of 200
    text = await run_cli("status", env=env)
    assert "contacts crm: 'phoneNumbr' was in none of the 100 records read" in text.stdout

    # Checked once per entity and side: the next pass (a delta read) does not check again.
    second = await run_cli("sync", "--once", env=env)
    assert second.code == 0, second.stderr
    assert not [e for e in log_lines(second.stderr) if e.get("event") == "mapping_field_unseen"]
    status = await run_cli("status", "--json", env=env)
    assert [c["unseen"] for c in orjson.loads(status.stdout)["field_checks"] if c["side"] == "crm"] == [
        ["phoneNumbr"]
    ]


async def test_a_mapping_change_is_checked_again_at_the_next_pass(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    seed_people(eco, crm, 30, 30)
    clean = await run_cli("sync", "--once", env=env)
    assert clean.code == 0, clean.stderr
    assert not [e for e in log_lines(clean.stderr) if e.get("event") == "mapping_field_unseen"]

    # The user now maps phone to a field the CRM does not have. The pass's delta read holds only
    # recent changes: the check reads the start of the list itself.
    default_env = env
    env = {**env, "CRMSYNCD_MAPPING": mapping_file(tmp_path, MISSPELLED)}
    changed = await run_cli("sync", "--once", env=env)
    assert changed.code == 0, changed.stderr
    warnings = [e for e in log_lines(changed.stderr) if e.get("event") == "mapping_field_unseen"]
    assert [(w["entity"], w["side"], w["field"]) for w in warnings] == [("contacts", "crm", "phoneNumbr")]
    assert "none of the 30 contacts records read" in warnings[0]["detail"]

    # Fixed again: checked again, and status no longer warns.
    fixed = await run_cli("sync", "--once", env=default_env)
    assert fixed.code == 0, fixed.stderr
    assert not [e for e in log_lines(fixed.stderr) if e.get("event") == "mapping_field_unseen"]
    status = await run_cli("status", "--json", env=default_env)
    assert status.code == 0, status.stderr
    assert all(c["unseen"] == [] for c in orjson.loads(status.stdout)["field_checks"])


async def test_mapping_check_names_an_unknown_field_and_exits_1(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    seed_people(eco, crm, 5, 3)
    env = {**env, "CRMSYNCD_MAPPING": mapping_file(tmp_path, MISSPELLED)}

    result = await run_cli("mapping", "check", env=env)

    assert result.code == 1, result.stdout + result.stderr
    assert "contacts crm: unknown field 'phoneNumbr' (mapped as phone)" in result.stdout
    assert "in none of the 3 records read" in result.stdout
    assert "deals    crm      no records: nothing to check" in result.stdout
    # One list request per entity and side, and nothing written.
    assert crm.requests == {"GET /contacts": 1, "GET /deals": 1}
    assert eco.requests == {"GET /contacts": 1, "GET /deals": 1}

    as_json = await run_cli("mapping", "check", "--json", env=env)
    assert as_json.code == 1
    doc = orjson.loads(as_json.stdout)
    assert doc["ok"] is False
    assert [(p["kind"], p["entity"], p["side"], p["field"]) for p in doc["problems"]] == [
        ("unknown_field", "contacts", "crm", "phoneNumbr")
    ]
    assert {(s["entity"], s["side"]): s["records"] for s in doc["sides"]} == {
        ("contacts", "ecosire"): 5,
        ("contacts", "crm"): 3,
        ("deals", "ecosire"): 0,
        ("deals", "crm"): 0,
    }


async def test_mapping_check_of_the_default_mapping_is_clean(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    seed_people(eco, crm, 4, 2)
    [person] = eco.records("contacts")[:1]
    eco.seed(
        "deals",
        [{"title": "Big", "amount": 125050, "currency": "eur", "stage": "won", "contactId": person["id"]}],
    )

    result = await run_cli("mapping", "check", env=env)

    assert result.code == 0, result.stdout + result.stderr
    assert "no problem found" in result.stdout
    assert "deals    crm      no records: nothing to check" in result.stdout
    doc = orjson.loads((await run_cli("mapping", "check", "--json", env=env)).stdout)
    assert doc["ok"] is True and doc["problems"] == []


async def test_mapping_check_reports_a_field_mapped_twice(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    seed_people(eco, crm, 3, 3)
    twice = DEFAULT.replace(
        "[entities.contacts.fields.phone]",
        '[entities.contacts.fields.website]\necosire = "website"\ncrm = "fullName"\n'
        'direction = "ecosire_to_crm"\nrule = "ecosire_wins"\n\n[entities.contacts.fields.phone]',
    )
    env = {**env, "CRMSYNCD_MAPPING": mapping_file(tmp_path, twice)}

    result = await run_cli("mapping", "check", "--json", env=env)

    assert result.code == 1, result.stdout + result.stderr
    problems = orjson.loads(result.stdout)["problems"]
    assert [(p["kind"], p["entity"], p["side"], p["field"]) for p in problems] == [
        ("mapped_twice", "contacts", "crm", "fullName")
    ]
    assert "by name and website" in problems[0]["message"]
    # A sync refuses such a mapping at start, as before.
    refused = await run_cli("sync", "--once", env=env)
    assert refused.code == 2 and "crm field 'fullName' mapped twice" in refused.stderr


async def test_mapping_check_reports_wrong_types(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    seed_people(eco, crm, 4, 4)
    people = by_email(crm.records("contacts"), "emailAddress")
    # Values the CRM's own API would refuse, planted through the sandbox's admin interface.
    crm.edit("contacts", people["person1@mail.example"]["id"], labels="vip")
    crm.edit("contacts", people["person2@mail.example"]["id"], phoneNumber=5550102)
    eco.seed("deals", [{"title": "Odd", "amount": 99.5, "currency": "eur"}])

    result = await run_cli("mapping", "check", env=env)

    assert result.code == 1, result.stdout + result.stderr
    doc = orjson.loads((await run_cli("mapping", "check", "--json", env=env)).stdout)
    found = {(p["entity"], p["side"], p["field"]): p for p in doc["problems"]}
    assert set(found) == {
        ("contacts", "crm", "labels"),
        ("contacts", "crm", "phoneNumber"),
        ("deals", "ecosire", "amount"),
    }
    assert all(p["kind"] == "wrong_type" for p in found.values())
    labels = found[("contacts", "crm", "labels")]["message"]
    assert "expected a list of strings, got a string in 1 of 4 records" in labels
    assert people["person1@mail.example"]["id"] in labels
    phone = found[("contacts", "crm", "phoneNumber")]["message"]
    assert "expected a string, got a number in 1 of 4 records" in phone
    amount = found[("deals", "ecosire", "amount")]["message"]
    assert "expected integer minor units, got a number in 1 of 1 records" in amount
    assert "contacts crm: wrong type of 'labels'" in result.stdout


async def test_mapping_check_exits_2_on_bad_configuration(env: dict[str, str], tmp_path: Path) -> None:
    without_key = {k: v for k, v in env.items() if k != "CRM_API_KEY"}
    result = await run_cli("mapping", "check", env=without_key)
    assert result.code == 2 and "CRM_API_KEY" in result.stderr
    broken = await run_cli(
        "mapping", "check", env={**env, "CRMSYNCD_MAPPING": mapping_file(tmp_path, "[entities.contacts\n")}
    )
    assert broken.code == 2 and "invalid TOML" in broken.stderr
