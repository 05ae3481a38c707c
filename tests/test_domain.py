"""The pure rules: mapping files, canonical values, and the per-field merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsyncd.domain.canonical import canonicalize, normalise_key, to_remote
from crmsyncd.domain.mapping import MappingError, Rule, load_mapping, parse_mapping
from crmsyncd.domain.merge import SideView, merge
from crmsyncd.domain.records import BadRecord, Side, format_timestamp, parse_timestamp

MAPPING = load_mapping()
CONTACTS = MAPPING.entity("contacts")
DEALS = MAPPING.entity("deals")
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_the_default_mapping_is_the_guides_table() -> None:
    table = {(f.ecosire, f.crm, f.direction.value, f.rule.value) for f in CONTACTS.fields}
    assert table == {
        ("name", "fullName", "both", "last_updated_wins"),
        ("email", "emailAddress", "both", "ecosire_wins"),
        ("phone", "phoneNumber", "crm_to_ecosire", "crm_wins"),
        ("type", "accountType", "ecosire_to_crm", "ecosire_wins"),
        ("tags", "labels", "both", "union"),
    }
    # "ECOSIRE wins (immutable)": ECOSIRE's email is the contact's identity.
    assert [f.name for e in MAPPING.entities for f in e.fields if f.immutable] == ["email"]
    assert [e.name for e in MAPPING.entities] == ["contacts", "deals"]
    assert DEALS.depends_on == ("contacts",)


def _field(direction: str, rule: str, extra: str = "") -> str:
    """A one-entity, one-field mapping file."""
    return (
        f'[entities.c]\n[entities.c.fields.f]\necosire="a"\ncrm="b"\n'
        f'direction="{direction}"\nrule="{rule}"\n{extra}\n'
    )


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("entities = 3", "entities", "expected a table"),
        (
            '[entities.c]\n[entities.c.fields.n]\necosire="a"\ncrm="b"\ndirection="both"\nrule="x"\n',
            "entities.c.fields.n.rule",
            "expected one of last_updated_wins, ecosire_wins, crm_wins, union",
        ),
        (
            '[entities.c]\n[entities.c.fields.n]\necosire="a"\ncrm="b"\ndirection="both"\n',
            "entities.c.fields.n.rule",
            "missing",
        ),
        (
            '[entities.c]\nmatch_key="nope"\n[entities.c.fields.n]\necosire="a"\ncrm="b"\n'
            'direction="both"\nrule="crm_wins"\n',
            "entities.c.match_key",
            "expected the name of",
        ),
        (
            '[entities.c]\ncolour="red"\n[entities.c.fields.n]\necosire="a"\ncrm="b"\n'
            'direction="both"\nrule="crm_wins"\n',
            "entities.c.colour",
            "unknown key",
        ),
        (
            '[entities.d]\n[entities.d.fields.c]\necosire="a"\ncrm="b"\ndirection="both"\n'
            'rule="crm_wins"\ntransform="ref:contacts"\n',
            "entities.d.fields.c.transform",
            "unknown entity",
        ),
        (
            '[entities.c]\n[entities.c.fields.t]\necosire="a"\ncrm="b"\ndirection="both"\n'
            'rule="union"\ntransform="upper"\n',
            "entities.c.fields.t.transform",
            "takes no transform",
        ),
        (
            _field("both", "last_updated_wins", "immutable = true"),
            "entities.c.fields.f.immutable",
            "an immutable field needs rule ecosire_wins or crm_wins, not last_updated_wins",
        ),
        (
            _field("both", "union", "immutable = true"),
            "entities.c.fields.f.immutable",
            "needs rule ecosire_wins or crm_wins, not union",
        ),
        (
            _field("crm_to_ecosire", "ecosire_wins", "immutable = true"),
            "entities.c.fields.f.immutable",
            "rule ecosire_wins with direction crm_to_ecosire cannot revert an edit on crm: "
            "nothing flows to crm (use both or ecosire_to_crm)",
        ),
        (
            _field("ecosire_to_crm", "crm_wins", "immutable = true"),
            "entities.c.fields.f.immutable",
            "cannot revert an edit on ecosire: nothing flows to ecosire (use both or crm_to_ecosire)",
        ),
        (
            _field("both", "ecosire_wins", 'immutable = "yes"'),
            "entities.c.fields.f.immutable",
            "expected true or false, got 'yes'",
        ),
    ],
)
def test_a_bad_mapping_names_the_key_and_the_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(MappingError) as caught:
        parse_mapping(text, "m.toml")
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"m.toml: {key}: ")


@pytest.mark.parametrize(
    ("direction", "rule"),
    [
        ("both", "ecosire_wins"),
        ("both", "crm_wins"),
        ("ecosire_to_crm", "ecosire_wins"),
        ("crm_to_ecosire", "crm_wins"),
    ],
)
def test_immutable_is_accepted_with_a_fixed_winner_that_can_write_back(direction: str, rule: str) -> None:
    [spec] = parse_mapping(_field(direction, rule, "immutable = true"), "m.toml").entity("c").fields
    assert spec.immutable
    [plain] = parse_mapping(_field(direction, rule), "m.toml").entity("c").fields
    assert not plain.immutable


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[entities.c]\nname = "unterminated\n')
    with pytest.raises(MappingError, match=r"m\.toml: invalid TOML: .*line 2"):
        load_mapping(path)


def test_canonical_values_translate_both_ways() -> None:
    deal = {"title": "T", "amount": 1234.5, "currency": "EUR", "stage": "won", "contactId": "c_1"}
    refs = {("contacts", Side.CRM, "c_1"): "e-1", ("contacts", Side.ECOSIRE, "e-1"): "c_1"}
    values = canonicalize(DEALS, Side.CRM, deal, refs)
    assert values == {"title": "T", "amount": 123450, "currency": "eur", "stage": "won", "contact": "e-1"}
    assert to_remote(DEALS, Side.CRM, values, refs) == deal
    assert to_remote(DEALS, Side.ECOSIRE, values, refs) == {
        "title": "T",
        "amount": 123450,
        "currency": "eur",
        "stage": "won",
        "contactId": "e-1",
    }


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"fullName": "A", "labels": "vip"}, "labels", "expected a list of strings, got str"),
        ({"fullName": "A", "labels": ["ok", 3]}, "labels", "expected a list of strings"),
    ],
)
def test_a_wrong_type_names_the_field(body: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(BadRecord) as caught:
        canonicalize(CONTACTS, Side.CRM, body, {})
    assert caught.value.field == field and reason in caught.value.reason


def test_timestamps_accept_offsets_and_refuse_garbage() -> None:
    assert parse_timestamp("2026-11-27T12:15:30.123+02:00") == datetime(
        2026, 11, 27, 10, 15, 30, 123000, tzinfo=UTC
    )
    assert (
        format_timestamp(datetime(2026, 11, 27, 10, 15, 30, 123456, tzinfo=UTC)) == "2026-11-27T10:15:30.123Z"
    )
    for bad in ("yesterday", "2026-11-27T10:00:00", None, 17):
        with pytest.raises(BadRecord, match="updatedAt"):
            parse_timestamp(bad)


def test_the_match_key_is_trimmed_and_case_folded() -> None:
    assert normalise_key("  Ana@Mail.Example ") == normalise_key("ana@mail.example") == "ana@mail.example"
    assert normalise_key("   ") is None and normalise_key(None) is None


def view(values: dict[str, Any], base: dict[str, Any] | None, at: datetime) -> SideView:
    return SideView(values, base, at)


BASE = {"name": "A", "email": "a@x.io", "phone": "1", "type": "person", "tags": ["k", "x", "y"]}


def test_each_field_follows_its_rule_under_concurrent_edits() -> None:
    eco = {"name": "E", "email": "e@x.io", "phone": "2", "type": "company", "tags": ["k", "y", "e"]}
    crm = {"name": "C", "email": "c@x.io", "phone": "3", "type": "lead", "tags": ["k", "x", "c"]}
    result = merge(CONTACTS, view(eco, BASE, T0), view(crm, BASE, T0 + timedelta(seconds=1)))
    assert result.writes[Side.ECOSIRE] == {"name": "C", "phone": "3", "tags": ["c", "e", "k"]}
    assert result.writes[Side.CRM] == {"email": "e@x.io", "type": "company", "tags": ["c", "e", "k"]}
    assert {(c.field, c.rule, c.winner) for c in result.conflicts} == {
        ("name", Rule.LAST_UPDATED_WINS, "crm"),
        ("email", Rule.ECOSIRE_WINS, "ecosire"),
        ("tags", Rule.UNION, "merged"),
    }
    # The CRM's edit of the immutable email is undone, not merely outvoted.
    assert result.reverted == {Side.ECOSIRE: [], Side.CRM: ["email"]}


def test_last_updated_wins_ties_go_to_ecosire_and_one_sided_changes_just_flow() -> None:
    eco = {**BASE, "name": "E"}
    crm = {**BASE, "name": "C"}
    tie = merge(CONTACTS, view(eco, BASE, T0), view(crm, BASE, T0))
    assert tie.writes[Side.CRM] == {"name": "E"}
    only_crm = merge(CONTACTS, view(BASE, BASE, T0 + timedelta(hours=1)), view(crm, BASE, T0))
    assert only_crm.writes[Side.ECOSIRE] == {"name": "C"} and not only_crm.conflicts


def test_a_one_way_field_never_flows_back() -> None:
    crm = {**BASE, "type": "company"}  # the CRM edits a field ECOSIRE owns
    result = merge(CONTACTS, view(BASE, BASE, T0), view(crm, BASE, T0))
    assert result.writes[Side.ECOSIRE] == {}
    assert result.writes[Side.CRM] == {"type": "person"}  # reverted: ECOSIRE wins
    eco = {**BASE, "phone": "9"}  # ECOSIRE edits a field the CRM owns
    result = merge(CONTACTS, view(eco, BASE, T0), view(BASE, BASE, T0))
    assert result.writes[Side.ECOSIRE] == {"phone": "1"} and result.writes[Side.CRM] == {}


def test_an_empty_source_does_not_erase_a_fresh_link() -> None:
    crm = {**BASE, "type": "company"}
    eco = {**BASE, "type": None}
    result = merge(CONTACTS, view(eco, None, T0), view(crm, None, T0))
    assert "type" not in result.writes[Side.CRM]


def test_an_immutable_field_edited_on_the_losing_side_is_written_back() -> None:
    crm = {**BASE, "email": "changed@x.io"}
    result = merge(CONTACTS, view(BASE, BASE, T0), view(crm, BASE, T0 + timedelta(hours=1)))
    assert result.writes == {Side.ECOSIRE: {}, Side.CRM: {"email": "a@x.io"}}
    assert result.reverted == {Side.ECOSIRE: [], Side.CRM: ["email"]} and not result.conflicts
    # Once written back, both sides hold what their snapshots say: the next merge is quiet.
    eco2, crm2 = (
        result.snapshot(Side.ECOSIRE, view(BASE, BASE, T0)),
        result.snapshot(Side.CRM, view(crm, BASE, T0)),
    )
    assert eco2 == crm2 == BASE
    assert merge(CONTACTS, view(eco2, eco2, T0), view(crm2, crm2, T0)).writes_nothing
    # A case-only edit is an edit too: ECOSIRE's spelling is the identity, the match key is not.
    shouting = {**BASE, "email": "A@X.IO"}
    assert merge(CONTACTS, view(BASE, BASE, T0), view(shouting, BASE, T0)).writes[Side.CRM] == {
        "email": "a@x.io"
    }


def test_an_immutable_field_changed_on_the_winning_side_flows() -> None:
    eco = {**BASE, "email": "new@x.io"}
    result = merge(CONTACTS, view(eco, BASE, T0), view(BASE, BASE, T0 + timedelta(hours=1)))
    assert result.writes == {Side.ECOSIRE: {}, Side.CRM: {"email": "new@x.io"}}
    assert result.reverted == {Side.ECOSIRE: [], Side.CRM: []} and not result.conflicts


def test_an_immutable_field_merges_as_usual_before_the_pair_has_a_base() -> None:
    # Linking: the CRM's spelling of the shared address gives way to ECOSIRE's, as it always did,
    # and nothing is counted as reverted (there was no edit to undo).
    crm = {**BASE, "email": " A@x.io"}
    linked = merge(CONTACTS, view(BASE, None, T0), view(crm, None, T0))
    assert linked.writes[Side.CRM] == {"email": "a@x.io"}
    assert linked.reverted == {Side.ECOSIRE: [], Side.CRM: []}


def test_crm_wins_immutable_reverts_an_ecosire_edit() -> None:
    [entity] = parse_mapping(_field("both", "crm_wins", "immutable = true"), "m.toml").entities
    base = {"f": "crm-id"}
    result = merge(entity, view({"f": "eco-edit"}, base, T0 + timedelta(hours=1)), view(base, base, T0))
    assert result.writes == {Side.ECOSIRE: {"f": "crm-id"}, Side.CRM: {}}
    assert result.reverted == {Side.ECOSIRE: ["f"], Side.CRM: []}


def test_a_one_way_immutable_field_repairs_a_divergence_one_way_alone_would_keep() -> None:
    text = _field("ecosire_to_crm", "ecosire_wins")
    [plain] = parse_mapping(text, "m.toml").entities
    [fixed] = parse_mapping(text + "immutable = true\n", "m.toml").entities
    eco, crm = view({"f": "e"}, {"f": "e"}, T0), view({"f": "c"}, {"f": "c"}, T0)
    assert merge(plain, eco, crm).writes_nothing
    repaired = merge(fixed, eco, crm)
    assert repaired.writes[Side.CRM] == {"f": "e"} and repaired.reverted[Side.CRM] == ["f"]


tags = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True).map(sorted)
text = st.text(min_size=0, max_size=12)
contact_values = st.fixed_dictionaries(
    {
        "name": text,
        "email": text,
        "phone": st.none() | text,
        "type": st.sampled_from([None, "person", "company"]),
        "tags": tags,
    }
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(base=contact_values, eco=contact_values, crm=contact_values, later=st.booleans())
def test_merge_converges_and_is_idempotent(
    base: dict[str, Any], eco: dict[str, Any], crm: dict[str, Any], later: bool
) -> None:
    e_at, c_at = (T0, T0 + timedelta(seconds=1)) if later else (T0 + timedelta(seconds=1), T0)
    first = merge(CONTACTS, view(eco, base, e_at), view(crm, base, c_at))
    eco2, crm2 = (
        first.snapshot(Side.ECOSIRE, view(eco, base, e_at)),
        first.snapshot(Side.CRM, view(crm, base, c_at)),
    )
    # Bidirectional fields agree afterwards; one-way fields never change their source side.
    for spec in CONTACTS.fields:
        if spec.direction.value == "both":
            assert eco2[spec.name] == crm2[spec.name], spec.name
    assert eco2["type"] == eco["type"] and crm2["phone"] == crm["phone"]
    # An immutable field is never written on its winner's side once linked (but for the blanks
    # around a match key, which is written as it matches).
    assert eco2["email"] in (eco["email"], eco["email"].strip())
    # Union keeps every addition made since the base on either side.
    added = (set(eco["tags"]) - set(base["tags"])) | (set(crm["tags"]) - set(base["tags"]))
    assert added <= set(eco2["tags"])
    # Replaying the merge on its own outcome writes nothing.
    again = merge(CONTACTS, view(eco2, eco2, e_at), view(crm2, crm2, c_at))
    assert again.writes_nothing


# Any text a field may hold: not blank where required, no NUL (tests/test_bad_input.py has the rest).
valid_text = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=200)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(name=valid_text.filter(str.strip), labels=st.lists(valid_text.map(lambda t: t[:20]), max_size=8))
def test_any_text_round_trips_byte_for_byte(name: str, labels: list[str]) -> None:
    body = {
        "fullName": name,
        "emailAddress": None,
        "phoneNumber": None,
        "accountType": None,
        "labels": labels,
    }
    values = canonicalize(CONTACTS, Side.CRM, body, {})
    back = to_remote(CONTACTS, Side.CRM, values, {})
    assert back["fullName"] == name and sorted(set(labels)) == back["labels"]


def test_a_lost_create_is_not_taken_for_a_look_alike_a_user_made_meanwhile() -> None:
    """After a kill, our create of a deal may or may not have landed. A deal a user created since
    for the same contact, in the same currency and stage (three of five fields), is not our copy;
    a copy a user edited in one field is."""
    from crmsyncd.engine.doubts import _mutual_best
    from crmsyncd.store.pairs import Pair

    def pair(pair_id: int) -> Pair:
        fields: dict[str, Any] = {**dict.fromkeys(Pair.__slots__), "id": pair_id, "entity": "deals"}
        return Pair(**{**fields, "attempts": 1})

    sent = {"title": "Deal crm 04014", "amount": 120000, "currency": "usd", "stage": "lead", "contact": "c1"}
    look_alike = {**sent, "title": "Deal crm 04140", "amount": 99000}
    assert _mutual_best([(pair(1), sent)], [({"id": "d_9"}, look_alike)]) == []
    edited_copy = {**sent, "stage": "won"}
    assert _mutual_best([(pair(1), sent)], [({"id": "d_7"}, edited_copy), ({"id": "d_9"}, look_alike)]) == [
        (1, {"id": "d_7"})
    ]
