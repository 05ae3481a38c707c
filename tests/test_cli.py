"""The commands as a user runs them: subprocesses against the sandboxes and a real database."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import run_cli


def _people(n: int) -> list[dict[str, object]]:
    return [{"name": f"Person {i}", "email": f"person{i}@mail.example"} for i in range(n)]


async def test_sync_once_then_status_and_a_clean_errors_list(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed("contacts", _people(3))
    result = await run_cli("sync", "--once", env=env)
    assert result.code == 0, result.stderr
    assert len(crm.records("contacts")) == 3
    summary = [json.loads(line) for line in result.stderr.splitlines() if '"sync_pass"' in line]
    assert summary and summary[0]["created"] == {"crm": 3} and summary[0]["status"] == "ok"
    # Every line a pass writes carries its run and job (bound once, not passed by each caller).
    during = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert summary[0]["job"] == "sync" and summary[0]["run"] == 1
    assert all(e.get("run") == 1 for e in during if e.get("event") in ("sync_pass", "doubts_resolved"))

    status = await run_cli("status", "--json", env=env)
    doc = orjson.loads(status.stdout)
    assert {(p["entity"], p["linked"]) for p in doc["pairs"]} == {("contacts", 3)}
    assert doc["last_pass"]["status"] == "ok"
    assert {(c["entity"], c["side"]) for c in doc["cursors"]} == {
        (entity, side) for entity in ("contacts", "deals") for side in ("ecosire", "crm")
    }
    # Cursors sit on record stamps: ECOSIRE's contacts were read; the CRM's copies (ours) and the
    # deals (none) have given no stamp yet.
    placed = {(c["entity"], c["side"]) for c in doc["cursors"] if c["updated_at"] is not None}
    assert placed == {("contacts", "ecosire")}
    listing = await run_cli("errors", "list", env=env)
    assert listing.code == 0 and "the retry queue is empty" in listing.stdout


async def test_a_transient_503_is_parked_then_retried_to_success(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed("contacts", _people(4))
    crm.faults.add("POST /contacts", status=503, times=1, when=lambda b: b.get("fullName") == "Person 2")

    first = await run_cli("sync", "--once", env=env)
    assert first.code == 0, first.stderr  # parked records do not fail the pass
    assert sorted(r["fullName"] for r in crm.records("contacts")) == ["Person 0", "Person 1", "Person 3"]
    rows = orjson.loads((await run_cli("errors", "list", "--json", env=env)).stdout)
    assert [(r["side"], r["error_class"], r["status"], r["attempts"]) for r in rows] == [
        ("ecosire", "transient", "pending", 1)
    ]
    assert "503" in rows[0]["reason"]

    retried = await run_cli("retry", "--once", "--all", env=env)
    assert retried.code == 0, retried.stderr
    assert sorted(r["fullName"] for r in crm.records("contacts")) == [f"Person {i}" for i in range(4)]
    assert orjson.loads((await run_cli("errors", "list", "--json", env=env)).stdout) == []
    # And the next pass has nothing left to do.
    again = await run_cli("sync", "--once", env=env)
    line = next(json.loads(x) for x in again.stderr.splitlines() if '"sync_pass"' in x)
    assert line["writes"] == 0


async def test_dead_after_the_attempt_limit_then_replayed(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    env = {**env, "CRMSYNCD_MAX_ATTEMPTS": "2"}
    eco.seed("contacts", _people(2))
    crm.faults.add("POST /contacts", status=500, times=2, when=lambda b: b.get("fullName") == "Person 1")

    assert (await run_cli("sync", "--once", env=env)).code == 0
    assert (await run_cli("retry", "--once", "--all", env=env)).code == 0
    dead = orjson.loads((await run_cli("errors", "list", "--dead", "--json", env=env)).stdout)
    assert [(r["status"], r["attempts"]) for r in dead] == [("dead", 2)]
    # A dead row is not retried by the retry job.
    assert (await run_cli("retry", "--once", "--all", env=env)).code == 0
    assert [r["fullName"] for r in crm.records("contacts")] == ["Person 0"]

    replay = await run_cli("errors", "replay", str(dead[0]["id"]), env=env)
    assert replay.code == 0, replay.stderr
    assert "1 resolved" in replay.stdout
    assert sorted(r["fullName"] for r in crm.records("contacts")) == ["Person 0", "Person 1"]
    assert orjson.loads((await run_cli("errors", "list", "--json", env=env)).stdout) == []


async def test_a_bad_mapping_file_exits_2_naming_file_key_and_reason(
    env: dict[str, str], tmp_path: Path
) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        '[entities.contacts]\nmatch_key = "email"\n'
        '[entities.contacts.fields.email]\necosire = "email"\ncrm = "emailAddress"\n'
        'direction = "sideways"\nrule = "ecosire_wins"\n'
    )
    result = await run_cli(
        "sync", "--once", env={**env, "CRMSYNCD_MAPPING": str(mapping), "CRMSYNCD_ENTITIES": "contacts"}
    )
    assert result.code == 2
    assert str(mapping) in result.stderr
    assert "entities.contacts.fields.email.direction" in result.stderr
    assert "expected one of both, ecosire_to_crm, crm_to_ecosire, got 'sideways'" in result.stderr

    mapping.write_text("[entities.contacts\n")
    broken = await run_cli("sync", "--once", env={**env, "CRMSYNCD_MAPPING": str(mapping)})
    assert broken.code == 2 and "invalid TOML" in broken.stderr and "line 1" in broken.stderr


async def test_missing_and_malformed_variables_exit_2_by_name(env: dict[str, str]) -> None:
    without_key = {k: v for k, v in env.items() if k != "ECOSIRE_API_KEY"}
    result = await run_cli("sync", "--once", env=without_key)
    assert result.code == 2
    assert "ECOSIRE_API_KEY: required" in result.stderr

    bad = await run_cli(
        "sync", "--once", env={**env, "CRMSYNCD_SYNC_INTERVAL": "soon", "CRMSYNCD_CRM": "hubspot"}
    )
    assert bad.code == 2
    assert "CRMSYNCD_SYNC_INTERVAL" in bad.stderr and "'soon'" in bad.stderr


async def test_sync_once_against_a_crm_that_answers_401_exits_1_and_says_so(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed("contacts", _people(2))
    result = await run_cli("sync", "--once", env={**env, "CRM_API_KEY": "wrong-key-123"})
    assert result.code == 1
    assert (
        "401" in result.stderr and "the crm API refused the credentials: check CRM_API_KEY" in result.stderr
    )
    assert "wrong-key-123" not in result.stderr + result.stdout
    assert crm.records("contacts") == []
    # Nothing was parked: the records sync once the key is right.
    assert orjson.loads((await run_cli("errors", "list", "--json", env=env)).stdout) == []
    assert (await run_cli("sync", "--once", env=env)).code == 0
    assert len(crm.records("contacts")) == 2


async def test_a_refused_ecosire_key_names_its_variable_and_parks_nothing(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    crm.seed("contacts", [{"fullName": "Crm One", "emailAddress": "one@mail.example"}])
    bad_key = "eco_live_notthekey000000000000"
    result = await run_cli("sync", "--once", env={**env, "ECOSIRE_API_KEY": bad_key})
    assert result.code == 1
    assert "the ecosire API refused the credentials: check ECOSIRE_API_KEY" in result.stderr + result.stdout
    assert bad_key not in result.stderr + result.stdout
    assert eco.records("contacts") == []
    assert orjson.loads((await run_cli("errors", "list", "--json", env=env)).stdout) == []


async def test_demo_runs_to_its_summary(env: dict[str, str]) -> None:
    result = await run_cli("demo", "--contacts", "120", env={"CRMSYNCD_DATA_DIR": env["CRMSYNCD_DATA_DIR"]})
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "converged after" in out and "the last wrote nothing" in out
    assert "linked by email, not duplicated:" in out
    assert "email      ecosire_wins" in out
    assert "ops@intranet" in out or "email must be an email" in out
    assert "requests per synced record" in out
