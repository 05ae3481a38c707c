"""The transforms HubSpot's default mapping needs, and the mapping itself: a name split over
firstname and lastname, a `;`-joined multiple-checkbox value, a table of stage values."""

from __future__ import annotations

import pytest

from crmsyncd.connectors.hubspot.mapping import default_mapping
from crmsyncd.domain.canonical import canonicalize, to_remote
from crmsyncd.domain.mapping import MappingError, parse_mapping
from crmsyncd.domain.records import BadRecord, Side

MAPPING = default_mapping()
CONTACTS = MAPPING.entity("contacts")
DEALS = MAPPING.entity("deals")


def test_the_hubspot_mapping_is_the_guides_table() -> None:
    table = {(f.ecosire, f.remote_names(Side.CRM), f.direction.value, f.rule.value) for f in CONTACTS.fields}
    assert table == {
        ("name", ("firstname", "lastname"), "both", "last_updated_wins"),
        ("email", ("email",), "both", "ecosire_wins"),
        ("phone", ("phone",), "crm_to_ecosire", "crm_wins"),
        ("type", ("ecosire_type",), "ecosire_to_crm", "ecosire_wins"),
        ("tags", ("ecosire_tags",), "both", "union"),
    }
    assert [f.name for f in CONTACTS.fields if f.immutable] == ["email"]
    assert {f.crm for f in DEALS.fields} >= {"dealname", "amount", "dealstage", "contactId"}


@pytest.mark.parametrize(
    ("crm", "name"),
    [
        ({"firstname": "Ada", "lastname": "Lovelace"}, "Ada Lovelace"),
        ({"firstname": "Ada", "lastname": ""}, "Ada"),
        ({"firstname": " Ada ", "lastname": None}, "Ada"),
        ({"lastname": "Lovelace King"}, "Lovelace King"),
    ],
)
def test_a_name_is_joined_from_firstname_and_lastname(crm: dict[str, object], name: str) -> None:
    values = canonicalize(CONTACTS, Side.CRM, {"email": "a@example.com", **crm}, {})
    assert values["name"] == name


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("Ada Lovelace", "Ada", "Lovelace"),
        ("Ada Lovelace King", "Ada", "Lovelace King"),  # the first word, then the rest
        ("Cher", "Cher", ""),
        ("  José   María  Pérez ", "José", "María  Pérez"),  # inner spaces of the rest kept
    ],
)
def test_a_name_is_split_into_its_first_word_and_the_rest(name: str, first: str, last: str) -> None:
    body = to_remote(CONTACTS, Side.CRM, {"name": name}, {})
    assert body == {"firstname": first, "lastname": last}


def test_a_split_name_that_is_missing_or_blank_on_both_is_bad_input_naming_the_fields() -> None:
    with pytest.raises(BadRecord) as missing:
        canonicalize(CONTACTS, Side.CRM, {"email": "a@example.com"}, {})
    assert missing.value.field == "firstname+lastname" and "missing" in str(missing.value)
    with pytest.raises(BadRecord) as blank:
        canonicalize(CONTACTS, Side.CRM, {"email": "a@example.com", "firstname": " ", "lastname": ""}, {})
    assert "empty" in str(blank.value)


@pytest.mark.parametrize(
    ("raw", "tags"),
    [("vip;press", ["press", "vip"]), ("", []), (None, []), ("vip; vip ;gold", ["gold", "vip"])],
)
def test_a_semicolon_joined_value_is_a_set_of_tags(raw: object, tags: list[str]) -> None:
    values = canonicalize(CONTACTS, Side.CRM, {"firstname": "A", "ecosire_tags": raw}, {})
    assert values["tags"] == tags


def test_tags_are_written_semicolon_joined() -> None:
    assert to_remote(CONTACTS, Side.CRM, {"tags": ["vip", "gold"]}, {}) == {"ecosire_tags": "gold;vip"}
    assert to_remote(CONTACTS, Side.ECOSIRE, {"tags": ["vip", "gold"]}, {}) == {"tags": ["vip", "gold"]}


def test_stages_go_through_the_values_table_both_ways() -> None:
    assert to_remote(DEALS, Side.CRM, {"stage": "won"}, {}) == {"dealstage": "closedwon"}
    values = canonicalize(DEALS, Side.CRM, {"dealname": "D", "dealstage": "qualifiedtobuy"}, {})
    assert values["stage"] == "qualified"
    with pytest.raises(BadRecord) as crm:
        canonicalize(DEALS, Side.CRM, {"dealname": "D", "dealstage": "mystery"}, {})
    assert crm.value.field == "dealstage" and "'mystery' is not in the mapping's values" in str(crm.value)
    with pytest.raises(BadRecord) as eco:
        canonicalize(DEALS, Side.ECOSIRE, {"title": "D", "stage": "limbo"}, {})
    assert eco.value.field == "stage" and "'limbo'" in str(eco.value)


def test_amounts_read_from_hubspots_decimal_strings() -> None:
    """HubSpot answers a number property as a decimal string, and takes a JSON number."""
    values = canonicalize(DEALS, Side.CRM, {"dealname": "D", "amount": "1234.50"}, {})
    assert values["amount"] == 123450
    assert to_remote(DEALS, Side.CRM, {"amount": 123450}, {}) == {"amount": 1234.5}


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ('crm = ["a", "b"]\ntransform = "none"', "a list of CRM fields needs transform split_name"),
        ('crm = ["a"]\ntransform = "split_name"', "split_name needs two CRM fields"),
        ('crm = "a"\ntransform = "table"', "transform table needs a values table"),
        ('crm = "a"\ntransform = "table"\nvalues = {x = "1", y = "1"}', "'1' is the CRM value of both"),
    ],
)
def test_bad_transform_settings_are_refused_naming_the_key(field: str, reason: str) -> None:
    text = f'[entities.c.fields.f]\necosire = "e"\n{field}\ndirection = "both"\nrule = "last_updated_wins"\n'
    with pytest.raises(MappingError) as caught:
        parse_mapping(text, "m.toml")
    assert reason in str(caught.value) and "entities.c.fields.f" in str(caught.value)
