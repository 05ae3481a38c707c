"""State belongs to one pair of systems (issue 8, failure 3).

The record map links ids of one ECOSIRE with ids of one CRM. The same database pointed at another
CRM whose ids overlap (the REST CRM counts `c_000001`, `c_000002`...) took that CRM's people for
the linked ones and wrote them over the ECOSIRE contacts. The database now records which systems
it belongs to at the first start that syncs, and refuses others (exit 2) until `crmsyncd state
rebind` or a fresh database. Commands as a user runs them, against the sandboxes over real HTTP
and a real PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from crmsyncd.connectors.base import normalised_base_url
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import fresh_database, run_cli
from tests.test_sync import contact, crm_contact

# Every command that talks to the remotes; `run` is the daemon, refused before its first pass.
SYNCING = (("sync", "--once"), ("retry", "--once", "--all"), ("reconcile", "--once"), ("run",))


@pytest.fixture
async def other_database_url(server_dsn: str) -> AsyncIterator[str]:
    """A second empty database on the test server: a fresh state for the same test."""
    async with fresh_database(server_dsn) as dsn:
        yield dsn


def eco_people(n: int) -> list[dict[str, Any]]:
    return [contact(f"Person {i}", f"person{i}@mail.example", type="person", tags=["eco"]) for i in range(n)]


def strangers(n: int) -> list[dict[str, Any]]:
    return [
        crm_contact(
            f"Stranger {i}", f"stranger{i}@elsewhere.example", phoneNumber=f"+1555000{i}", labels=["x"]
        )
        for i in range(n)
    ]


async def status_of(env: dict[str, str]) -> dict[str, Any]:
    result = await run_cli("status", "--json", env=env)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = orjson.loads(result.stdout)
    return doc


async def test_a_first_run_records_both_systems(env: dict[str, str], eco: EcosireSandbox) -> None:
    before = await status_of(env)
    assert before["systems"] == {"ecosire": None, "crm": None}

    eco.seed("contacts", eco_people(2))
    assert (await run_cli("sync", "--once", env=env)).code == 0

    systems = (await status_of(env))["systems"]
    assert {side: (s["kind"], s["base_url"], s["account"]) for side, s in systems.items()} == {
        "ecosire": ("ecosire", env["ECOSIRE_API_URL"], None),
        "crm": ("rest", env["CRM_API_URL"], None),
    }
    assert all(s["recorded_at"] for s in systems.values())
    text = await run_cli("status", env=env)
    assert f"ecosire  ecosire {env['ECOSIRE_API_URL']}" in text.stdout
    assert f"crm      rest {env['CRM_API_URL']}" in text.stdout


def test_a_base_url_is_recorded_as_an_address_without_credentials_or_query() -> None:
    assert (
        normalised_base_url("HTTPS://user:secret@API.Example.COM:443/api/?key=abc#top")
        == "https://api.example.com/api"
    )
    assert normalised_base_url("http://127.0.0.1:8082/api/") == "http://127.0.0.1:8082/api"
    assert normalised_base_url("http://[::1]:80/crm/v2") == "http://[::1]/crm/v2"


async def test_another_crm_with_overlapping_ids_is_refused_until_state_rebind(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed("contacts", eco_people(4))
    assert (await run_cli("sync", "--once", env=env)).code == 0
    linked_ids = sorted(r["id"] for r in crm.records("contacts"))
    assert linked_ids == ["c_000001", "c_000002", "c_000003", "c_000004"]

    async with CrmSandbox() as other:
        # Another CRM: other people, newer edits, and the same ids as the linked contacts.
        other.seed("contacts", strangers(4))
        assert sorted(r["id"] for r in other.records("contacts")) == linked_ids
        eco_before, other_before = eco.records("contacts"), other.records("contacts")
        moved = {**env, "CRM_API_URL": other.url}

        for command in SYNCING:
            refused = await run_cli(*command, env=moved, limit=60)
            assert refused.code == 2, (command, refused.stderr)
            assert crm.url in refused.stderr and other.url in refused.stderr, refused.stderr
            assert "CRM_API_URL" in refused.stderr and "rest" in refused.stderr
            assert "crmsyncd state rebind" in refused.stderr and "fresh database" in refused.stderr
            assert crm.api_key not in refused.stderr and eco.api_key not in refused.stderr
        # Nothing was read or written anywhere: the ECOSIRE contacts are untouched.
        assert eco.records("contacts") == eco_before
        assert other.records("contacts") == other_before
        assert [k for k in other.requests if k != "rate_limited"] == []

        # Commands that stay off the remotes keep working, against the recorded state.
        assert (await status_of(moved))["systems"]["crm"]["base_url"] == crm.url
        assert (await run_cli("errors", "list", env=moved)).code == 0
        assert (await run_cli("migrate", env=moved)).code == 0

        # A real move of the same CRM to a new URL: rebind records the configured systems.
        rebind = await run_cli("state", "rebind", env=moved)
        assert rebind.code == 0, rebind.stderr
        assert crm.url in rebind.stdout and other.url in rebind.stdout
        assert "replac" in rebind.stdout
        systems = (await status_of(moved))["systems"]
        assert systems["crm"]["base_url"] == other.url
        assert systems["ecosire"]["base_url"] == env["ECOSIRE_API_URL"]
        assert (await run_cli("sync", "--once", env=moved)).code == 0
        # And the first CRM is now the foreign one.
        assert (await run_cli("sync", "--once", env=env)).code == 2


async def test_another_ecosire_is_refused_naming_its_variable(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    crm.seed("contacts", strangers(3))
    assert (await run_cli("sync", "--once", env=env)).code == 0
    async with EcosireSandbox(rate_limit_per_minute=None) as other:
        other.seed("contacts", eco_people(3))  # the same seed: the same ids as the linked ones
        assert {r["id"] for r in other.records("contacts")} == {r["id"] for r in eco.records("contacts")}
        crm_before = crm.records("contacts")
        refused = await run_cli("sync", "--once", env={**env, "ECOSIRE_API_URL": other.url})
        assert refused.code == 2
        assert eco.url in refused.stderr and other.url in refused.stderr
        assert "ECOSIRE_API_URL" in refused.stderr
        assert crm.records("contacts") == crm_before


async def test_a_fresh_database_accepts_other_systems(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, other_database_url: str
) -> None:
    eco.seed("contacts", eco_people(2))
    assert (await run_cli("sync", "--once", env=env)).code == 0
    async with CrmSandbox() as other:
        other.seed("contacts", strangers(2))
        fresh = {**env, "CRM_API_URL": other.url, "CRMSYNCD_DATABASE_URL": other_database_url}
        result = await run_cli("sync", "--once", env=fresh)
        assert result.code == 0, result.stderr
        assert (await status_of(fresh))["systems"]["crm"]["base_url"] == other.url
        # The first database still belongs to the first CRM.
        assert (await run_cli("sync", "--once", env={**env, "CRM_API_URL": other.url})).code == 2


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_crm_url_that_was_never_reached_binds_nothing(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    """A mistyped URL on the first start: nothing of that side was stored, so the corrected URL
    is recorded in its place instead of being refused."""
    eco.seed("contacts", eco_people(2))
    typo = {**env, "CRM_API_URL": f"http://127.0.0.1:{_closed_port()}/api"}
    failed = await run_cli("sync", "--once", env=typo)
    assert failed.code == 1, failed.stderr
    assert crm.records("contacts") == []

    fixed = await run_cli("sync", "--once", env=env)
    assert fixed.code == 0, fixed.stderr
    assert (await status_of(env))["systems"]["crm"]["base_url"] == crm.url
    assert sorted(r["fullName"] for r in crm.records("contacts")) == ["Person 0", "Person 1"]
