"""A first link never erases, a missing field never writes, and emails are written as they match.

When a pair has no base yet (linked by its match key, or just created), a field empty on one side
(null, "", []) and set on the other takes the set value, whatever its rule: the rule only decides
between two values. A field missing from a record (the key absent, as an API that omits a field or
a misspelled field name gives) is unknown, never empty: it never overwrites the other side, with
or without a base. Properties over the pure merge for every rule and direction; then the failures
of issue 8 reproduced against both sandbox APIs over real HTTP, state in real PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crmsyncd.app import App, open_app
from crmsyncd.config import Settings
from crmsyncd.domain.canonical import canonicalize, normalise_key, to_remote
from crmsyncd.domain.mapping import Direction, FieldSpec, Rule, load_mapping, parse_mapping
from crmsyncd.domain.merge import MergeResult, SideView, merge
from crmsyncd.domain.records import Side
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import TickingClock, run_cli

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


class _Missing:
    """The test's marker for a key absent from a record (not the merge's own sentinel)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def _every_field() -> str:
    """One entity holding a field for every direction and rule, and every immutable variant the
    loader accepts (a fixed winner, and a direction that can write back to the loser)."""
    lines = ["[entities.e]"]
    for direction in Direction:
        for rule in Rule:
            variants = [False]
            if rule.winner is not None and direction.flows_to(rule.winner.other):
                variants.append(True)
            for immutable in variants:
                name = f"{direction.value}__{rule.value}" + ("__immutable" if immutable else "")
                lines += [
                    f"[entities.e.fields.{name}]",
                    f'ecosire = "e_{name}"',
                    f'crm = "c_{name}"',
                    f'direction = "{direction.value}"',
                    f'rule = "{rule.value}"',
                    f"immutable = {'true' if immutable else 'false'}",
                ]
    return "\n".join(lines) + "\n"


[EVERY] = parse_mapping(_every_field(), "every rule and direction").entities


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


def _values_for(spec: FieldSpec) -> st.SearchStrategy[Any]:
    if spec.is_set:
        return st.sampled_from([MISSING, None, [], ["a"], ["b"], ["a", "b"]])
    return st.sampled_from([MISSING, None, "", "x", "y"])


def _drop_missing(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not MISSING}


# A record as read: per field a value, null, an empty value, or no key at all.
record = st.fixed_dictionaries({spec.name: _values_for(spec) for spec in EVERY.fields}).map(_drop_missing)
stamp = st.sampled_from([None, T0, T1])


def _rule_winner(spec: FieldSpec, e_at: datetime | None, c_at: datetime | None) -> Side:
    if spec.rule.winner is not None:
        return spec.rule.winner
    return Side.CRM if e_at is not None and c_at is not None and c_at > e_at else Side.ECOSIRE


def _merged(
    eco: dict[str, Any],
    crm: dict[str, Any],
    bases: tuple[dict[str, Any] | None, dict[str, Any] | None],
    stamps: tuple[datetime | None, datetime | None],
) -> tuple[MergeResult, dict[Side, SideView]]:
    views = {
        Side.ECOSIRE: SideView(eco, bases[0], stamps[0]),
        Side.CRM: SideView(crm, bases[1], stamps[1]),
    }
    return merge(EVERY, views[Side.ECOSIRE], views[Side.CRM]), views


@settings(max_examples=600, deadline=None, derandomize=True)
@given(eco=record, crm=record, e_at=stamp, c_at=stamp)
def test_a_first_link_never_turns_a_set_value_into_an_empty_one(
    eco: dict[str, Any], crm: dict[str, Any], e_at: datetime | None, c_at: datetime | None
) -> None:
    result, views = _merged(eco, crm, (None, None), (e_at, c_at))
    held = {Side.ECOSIRE: eco, Side.CRM: crm}
    for spec in EVERY.fields:
        name = spec.name
        for side in Side:
            here, there = held[side], held[side.other]
            after = result.snapshot(side, views[side]).get(name, MISSING)
            if name not in here:
                # Unknown here: nothing of it reaches the other side.
                assert name not in result.writes[side.other], (name, side)
                if name in result.writes[side]:
                    assert not _empty(result.writes[side][name]), (name, side)
                continue
            if not _empty(here[name]):
                assert after is not MISSING and not _empty(after), (name, side, after)
            elif name in there and not _empty(there[name]) and spec.direction.flows_to(side):
                # Empty here, set there: the set value, whatever the rule.
                assert after == there[name], (name, side, after)
        two_values = name in eco and name in crm and not _empty(eco[name]) and not _empty(crm[name])
        if two_values and spec.direction is Direction.BOTH and not spec.is_set and eco[name] != crm[name]:
            # Between two values, the rule decides.
            winner = _rule_winner(spec, e_at, c_at)
            expected = held[winner][name]
            assert result.snapshot(winner.other, views[winner.other])[name] == expected, name
            assert result.snapshot(winner, views[winner])[name] == expected, name


@settings(max_examples=600, deadline=None, derandomize=True)
@given(
    eco=record,
    crm=record,
    e_base=st.none() | record,
    c_base=st.none() | record,
    e_at=stamp,
    c_at=stamp,
)
def test_a_missing_key_never_writes_the_other_side_and_the_merge_settles(
    eco: dict[str, Any],
    crm: dict[str, Any],
    e_base: dict[str, Any] | None,
    c_base: dict[str, Any] | None,
    e_at: datetime | None,
    c_at: datetime | None,
) -> None:
    result, views = _merged(eco, crm, (e_base, c_base), (e_at, c_at))
    held = {Side.ECOSIRE: eco, Side.CRM: crm}
    bases = {Side.ECOSIRE: e_base, Side.CRM: c_base}
    for spec in EVERY.fields:
        for side in Side:
            if spec.name not in held[side]:
                assert spec.name not in result.writes[side.other], (spec.name, side)
                if spec.name not in (bases[side] or {}) and spec.name in result.writes[side]:
                    # Unknown and never known: only a value fills it, never an empty one.
                    assert not _empty(result.writes[side][spec.name]), (spec.name, side)
    # Once our writes land, with the fields each side never returns still missing, and the
    # snapshots as the bases, the next merge writes nothing.
    still_missing = {
        side: {k: v for k, v in result.snapshot(side, views[side]).items() if k in held[side]}
        for side in Side
    }
    snapshots = {side: result.snapshot(side, views[side]) for side in Side}
    replay = merge(
        EVERY,
        SideView(still_missing[Side.ECOSIRE], snapshots[Side.ECOSIRE], e_at),
        SideView(still_missing[Side.CRM], snapshots[Side.CRM], c_at),
    )
    assert replay.writes_nothing, replay.writes


def test_the_newer_sides_empty_phone_does_not_erase_the_other_on_a_link() -> None:
    [entity] = parse_mapping(
        '[entities.c]\n[entities.c.fields.phone]\necosire = "phone"\ncrm = "phoneNumber"\n'
        'direction = "both"\nrule = "last_updated_wins"\n',
        "phone both ways",
    ).entities
    for empty in (None, ""):
        result = merge(entity, SideView({"phone": "+1 555"}, None, T0), SideView({"phone": empty}, None, T1))
        assert result.writes == {Side.ECOSIRE: {}, Side.CRM: {"phone": "+1 555"}}
        assert not result.conflicts
    # Once linked, clearing the phone is an edit like any other, and flows.
    base = {"phone": "+1 555"}
    cleared = merge(entity, SideView(base, base, T0), SideView({"phone": None}, base, T1))
    assert cleared.writes == {Side.ECOSIRE: {"phone": None}, Side.CRM: {}}


def test_an_absent_key_stays_distinct_from_null_in_canonical_values() -> None:
    contacts = load_mapping().entity("contacts")
    absent = canonicalize(contacts, Side.CRM, {"fullName": "Ann", "emailAddress": "ann@x.example"}, {})
    null = canonicalize(
        contacts, Side.CRM, {"fullName": "Ann", "emailAddress": "ann@x.example", "phoneNumber": None}, {}
    )
    assert "phone" not in absent and null["phone"] is None


def test_the_match_key_is_written_as_it_matches() -> None:
    contacts = load_mapping().entity("contacts")
    body = {"fullName": "Ann", "emailAddress": " Ann@X.example\t"}
    values = canonicalize(contacts, Side.CRM, body, {})
    # Read as typed, so that the padded side differs from the other and is written to; written
    # trimmed, its spelling otherwise kept (case-folded only to compare).
    assert values["email"] == " Ann@X.example\t" and normalise_key(values["email"]) == "ann@x.example"
    assert to_remote(contacts, Side.ECOSIRE, values, {})["email"] == "Ann@X.example"
    # Linked to ECOSIRE's spelling of the same address, the CRM is written ECOSIRE's.
    eco = {**values, "email": "ann@x.example"}
    linked = merge(contacts, SideView(eco, None, T0), SideView(values, None, T1))
    assert linked.writes[Side.CRM] == {"email": "ann@x.example"} and linked.writes[Side.ECOSIRE] == {}


# -- through the sandboxes ---------------------------------------------------------------------


def _default_mapping() -> str:
    return resources.files("crmsyncd.domain").joinpath("default_mapping.toml").read_text("utf-8")


def _mapping(*replacements: tuple[str, str]) -> str:
    text = _default_mapping()
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, pattern
    return text


PHONE_BOTH_WAYS = (
    r'crm = "phoneNumber"\ndirection = "crm_to_ecosire"\nrule = "crm_wins"',
    'crm = "phoneNumber"\ndirection = "both"\nrule = "last_updated_wins"',
)


@asynccontextmanager
async def app_with(settings: Settings, text: str) -> AsyncIterator[App]:
    async with open_app(settings, parse_mapping(text, "test mapping")) as app:
        yield app


async def _writes(app: App, eco: EcosireSandbox, crm: CrmSandbox) -> list[str]:
    """A pass's non-read requests to either API."""
    eco.reset_counts()
    crm.reset_counts()
    report = await app.engine.sync_pass(app.entities)
    assert report.status == "ok"
    return [k for k in (*eco.requests, *crm.requests) if not k.startswith("GET")]


async def test_a_phone_mapped_both_ways_survives_linking_to_a_newer_contact_without_one(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path
) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(_mapping(PHONE_BOTH_WAYS))
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 2, tzinfo=UTC))
    older, newer = "2026-11-01T09:00:00Z", "2026-11-01T10:00:00Z"
    eco.seed(
        "contacts",
        [
            {"name": "Ann Lee", "email": "ann@mail.example", "phone": "+1 555 0100", "updatedAt": older},
            {"name": "Bo Chen", "email": "bo@mail.example", "phone": None, "updatedAt": newer},
            {"name": "Cy Diaz", "email": "cy@mail.example", "phone": "+1 555 0300", "updatedAt": older},
        ],
    )
    crm.seed(
        "contacts",
        [
            # Newer, and without the phone ECOSIRE has: the newer side's empty value must not win.
            {
                "fullName": "Ann Lee",
                "emailAddress": "ann@mail.example",
                "phoneNumber": None,
                "updatedAt": newer,
            },
            # The other way round: ECOSIRE is newer and empty.
            {
                "fullName": "Bo Chen",
                "emailAddress": "bo@mail.example",
                "phoneNumber": "+1 555 0200",
                "updatedAt": older,
            },
            # Two values: the rule decides, and the newer CRM's wins.
            {
                "fullName": "Cy Diaz",
                "emailAddress": "cy@mail.example",
                "phoneNumber": "+1 555 0399",
                "updatedAt": newer,
            },
        ],
    )
    run = {**env, "CRMSYNCD_MAPPING": str(mapping), "CRMSYNCD_ENTITIES": "contacts"}

    result = await run_cli("sync", "--once", env=run)

    assert result.code == 0, result.stderr
    eco_phones = {r["email"]: r["phone"] for r in eco.records("contacts")}
    crm_phones = {r["emailAddress"]: r["phoneNumber"] for r in crm.records("contacts")}
    expected = {
        "ann@mail.example": "+1 555 0100",
        "bo@mail.example": "+1 555 0200",
        "cy@mail.example": "+1 555 0399",
    }
    assert eco_phones == crm_phones == expected
    assert len(eco.records("contacts")) == len(crm.records("contacts")) == 3

    eco.reset_counts()
    crm.reset_counts()
    quiet = await run_cli("sync", "--once", env=run)
    assert quiet.code == 0, quiet.stderr
    assert [k for k in (*eco.requests, *crm.requests) if not k.startswith("GET")] == []
    errors = await run_cli("errors", "list", "--json", env=run)
    assert errors.code == 0 and errors.stdout.strip() == "[]", errors.stdout


async def test_a_field_the_crm_never_returns_erases_no_ecosire_value(
    settings: Settings, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    # phone mapped to a CRM field that does not exist: the CRM ignores it on writes and never
    # returns it, so every CRM record read lacks the key.
    misspelled = _mapping((PHONE_BOTH_WAYS[0], PHONE_BOTH_WAYS[1].replace("phoneNumber", "phoneNumbr")))
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 2, tzinfo=UTC))
    eco.seed(
        "contacts",
        [
            {
                "name": f"P{i}",
                "email": f"p{i}@mail.example",
                "phone": f"+1 555 010{i}",
                "updatedAt": "2026-11-01T09:00:00Z",
            }
            for i in range(6)
        ],
    )
    # Half of them exist in the CRM already, edited later than in ECOSIRE.
    crm.seed(
        "contacts",
        [
            {"fullName": f"P{i}", "emailAddress": f"p{i}@mail.example", "updatedAt": "2026-11-01T10:00:00Z"}
            for i in range(3)
        ],
    )
    phones = {f"p{i}@mail.example": f"+1 555 010{i}" for i in range(6)}
    async with app_with(settings, misspelled) as app:
        first = await app.engine.sync_pass(app.entities)
        assert first.status == "ok" and first.counts.linked == 3 and first.counts.created == {"crm": 3}
        assert {r["email"]: r["phone"] for r in eco.records("contacts")} == phones
        assert await _writes(app, eco, crm) == []

        # CRM users edit every contact (not the phone they cannot see): the names flow, the
        # phones stay.
        for c in crm.records("contacts"):
            crm.edit("contacts", str(c["id"]), fullName=f"{c['fullName']} (edited)")
        edited = await app.engine.sync_pass(app.entities)
        assert edited.counts.updated == {"ecosire": 6}
        people = eco.records("contacts")
        assert {r["email"]: r["phone"] for r in people} == phones
        assert all(r["name"].endswith("(edited)") for r in people)
        assert await _writes(app, eco, crm) == []
        assert await app.pool.fetchval("SELECT count(*) FROM sync_error") == 0


async def test_a_padded_crm_email_is_created_in_ecosire_trimmed(
    app: App, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 2, tzinfo=UTC))
    crm.seed(
        "contacts", [{"fullName": "Ann Lee", "emailAddress": " Ann@X.example ", "phoneNumber": "+1 555"}]
    )

    report = await app.engine.sync_pass(app.entities)

    assert report.counts.created == {"ecosire": 1} and not report.counts.parked
    [e], [c] = eco.records("contacts"), crm.records("contacts")
    assert (e["email"], e["name"], e["phone"]) == ("Ann@X.example", "Ann Lee", "+1 555")
    assert c["emailAddress"] == "Ann@X.example"  # ECOSIRE's spelling, as for any link
    assert await app.pool.fetchval("SELECT count(*) FROM sync_error") == 0
    assert await _writes(app, eco, crm) == []


async def test_a_padded_crm_email_edit_reaches_ecosire_trimmed_with_the_rest_of_the_edit(
    settings: Settings, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    # A mapping where the CRM's email edits flow to ECOSIRE (not the default's immutable email).
    text = _mapping((r'rule = "ecosire_wins"\nimmutable = true[^\n]*', 'rule = "last_updated_wins"'))
    eco.clock = crm.clock = TickingClock(datetime(2026, 11, 2, tzinfo=UTC))
    [e] = eco.seed("contacts", [{"name": "Ann Lee", "email": "ann@x.example"}])
    async with app_with(settings, text) as app:
        await app.engine.sync_pass(app.entities)
        [c] = crm.records("contacts")
        crm.edit("contacts", str(c["id"]), emailAddress="  Ann.Lee@X.example ", fullName="Ann Lee-Park")

        report = await app.engine.sync_pass(app.entities)

        assert not report.counts.parked
        e2, c2 = eco.get_record("contacts", str(e["id"])), crm.get_record("contacts", str(c["id"]))
        assert e2 is not None and (e2["email"], e2["name"]) == ("Ann.Lee@X.example", "Ann Lee-Park")
        # The CRM's own copy is written as it matches too: both sides hold the same address.
        assert c2 is not None and c2["emailAddress"] == "Ann.Lee@X.example"
        assert await app.pool.fetchval("SELECT count(*) FROM sync_error") == 0
        assert await _writes(app, eco, crm) == []
