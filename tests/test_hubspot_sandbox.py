"""The HubSpot sandbox, driven by HubSpot's own Python SDK (`hubspot-api-client`): every call is
made and every answer read by the vendor's client, and deserialised into its models. A sandbox the
SDK cannot use is a bug in the sandbox. What the SDK hides (headers, the raw 429 body, the
10-second window) is checked with plain aiohttp.

The SDK is synchronous (urllib3): its calls run in a thread while the sandbox serves in the test's
loop. Time is the sandbox's own clocks (`clock` for stamps, tokens and the index lag,
`limiter.monotonic` for the rate-limit windows), stepped by the tests: no sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import pytest
from hubspot import HubSpot
from hubspot.crm.associations.v4 import BatchInputPublicDefaultAssociationMultiPost
from hubspot.crm.contacts import (
    ApiException as ContactsApiException,
)
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.deals import SimplePublicObjectInputForCreate as DealInputForCreate
from hubspot.crm.properties import ApiException as PropertiesApiException
from hubspot.crm.properties import OptionInput, PropertyCreate
from hubspot.oauth import ApiException as OAuthApiException

from crmsyncd.sandbox.hubspot import HubSpotSandbox
from tests.conftest import SteppedClock

T = TypeVar("T")
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(hub: HubSpotSandbox, token: str | None = None) -> Any:
    """The SDK pointed at the sandbox, with its models' own checks on (required fields, enum
    values), which the SDK leaves off by default: every answer must fit HubSpot's schema."""
    return HubSpot(access_token=token or hub.api_key, host=hub.url, client_side_validation=True)


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One SDK call, off the loop that serves the sandbox."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def body_of(error: Exception) -> dict[str, Any]:
    raw = getattr(error, "body", None)
    assert raw, f"no body on {error!r}"
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


def search_request(
    filters: list[Filter], *, after: str | None = None, limit: int = 200, sorts: list[Any] | None = None
) -> PublicObjectSearchRequest:
    return PublicObjectSearchRequest(
        filter_groups=[FilterGroup(filters=filters)],
        sorts=sorts
        if sorts is not None
        else [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        properties=["email", "firstname"],
        limit=limit,
        after=after,
    )


def seed_contacts(hub: HubSpotSandbox, count: int, *, step_seconds: float = 1.0) -> list[dict[str, Any]]:
    return hub.seed(
        "contacts",
        [
            {
                "properties": {"email": f"person{i:05d}@example.com", "firstname": f"P{i}"},
                "createdAt": (START - timedelta(days=1)).isoformat(),
                "updatedAt": (START + timedelta(seconds=i * step_seconds)).isoformat(),
            }
            for i in range(count)
        ],
    )


# ----- search -------------------------------------------------------------------------------------


async def test_search_filters_sorts_and_pages_as_the_sdk_reads_them(hubspot: HubSpotSandbox) -> None:
    seed_contacts(hubspot, 450)
    api = client(hubspot).crm.contacts.search_api
    cursor = (START + timedelta(seconds=25)).isoformat().replace("+00:00", "Z")
    gte = Filter(property_name="lastmodifieddate", operator="GTE", value=cursor)
    seen: list[str] = []
    stamps: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await call(api.do_search, public_object_search_request=search_request([gte], after=after))
        pages += 1
        assert page.total == 425  # every match, whatever the page
        seen += [r.id for r in page.results]
        stamps += [r.properties["lastmodifieddate"] for r in page.results]
        assert all(set(r.properties) >= {"email", "firstname", "hs_object_id"} for r in page.results)
        if page.paging is None:
            break
        after = page.paging.next.after
    assert pages == 3  # 200 + 200 + 25
    assert len(seen) == len(set(seen)) == 425
    assert stamps == sorted(stamps) and stamps[0] == cursor.replace("Z", ".000Z")

    # Groups are ORed, filters within one ANDed; IN, NEQ, HAS_PROPERTY and a descending sort.
    hubspot.edit("contacts", seen[0], phone="+49 30 1")
    either = PublicObjectSearchRequest(
        filter_groups=[
            FilterGroup(
                filters=[
                    Filter(
                        property_name="email",
                        operator="IN",
                        values=["person00030@example.com", "PERSON00031@example.com"],
                    ),
                    Filter(property_name="firstname", operator="NEQ", value="P31"),
                ]
            ),
            FilterGroup(filters=[Filter(property_name="phone", operator="HAS_PROPERTY")]),
        ],
        sorts=[{"propertyName": "email", "direction": "DESCENDING"}],
        properties=["email", "phone"],
    )
    found = await call(api.do_search, public_object_search_request=either)
    assert [r.properties["email"] for r in found.results] == [
        "person00030@example.com",
        "person00025@example.com",
    ]
    assert found.results[1].properties["phone"] == "+49 30 1"


async def test_equal_stamps_keep_one_order_across_pages(hubspot: HubSpotSandbox) -> None:
    """A client that re-anchors on the last stamp it read (GTE) needs equal stamps in one stable
    order: the sandbox gives them in id order, page after page."""
    same = (START + timedelta(seconds=5)).isoformat()
    seeded = hubspot.seed(
        "contacts",
        [{"properties": {"email": f"tie{i:03d}@example.com"}, "updatedAt": same} for i in range(250)],
    )
    api = client(hubspot).crm.contacts.search_api
    everyone = [Filter(property_name="lastmodifieddate", operator="GTE", value=same)]
    first = await call(api.do_search, public_object_search_request=search_request(everyone))
    rest = await call(
        api.do_search, public_object_search_request=search_request(everyone, after=first.paging.next.after)
    )
    read = [r.id for r in first.results + rest.results]
    assert read == sorted((r["id"] for r in seeded), key=int)
    assert rest.paging is None


async def test_search_refuses_to_page_beyond_ten_thousand_results(hubspot: HubSpotSandbox) -> None:
    seed_contacts(hubspot, 10_050, step_seconds=0.001)
    api = client(hubspot).crm.contacts.search_api
    everyone = [Filter(property_name="email", operator="HAS_PROPERTY")]
    last = await call(api.do_search, public_object_search_request=search_request(everyone, after="9800"))
    assert last.total == 10_050
    assert len(last.results) == 200
    # The page before the cap still offers a next page, as HubSpot's does: following it is a 400.
    assert last.paging.next.after == "10000"
    with pytest.raises(ContactsApiException) as refused:
        await call(api.do_search, public_object_search_request=search_request(everyone, after="10000"))
    assert refused.value.status == 400
    assert body_of(refused.value)["category"] == "VALIDATION_ERROR"
    assert "10000" in body_of(refused.value)["message"]
    with pytest.raises(ContactsApiException) as too_big:
        await call(api.do_search, public_object_search_request=search_request(everyone, limit=201))
    assert too_big.value.status == 400


async def test_a_write_is_searchable_only_after_the_index_lag(hubspot: HubSpotSandbox) -> None:
    clock = SteppedClock(START)
    hubspot.clock = clock
    hubspot.search_lag = 3.0
    sdk = client(hubspot).crm.contacts
    by_email = search_request([Filter(property_name="email", operator="EQ", value="late@example.com")])

    made = await call(
        sdk.basic_api.create,
        simple_public_object_input_for_create=SimplePublicObjectInputForCreate(
            properties={"email": "late@example.com", "firstname": "Old"}
        ),
    )
    assert (await call(sdk.search_api.do_search, public_object_search_request=by_email)).total == 0
    clock.advance(3)
    found = await call(sdk.search_api.do_search, public_object_search_request=by_email)
    assert [r.id for r in found.results] == [made.id]

    await call(
        sdk.basic_api.update,
        contact_id=made.id,
        simple_public_object_input=SimplePublicObjectInput(properties={"firstname": "New"}),
    )
    # The read endpoints see the write at once; search still answers the indexed copy.
    assert (await call(sdk.basic_api.get_by_id, made.id, properties=["firstname"])).properties[
        "firstname"
    ] == "New"
    stale = await call(sdk.search_api.do_search, public_object_search_request=by_email)
    assert stale.results[0].properties["firstname"] == "Old"
    clock.advance(2.999)
    assert (await call(sdk.search_api.do_search, public_object_search_request=by_email)).results[
        0
    ].properties["firstname"] == "Old"
    clock.advance(0.001)
    fresh = await call(sdk.search_api.do_search, public_object_search_request=by_email)
    assert fresh.results[0].properties["firstname"] == "New"

    # Archived objects leave the index after the lag too.
    await call(sdk.basic_api.archive, made.id)
    clock.advance(3)
    assert (await call(sdk.search_api.do_search, public_object_search_request=by_email)).total == 0


# ----- basic and batch endpoints ------------------------------------------------------------------


async def test_basic_endpoints_unique_email_and_id_property(hubspot: HubSpotSandbox) -> None:
    sdk = client(hubspot).crm.contacts.basic_api
    made = await call(
        sdk.create,
        simple_public_object_input_for_create=SimplePublicObjectInputForCreate(
            properties={"email": "Ann@Example.com", "firstname": "Ann"}
        ),
    )
    assert made.id.isdigit() and made.properties["hs_object_id"] == made.id
    assert made.properties["email"] == "ann@example.com"  # HubSpot keeps emails in lower case
    assert made.created_at == made.updated_at and made.archived is False

    with pytest.raises(ContactsApiException) as taken:
        await call(
            sdk.create,
            simple_public_object_input_for_create=SimplePublicObjectInputForCreate(
                properties={"email": "ann@example.com"}
            ),
        )
    assert taken.value.status == 409
    assert body_of(taken.value)["category"] == "CONFLICT"
    assert body_of(taken.value)["message"] == f"Contact already exists. Existing ID: {made.id}"

    by_email = await call(sdk.get_by_id, "ann@example.com", id_property="email", properties=["firstname"])
    assert by_email.id == made.id and by_email.properties["firstname"] == "Ann"

    with pytest.raises(ContactsApiException) as unknown:
        await call(
            sdk.update,
            contact_id=made.id,
            simple_public_object_input=SimplePublicObjectInput(properties={"nickname": "A"}),
        )
    assert unknown.value.status == 400
    problem = body_of(unknown.value)
    assert problem["category"] == "VALIDATION_ERROR"
    assert problem["errors"][0]["code"] == "PROPERTY_DOESNT_EXIST"
    assert problem["errors"][0]["context"] == {"propertyName": ["nickname"]}
    assert 'Property \\"nickname\\" does not exist' in problem["message"]


async def test_batch_create_read_update_upsert_and_archive(hubspot: HubSpotSandbox) -> None:
    batch = client(hubspot).crm.contacts.batch_api
    created = await call(
        batch.create,
        batch_input_simple_public_object_batch_input_for_create=BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[{"properties": {"email": f"b{i}@example.com", "firstname": f"B{i}"}} for i in range(3)]
        ),
    )
    assert type(created).__name__ == "BatchResponseSimplePublicObject"  # 201: every input created
    assert created.status == "COMPLETE" and created.completed_at is not None
    ids = {r.properties["email"]: r.id for r in created.results}
    assert sorted(ids) == ["b0@example.com", "b1@example.com", "b2@example.com"]

    read = await call(
        batch.read,
        batch_read_input_simple_public_object_id=BatchReadInputSimplePublicObjectId(
            inputs=[{"id": "b1@example.com"}, {"id": "nobody@example.com"}],
            id_property="email",
            properties=["firstname"],
        ),
    )
    assert type(read).__name__ == "BatchResponseSimplePublicObjectWithErrors"  # 207
    assert [(r.id, r.properties["firstname"]) for r in read.results] == [(ids["b1@example.com"], "B1")]
    assert read.num_errors == 1
    assert read.errors[0].category == "OBJECT_NOT_FOUND"
    assert read.errors[0].context == {"ids": ["nobody@example.com"]}

    updated = await call(
        batch.update,
        batch_input_simple_public_object_batch_input=BatchInputSimplePublicObjectBatchInput(
            inputs=[
                {"id": ids["b0@example.com"], "properties": {"lastname": "Zero"}},
                {"id": "999999", "properties": {"lastname": "Nobody"}},
            ]
        ),
    )
    assert [r.properties["lastname"] for r in updated.results] == ["Zero"]
    assert updated.errors[0].category == "OBJECT_NOT_FOUND" and updated.errors[0].context == {
        "ids": ["999999"]
    }

    upserted = await call(
        batch.upsert,
        batch_input_simple_public_object_batch_input_upsert=BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                {"id": "b2@example.com", "idProperty": "email", "properties": {"firstname": "Two"}},
                {"id": "new@example.com", "idProperty": "email", "properties": {"firstname": "New"}},
            ]
        ),
    )
    assert type(upserted).__name__ == "BatchResponseSimplePublicUpsertObject"
    outcome = {r.properties["email"]: (r.new, r.properties["firstname"]) for r in upserted.results}
    assert outcome == {"b2@example.com": (False, "Two"), "new@example.com": (True, "New")}
    assert next(r.id for r in upserted.results if not r.new) == ids["b2@example.com"]

    await call(
        batch.archive,
        batch_input_simple_public_object_id=BatchInputSimplePublicObjectId(
            inputs=[{"id": ids["b0@example.com"]}, {"id": ids["b1@example.com"]}]
        ),
    )
    basic = client(hubspot).crm.contacts.basic_api
    live = await call(basic.get_page, limit=100)
    gone = await call(basic.get_page, limit=100, archived=True)
    assert sorted(r.id for r in gone.results) == sorted([ids["b0@example.com"], ids["b1@example.com"]])
    assert all(r.archived and r.archived_at is not None for r in gone.results)
    assert {r.properties["email"] for r in live.results} == {"b2@example.com", "new@example.com"}
    with pytest.raises(ContactsApiException) as archived:
        await call(basic.get_by_id, ids["b0@example.com"])
    assert archived.value.status == 404


async def test_batch_update_refuses_the_whole_batch_for_a_bad_value_and_lists_pages(
    hubspot: HubSpotSandbox,
) -> None:
    ids = [r["id"] for r in seed_contacts(hubspot, 12)]
    sdk = client(hubspot).crm.contacts
    with pytest.raises(ContactsApiException) as refused:
        await call(
            sdk.batch_api.update,
            batch_input_simple_public_object_batch_input=BatchInputSimplePublicObjectBatchInput(
                inputs=[
                    {"id": ids[0], "properties": {"firstname": "Changed"}},
                    {"id": ids[1], "properties": {"email": "not an email"}},
                ]
            ),
        )
    assert refused.value.status == 400
    assert body_of(refused.value)["errors"][0]["code"] == "INVALID_EMAIL"
    assert hubspot.get_record("contacts", ids[0])["properties"]["firstname"] == "P0"  # type: ignore[index]

    pages: list[list[str]] = []
    after = None
    while True:
        page = await call(sdk.basic_api.get_page, limit=5, after=after)
        pages.append([r.id for r in page.results])
        if page.paging is None:
            break
        after = page.paging.next.after
    assert pages == [ids[:5], ids[5:10], ids[10:]]


async def test_batch_create_is_all_or_nothing_unless_inputs_carry_trace_ids(hubspot: HubSpotSandbox) -> None:
    batch = client(hubspot).crm.contacts.batch_api
    hubspot.seed("contacts", [{"id": "777", "properties": {"email": "held@example.com"}}])
    one_bad = [
        {"properties": {"email": "fine@example.com"}},
        {"properties": {"email": "odd@example.com", "favourite_colour": "red"}},
    ]
    with pytest.raises(ContactsApiException) as refused:
        await call(
            batch.create,
            batch_input_simple_public_object_batch_input_for_create=BatchInputSimplePublicObjectBatchInputForCreate(
                inputs=one_bad
            ),
        )
    assert refused.value.status == 400
    assert body_of(refused.value)["errors"][0]["code"] == "PROPERTY_DOESNT_EXIST"
    assert [r["properties"]["email"] for r in hubspot.records("contacts")] == ["held@example.com"]

    with pytest.raises(ContactsApiException) as conflict:
        await call(
            batch.create,
            batch_input_simple_public_object_batch_input_for_create=BatchInputSimplePublicObjectBatchInputForCreate(
                inputs=[
                    {"properties": {"email": "fine@example.com"}},
                    {"properties": {"email": "held@example.com"}},
                ]
            ),
        )
    assert conflict.value.status == 409
    assert body_of(conflict.value)["message"] == "Contact already exists. Existing ID: 777"
    assert len(hubspot.records("contacts")) == 1

    traced = [
        {"properties": {"email": "fine@example.com"}, "objectWriteTraceId": "t-1"},
        {"properties": {"email": "odd@example.com", "favourite_colour": "red"}, "objectWriteTraceId": "t-2"},
        {"properties": {"email": "held@example.com"}, "objectWriteTraceId": "t-3"},
    ]
    partial = await call(
        batch.create,
        batch_input_simple_public_object_batch_input_for_create=BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=traced
        ),
    )
    assert type(partial).__name__ == "BatchResponseSimplePublicObjectWithErrors"  # 207
    assert [(r.properties["email"], r.object_write_trace_id) for r in partial.results] == [
        ("fine@example.com", "t-1")
    ]
    errors = {e.context["objectWriteTraceId"][0]: e for e in partial.errors}
    assert errors["t-2"].category == "VALIDATION_ERROR"
    assert errors["t-2"].errors[0].code == "PROPERTY_DOESNT_EXIST"
    assert errors["t-3"].category == "CONFLICT" and errors["t-3"].message.endswith("Existing ID: 777")
    assert partial.num_errors == 2

    with pytest.raises(ContactsApiException) as too_many:
        await call(
            batch.create,
            batch_input_simple_public_object_batch_input_for_create=BatchInputSimplePublicObjectBatchInputForCreate(
                inputs=[{"properties": {"email": f"n{i}@example.com"}} for i in range(101)]
            ),
        )
    assert too_many.value.status == 400
    assert len(hubspot.records("contacts")) == 2


# ----- properties and associations ----------------------------------------------------------------


async def test_custom_properties_are_created_once_and_checked_on_write(hubspot: HubSpotSandbox) -> None:
    sdk = client(hubspot)
    core = sdk.crm.properties.core_api
    kind = PropertyCreate(
        name="ecosire_type",
        label="ECOSIRE type",
        type="string",
        field_type="text",
        group_name="contactinformation",
    )
    tags = PropertyCreate(
        name="ecosire_tags",
        label="ECOSIRE tags",
        type="enumeration",
        field_type="checkbox",
        group_name="contactinformation",
        options=[
            OptionInput(label=t.title(), value=t, hidden=False, display_order=i)
            for i, t in enumerate(("vip", "partner", "press"))
        ],
    )
    made = await call(core.create, "contacts", property_create=kind)
    assert (made.name, made.type, made.hubspot_defined) == ("ecosire_type", "string", False)
    made_tags = await call(core.create, "contacts", property_create=tags)
    assert [o.value for o in made_tags.options] == ["vip", "partner", "press"]
    with pytest.raises(PropertiesApiException) as again:
        await call(core.create, "contacts", property_create=kind)
    assert again.value.status == 409
    names = {p.name for p in (await call(core.get_all, "contacts")).results}
    assert {"email", "firstname", "lastmodifieddate", "ecosire_type", "ecosire_tags"} <= names

    basic = sdk.crm.contacts.basic_api
    written = await call(
        basic.create,
        simple_public_object_input_for_create=SimplePublicObjectInputForCreate(
            properties={"email": "t@example.com", "ecosire_type": "customer", "ecosire_tags": "vip;press"}
        ),
    )
    assert written.properties["ecosire_tags"] == "vip;press"
    with pytest.raises(ContactsApiException) as bad_option:
        await call(
            basic.update,
            contact_id=written.id,
            simple_public_object_input=SimplePublicObjectInput(properties={"ecosire_tags": "vip;gold"}),
        )
    assert bad_option.value.status == 400
    assert body_of(bad_option.value)["errors"][0]["code"] == "INVALID_OPTION"


async def test_deals_associate_with_contacts_the_default_way(hubspot: HubSpotSandbox) -> None:
    sdk = client(hubspot)
    contact = hubspot.seed("contacts", [{"properties": {"email": "buyer@example.com"}}])[0]["id"]
    other = hubspot.seed("contacts", [{"properties": {"email": "other@example.com"}}])[0]["id"]
    deal = await call(
        sdk.crm.deals.basic_api.create,
        simple_public_object_input_for_create=DealInputForCreate(
            properties={
                "dealname": "Big one",
                "amount": "1500.50",
                "dealstage": "qualifiedtobuy",
                "closedate": "2026-04-01T00:00:00Z",
            },
            associations=[
                {
                    "to": {"id": contact},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}],
                }
            ],
        ),
    )
    assert deal.properties["amount"] == "1500.50"
    assert deal.properties["closedate"] == "2026-04-01T00:00:00.000Z"

    v4 = sdk.crm.associations.v4
    linked = await call(v4.basic_api.get_page, "deals", deal.id, "contacts")
    assert [
        (str(r.to_object_id), [(t.category, t.type_id) for t in r.association_types]) for r in linked.results
    ] == [(contact, [("HUBSPOT_DEFINED", 3)])]
    back = await call(v4.basic_api.get_page, "contacts", contact, "deals")
    assert [(str(r.to_object_id), r.association_types[0].type_id) for r in back.results] == [(deal.id, 4)]

    second = hubspot.seed("deals", [{"properties": {"dealname": "Small one"}}])[0]["id"]
    put = await call(v4.basic_api.create_default, "deals", second, "contacts", other)
    assert {(r._from.id, r.to.id, r.association_spec.association_type_id) for r in put.results} == {
        (second, other, 3),
        (other, second, 4),
    }
    batched = await call(
        v4.batch_api.create_default,
        "deals",
        "contacts",
        batch_input_public_default_association_multi_post=BatchInputPublicDefaultAssociationMultiPost(
            inputs=[{"from": {"id": second}, "to": {"id": contact}}]
        ),
    )
    assert batched.status == "COMPLETE" and len(batched.results) == 2

    with_contacts = await call(sdk.crm.deals.basic_api.get_by_id, second, associations=["contacts"])
    assert sorted(a.id for a in with_contacts.associations["contacts"].results) == sorted([contact, other])
    assert {a.type for a in with_contacts.associations["contacts"].results} == {"deal_to_contact"}

    with pytest.raises(Exception) as bad_type:
        await call(
            sdk.crm.deals.basic_api.create,
            simple_public_object_input_for_create=DealInputForCreate(
                properties={"dealname": "Lost"},
                associations=[
                    {
                        "to": {"id": "424242"},
                        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}],
                    }
                ],
            ),
        )
    assert getattr(bad_type.value, "status", None) == 400
    assert "424242" in body_of(bad_type.value)["message"]


# ----- OAuth --------------------------------------------------------------------------------------


async def test_oauth_tokens_refresh_expire_and_may_rotate(hubspot: HubSpotSandbox) -> None:
    clock = SteppedClock(START)
    hubspot.clock = clock
    hubspot.oauth.expires_in = 60
    app = hubspot.oauth
    tokens = client(hubspot).oauth.tokens_api

    def refresh(refresh_token: str) -> Any:
        return tokens.create(
            grant_type="refresh_token",
            client_id=app.client_id,
            client_secret=app.client_secret,
            refresh_token=refresh_token,
        )

    first = await call(refresh, app.refresh_tokens[0])
    assert (first.token_type, first.expires_in, first.refresh_token) == ("bearer", 60, app.refresh_tokens[0])
    contacts = client(hubspot, first.access_token).crm.contacts.basic_api
    assert (await call(contacts.get_page)).results == []

    clock.advance(60 + 150)
    with pytest.raises(ContactsApiException) as stale:
        await call(contacts.get_page)
    assert stale.value.status == 401
    assert body_of(stale.value)["category"] == "EXPIRED_AUTHENTICATION"
    assert "expired 2 minute(s) ago" in body_of(stale.value)["message"]

    second = await call(refresh, first.refresh_token)
    assert second.access_token != first.access_token
    assert (await call(client(hubspot, second.access_token).crm.contacts.basic_api.get_page)).results == []

    app.rotate_refresh_tokens = True
    rotated = await call(refresh, second.refresh_token)
    assert rotated.refresh_token != second.refresh_token
    with pytest.raises(OAuthApiException) as retired:
        await call(refresh, second.refresh_token)
    assert retired.value.status == 400 and body_of(retired.value)["status"] == "BAD_REFRESH_TOKEN"

    with pytest.raises(ContactsApiException) as unknown:
        await call(client(hubspot, "pat-na1-not-a-token").crm.contacts.basic_api.get_page)
    assert unknown.value.status == 401 and body_of(unknown.value)["category"] == "INVALID_AUTHENTICATION"


# ----- rate limits --------------------------------------------------------------------------------


async def test_the_sdk_meets_a_429_with_hubspots_body_and_headers(hubspot: HubSpotSandbox) -> None:
    hubspot.limiter.monotonic = Monotonic()
    hubspot.limits.ten_second = 3
    hubspot.limits.daily = 1000
    api = client(hubspot).crm.contacts.basic_api
    for _ in range(3):
        await call(api.get_page)
    with pytest.raises(ContactsApiException) as limited:
        await call(api.get_page)
    assert limited.value.status == 429
    body = body_of(limited.value)
    assert (body["policyName"], body["errorType"], body["status"]) == (
        "TEN_SECONDLY_ROLLING",
        "RATE_LIMIT",
        "error",
    )
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    headers = limited.value.headers
    assert headers["X-HubSpot-RateLimit-Max"] == "3" and headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "997"


async def test_headers_and_the_rolling_ten_second_window(hubspot: HubSpotSandbox) -> None:
    ticks = Monotonic()
    hubspot.limiter.monotonic = ticks
    hubspot.limits.ten_second = 5
    hubspot.limits.daily = 8
    auth = {"Authorization": f"Bearer {hubspot.api_key}"}
    url = f"{hubspot.url}/crm/v3/objects/contacts"
    statuses: list[int] = []
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(url) as first:
            assert first.status == 200
            assert first.headers["X-HubSpot-RateLimit-Max"] == "5"
            assert first.headers["X-HubSpot-RateLimit-Remaining"] == "4"
            assert first.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
            assert first.headers["X-HubSpot-RateLimit-Daily"] == "8"
            assert first.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "7"
        statuses.append(first.status)
        for step in (1, 1, 1, 1, 1):  # t = 1001 .. 1005: the fifth of these is the sixth request
            ticks.now += step
            async with http.get(url) as answer:
                statuses.append(answer.status)
        assert statuses == [200, 200, 200, 200, 200, 429]
        # Rolling, not fixed: at t = 1010 only the first request (t = 1000) has left the window.
        ticks.now = 1010.0
        async with http.get(url) as answer:
            assert answer.status == 200 and answer.headers["X-HubSpot-RateLimit-Remaining"] == "0"
        async with http.get(url) as answer:
            assert answer.status == 429
        ticks.now = 1011.5  # t = 1001 left too
        async with http.get(url) as answer:
            assert answer.status == 200
        # The daily limit (8) is used up: a DAILY 429 whatever the window says.
        ticks.now = 2000.0
        async with http.get(url) as answer:
            assert answer.status == 200
            assert answer.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
        async with http.get(url) as answer:
            assert answer.status == 429
            daily = await answer.json()
            assert daily["policyName"] == "DAILY" and daily["message"] == "You have reached your daily limit."
    assert hubspot.limiter.refused == {"TEN_SECONDLY_ROLLING": 2, "DAILY": 1}


async def test_search_has_its_own_per_second_limit(hubspot: HubSpotSandbox) -> None:
    ticks = Monotonic()
    hubspot.limiter.monotonic = ticks
    hubspot.limits.search_per_second = 5
    hubspot.limits.ten_second = 100
    auth = {"Authorization": f"Bearer {hubspot.api_key}"}
    search = f"{hubspot.url}/crm/v3/objects/contacts/search"
    async with aiohttp.ClientSession(headers=auth) as http:
        for _ in range(5):
            async with http.post(search, json={}) as answer:
                assert answer.status == 200
                assert "X-HubSpot-RateLimit-Max" not in answer.headers  # search answers carry none
        async with http.post(search, json={}) as answer:
            assert answer.status == 429
            assert (await answer.json())["policyName"] == "SECONDLY"
        # The other endpoints are not held back by the search limit.
        async with http.get(f"{hubspot.url}/crm/v3/objects/contacts") as answer:
            assert answer.status == 200
        ticks.now += 1.0
        async with http.post(search, json={}) as answer:
            assert answer.status == 200


async def test_oauth_calls_have_no_daily_limit_and_the_portal_id_is_exposed(hubspot: HubSpotSandbox) -> None:
    hubspot.limits.oauth_ten_second = 110
    hubspot.limits.daily = 5
    grant = await call(
        client(hubspot).oauth.tokens_api.create,
        grant_type="refresh_token",
        client_id=hubspot.oauth.client_id,
        client_secret=hubspot.oauth.client_secret,
        refresh_token=hubspot.oauth.refresh_tokens[0],
    )
    auth = {"Authorization": f"Bearer {grant.access_token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        for _ in range(7):  # more than the private app's daily 5: OAuth calls have no daily limit
            async with http.get(f"{hubspot.url}/account-info/v3/details") as answer:
                assert answer.status == 200
                assert (await answer.json())["portalId"] == hubspot.portal_id
                assert answer.headers["X-HubSpot-RateLimit-Max"] == "110"
                assert "X-HubSpot-RateLimit-Daily" not in answer.headers


# ----- fault injection ----------------------------------------------------------------------------


async def test_faults_answer_in_hubspots_shape_and_lost_answers_commit(hubspot: HubSpotSandbox) -> None:
    batch = client(hubspot).crm.contacts.batch_api
    hubspot.faults.add("POST /crm/v3/objects/contacts/batch/create", status=502)
    hubspot.faults.add("POST /crm/v3/objects/contacts/batch/create", status=429)
    hubspot.faults.add("POST /crm/v3/objects/contacts/batch/create", status=504, after_commit=True)
    body = BatchInputSimplePublicObjectBatchInputForCreate(
        inputs=[{"properties": {"email": "lost@example.com"}}]
    )
    with pytest.raises(ContactsApiException) as bad_gateway:
        await call(batch.create, batch_input_simple_public_object_batch_input_for_create=body)
    assert bad_gateway.value.status == 502 and body_of(bad_gateway.value)["status"] == "error"
    with pytest.raises(ContactsApiException) as throttled:
        await call(batch.create, batch_input_simple_public_object_batch_input_for_create=body)
    assert body_of(throttled.value)["policyName"] == "TEN_SECONDLY_ROLLING"
    assert hubspot.records("contacts") == []
    with pytest.raises(ContactsApiException) as lost:
        await call(batch.create, batch_input_simple_public_object_batch_input_for_create=body)
    assert lost.value.status == 504
    # The answer was lost, the write was not: the contact is there, findable by its email.
    assert [r["properties"]["email"] for r in hubspot.records("contacts")] == ["lost@example.com"]
    assert hubspot.requests["POST /crm/v3/objects/contacts/batch/create"] == 3
    assert hubspot.requests["rate_limited"] == 1


async def test_admin_endpoints_seed_edit_and_list_hubspot_objects(hubspot: HubSpotSandbox) -> None:
    async with aiohttp.ClientSession() as http:
        seeded = f"{hubspot.admin_url}/records/contacts"
        async with http.post(seeded, json=[{"properties": {"email": "admin@example.com"}}]) as answer:
            assert answer.status == 201
            made = (await answer.json())["data"][0]
        async with http.patch(f"{seeded}/{made['id']}", json={"firstname": "Edited"}) as answer:
            assert answer.status == 200
        async with http.get(seeded) as answer:
            listed = (await answer.json())["data"]
    assert [(r["id"], r["properties"]["firstname"]) for r in listed] == [(made["id"], "Edited")]
    assert hubspot.requests == {}  # the admin endpoints are not counted


async def test_a_test_in_another_process_turns_the_hubspot_knobs(hubspot: HubSpotSandbox) -> None:
    hubspot.limiter.monotonic = Monotonic()
    knobs = f"{hubspot.admin_url}/hubspot"
    auth = {"Authorization": f"Bearer {hubspot.api_key}"}
    async with aiohttp.ClientSession() as http:
        async with http.put(
            knobs, json={"search_lag": 5, "limits": {"ten_second": 1}, "expires_in": 90}
        ) as answer:
            assert answer.status == 200
            settings = await answer.json()
        assert (settings["search_lag"], settings["limits"]["ten_second"], settings["expires_in"]) == (
            5.0,
            1,
            90,
        )
        assert hubspot.search_lag == 5.0 and hubspot.oauth.expires_in == 90
        statuses = []
        for _ in range(2):
            async with http.get(f"{hubspot.url}/crm/v3/objects/deals", headers=auth) as answer:
                statuses.append(answer.status)
        assert statuses == [200, 429]
        async with http.put(knobs, json={"search_lagg": 1}) as answer:
            assert answer.status == 400
            assert "search_lagg" in (await answer.json())["message"]


# ----- the runner ---------------------------------------------------------------------------------


async def test_the_sandbox_command_serves_hubspot_and_prints_how_to_reach_it() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crmsyncd", "sandbox", "--crm", "hubspot", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.search(r"HUBSPOT_API_URL=(\S+)\s+HUBSPOT_ACCESS_TOKEN=(\S+)", first)
        assert found, first
        url, token = found.groups()
        account = await call(
            lambda: HubSpot(access_token=token, host=url).crm.contacts.basic_api.get_page(limit=1)
        )
        assert account.results == []
    finally:
        proc.terminate()
        await proc.wait()
