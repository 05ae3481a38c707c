"""The sandbox servers speak the two API specs over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from crmsyncd.domain.records import format_timestamp, parse_timestamp
from crmsyncd.sandbox import (
    CrmSandbox,
    EcosireSandbox,
    SandboxServer,
    demo_dataset,
    load_dataset,
    run_sandbox,
)
from crmsyncd.sandbox.ratelimit import FixedWindowLimiter
from crmsyncd.sandbox.schema import unique_key

T0 = datetime(2026, 11, 27, 10, 15, 30, 123000, tzinfo=UTC)


class Answer:
    def __init__(self, status: int, body: Any, headers: CIMultiDictProxy[str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


# These shadow conftest's fixtures on purpose: here ECOSIRE keeps its documented 60/min limit,
# so its X-RateLimit-* headers are exercised too (no test here comes near 60 requests).
@pytest.fixture
async def eco() -> AsyncIterator[EcosireSandbox]:
    async with EcosireSandbox() as server:
        yield server


@pytest.fixture
async def crm() -> AsyncIterator[CrmSandbox]:
    async with CrmSandbox() as server:
        yield server


async def call(
    http: aiohttp.ClientSession,
    server: SandboxServer,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: dict[str, str] | None = None,
    key: str | None = None,
) -> Answer:
    headers = {"Authorization": f"Bearer {server.api_key if key is None else key}"}
    async with http.request(method, server.url + path, json=json, params=params, headers=headers) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return Answer(response.status, body, response.headers)


# ----- auth and envelope -----------------------------------------------------------------------


@pytest.mark.parametrize("server_type", [EcosireSandbox, CrmSandbox])
async def test_missing_or_wrong_key_is_401(
    http: aiohttp.ClientSession, server_type: Callable[[], SandboxServer]
) -> None:
    async with server_type() as server:
        wrong = await call(http, server, "GET", "/contacts", key="nope")
        async with http.get(server.url + "/contacts") as missing:
            assert missing.status == 401
            missing_body = await missing.json()
    expected = {"statusCode": 401, "message": "Unauthorized", "error": "Unauthorized"}
    assert wrong.status == 401
    assert wrong.body == expected
    assert missing_body == expected


async def test_paging_envelope_and_updated_after_is_strict(
    http: aiohttp.ClientSession, eco: EcosireSandbox
) -> None:
    stamps = [T0 + timedelta(seconds=i) for i in range(5)]
    seeded = eco.seed(
        "contacts",
        [{"name": f"P{i}", "email": f"p{i}@x.example", "updatedAt": s} for i, s in enumerate(stamps)],
    )
    assert [r["updatedAt"] for r in seeded] == [format_timestamp(s) for s in stamps]

    params = {"sortBy": "updatedAt", "sortOrder": "asc", "limit": "2"}
    page2 = await call(http, eco, "GET", "/contacts", params={**params, "page": "2"})
    assert page2.status == 200
    assert page2.body["meta"] == {"total": 5, "page": 2, "limit": 2, "totalPages": 3}
    assert [r["name"] for r in page2.body["data"]] == ["P2", "P3"]

    # Strictly after: the record stamped exactly at T is not returned. The same instant written
    # with an explicit offset means the same thing.
    for after in (format_timestamp(stamps[1]), stamps[1].astimezone().isoformat()):
        answer = await call(http, eco, "GET", "/contacts", params={**params, "updatedAfter": after})
        assert [r["name"] for r in answer.body["data"]] == ["P2", "P3"]
        assert answer.body["meta"]["total"] == 3

    bad = await call(http, eco, "GET", "/contacts", params={"updatedAfter": "yesterday"})
    assert bad.status == 400
    assert bad.body["error"] == "Bad Request"


async def test_limit_over_100_is_400(http: aiohttp.ClientSession, crm: CrmSandbox) -> None:
    assert (await call(http, crm, "GET", "/contacts", params={"limit": "100"})).status == 200
    too_many = await call(http, crm, "GET", "/contacts", params={"limit": "101"})
    assert too_many.status == 400
    assert too_many.body == {
        "statusCode": 400,
        "message": "limit must not be greater than 100",
        "error": "Bad Request",
    }
    assert (await call(http, crm, "GET", "/contacts", params={"page": "0"})).status == 400


async def test_list_is_computed_per_request_with_stable_ties(
    http: aiohttp.ClientSession, crm: CrmSandbox
) -> None:
    crm.clock = lambda: T0  # every seeded record gets the same stamp: ties settled by id
    crm.seed("contacts", [{"fullName": f"N{i}"} for i in range(4)])
    params = {"sortBy": "updatedAt", "sortOrder": "asc"}
    first = await call(http, crm, "GET", "/contacts", params=params)
    ids = [r["id"] for r in first.body["data"]]
    assert ids == sorted(ids)

    crm.clock = lambda: T0 + timedelta(seconds=1)
    crm.edit("contacts", ids[0], fullName="moved")
    again = await call(http, crm, "GET", "/contacts", params=params)
    assert [r["id"] for r in again.body["data"]] == [*ids[1:], ids[0]]


async def test_filters_search_type_and_email(
    http: aiohttp.ClientSession, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed(
        "contacts",
        [
            {"name": "Ana Smith", "email": "ana@x.example"},
            {"name": "Acme Ltd", "email": "info@acme.example", "type": "company"},
        ],
    )
    found = await call(http, eco, "GET", "/contacts", params={"search": "ACME"})
    assert [r["name"] for r in found.body["data"]] == ["Acme Ltd"]
    people = await call(http, eco, "GET", "/contacts", params={"type": "person"})
    assert [r["name"] for r in people.body["data"]] == ["Ana Smith"]

    crm.seed("contacts", [{"fullName": "Bo", "emailAddress": " Bo@Y.example "}, {"fullName": "Bob"}])
    exact = await call(http, crm, "GET", "/contacts", params={"emailAddress": "bo@y.example"})
    assert [r["fullName"] for r in exact.body["data"]] == ["Bo"]
    none = await call(http, crm, "GET", "/contacts", params={"emailAddress": "b@y.example"})
    assert none.body["data"] == []


# ----- writes ----------------------------------------------------------------------------------


async def test_duplicate_email_is_409_case_insensitively(
    http: aiohttp.ClientSession, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    first = await call(http, eco, "POST", "/contacts", json={"name": "A", "email": "a@x.example"})
    assert first.status == 201
    again = await call(http, eco, "POST", "/contacts", json={"name": "B", "email": "A@X.Example"})
    assert again.status == 409
    assert again.body == {"statusCode": 409, "message": "email already registered", "error": "Conflict"}
    # Re-sending one's own email in a PATCH is no conflict.
    same = await call(http, eco, "PATCH", f"/contacts/{first.body['id']}", json={"email": "a@x.example"})
    assert same.status == 200

    ok = await call(http, crm, "POST", "/contacts", json={"fullName": "A", "emailAddress": "a@x.example"})
    assert ok.status == 201
    dup = await call(http, crm, "POST", "/contacts", json={"fullName": "B", "emailAddress": "  A@x.EXAMPLE "})
    assert dup.status == 409
    assert dup.body["message"] == "emailAddress already exists"
    assert len(crm.records("contacts")) == 1


async def test_validation_messages_name_the_field(
    http: aiohttp.ClientSession, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    bad = await call(http, eco, "POST", "/contacts", json={"name": "", "tags": "vip", "type": "robot"})
    assert bad.status == 422
    assert bad.body["error"] == "Unprocessable Entity"
    assert bad.body["message"] == [
        "name should not be empty",
        "type must be one of the following values: person, company",
        "tags must be an array",
    ]
    # ECOSIRE wants a dot in the domain; the CRM does not.
    strict = await call(http, eco, "POST", "/contacts", json={"name": "Ops", "email": "ops@intranet"})
    assert strict.body["message"] == ["email must be an email"]
    lenient = await call(
        http, crm, "POST", "/contacts", json={"fullName": "Ops", "emailAddress": "ops@intranet"}
    )
    assert lenient.status == 201

    crm_bad = await call(http, crm, "POST", "/contacts", json={"fullName": "X", "emailAddress": "nope"})
    assert crm_bad.status == 422
    assert crm_bad.body["message"] == "emailAddress must be an email"
    missing = await call(http, crm, "POST", "/contacts", json={"labels": ["a", 1]})
    assert missing.body["message"] == "fullName is required; labels must be an array of strings"

    deal = await call(
        http, eco, "POST", "/deals", json={"title": "T", "amount": 12.5, "currency": "USD", "contactId": "x"}
    )
    assert deal.body["message"] == [
        "amount must be an integer number",
        "currency must be a lowercase ISO 4217 currency code",
        "contactId must reference an existing contact",
    ]
    crm_deal = await call(http, crm, "POST", "/deals", json={"title": "T", "amount": 12.5, "currency": "USD"})
    assert crm_deal.status == 201

    not_json = await call(http, eco, "POST", "/contacts", json=["a list"])
    assert not_json.status == 400


async def test_post_get_patch_delete(http: aiohttp.ClientSession, eco: EcosireSandbox) -> None:
    eco.clock = lambda: T0
    created = await call(
        http, eco, "POST", "/contacts", json={"name": "Ana", "email": "ana@x.example", "bogus": 1}
    )
    assert created.status == 201
    record = created.body
    assert "bogus" not in record
    assert record["type"] == "person" and record["tags"] == [] and record["phone"] is None
    assert record["createdAt"] == record["updatedAt"] == "2026-11-27T10:15:30.123Z"
    path = f"/contacts/{record['id']}"

    eco.clock = lambda: T0 + timedelta(seconds=5)
    patched = await call(http, eco, "PATCH", path, json={"phone": "+1 555"})
    assert patched.status == 200
    assert patched.body == {**record, "phone": "+1 555", "updatedAt": "2026-11-27T10:15:35.123Z"}

    # A PATCH that changes nothing still moves updatedAt.
    eco.clock = lambda: T0 + timedelta(seconds=9)
    noop = await call(http, eco, "PATCH", path, json={})
    assert noop.body["updatedAt"] == "2026-11-27T10:15:39.123Z"

    assert (await call(http, eco, "GET", path)).body == noop.body
    assert (await call(http, eco, "DELETE", path)).status == 204
    gone = await call(http, eco, "GET", path)
    assert gone.status == 404
    assert gone.body == {"statusCode": 404, "message": "Contact not found", "error": "Not Found"}
    assert (await call(http, eco, "DELETE", path)).status == 404

    assert eco.requests["POST /contacts"] == 1
    assert eco.requests["PATCH /contacts/{id}"] == 2
    assert eco.requests["GET /contacts/{id}"] == 2
    assert eco.requests["DELETE /contacts/{id}"] == 2


async def test_ids_are_deterministic(http: aiohttp.ClientSession) -> None:
    async with EcosireSandbox(seed=3) as one, EcosireSandbox(seed=3) as two:
        a = await call(http, one, "POST", "/contacts", json={"name": "A"})
        b = await call(http, two, "POST", "/contacts", json={"name": "A"})
    assert a.body["id"] == b.body["id"]
    assert a.body["id"][14] == "7"  # version nibble of a v7-style UUID


async def test_date_header_follows_the_server_clock(http: aiohttp.ClientSession, crm: CrmSandbox) -> None:
    crm.clock = lambda: T0
    crm.clock_offset = -3600
    answer = await call(http, crm, "GET", "/contacts")
    assert parsedate_to_datetime(answer.headers["Date"]) == T0.replace(microsecond=0) - timedelta(hours=1)


# ----- rate limit ------------------------------------------------------------------------------


async def test_ecosire_rate_limit_429_with_headers(http: aiohttp.ClientSession) -> None:
    async with EcosireSandbox(rate_limit_per_minute=3) as eco:
        remaining = []
        for _ in range(3):
            ok = await call(http, eco, "GET", "/contacts")
            assert ok.status == 200
            remaining.append(ok.headers["X-RateLimit-Remaining"])
        limited = await call(http, eco, "GET", "/contacts")
    assert remaining == ["2", "1", "0"]
    assert limited.status == 429
    assert limited.body["statusCode"] == 429
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    reset_in = int(limited.headers["X-RateLimit-Reset"]) - datetime.now(UTC).timestamp()
    assert 0 < reset_in <= 61
    assert "Retry-After" not in limited.headers
    assert eco.requests["rate_limited"] == 1
    assert eco.requests["GET /contacts"] == 4


async def test_crm_rate_limit_sends_retry_after(http: aiohttp.ClientSession) -> None:
    async with CrmSandbox(rate_limit_per_minute=1, rate_window=30) as crm:
        assert (await call(http, crm, "GET", "/contacts")).status == 200
        limited = await call(http, crm, "GET", "/contacts")
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 30
    assert limited.headers["X-RateLimit-Remaining"] == "0"


def test_fixed_window_opens_again_after_its_length() -> None:
    now = [100.0]
    limiter = FixedWindowLimiter(monotonic=lambda: now[0])
    assert limiter.hit("k", 2, 10).allowed
    assert limiter.hit("k", 2, 10).remaining == 0
    blocked = limiter.hit("k", 2, 10)
    assert not blocked.allowed
    assert blocked.resets_in == 10
    now[0] += 10
    assert limiter.hit("k", 2, 10).remaining == 1


# ----- faults ----------------------------------------------------------------------------------


async def test_after_commit_fault_applies_the_write_and_loses_the_answer(
    http: aiohttp.ClientSession, crm: CrmSandbox
) -> None:
    crm.faults.add("POST /contacts", status=503, after_commit=True)
    lost = await call(http, crm, "POST", "/contacts", json={"fullName": "Lost", "emailAddress": "l@x.y"})
    assert lost.status == 503
    assert lost.body == {"statusCode": 503, "message": "Service Unavailable", "error": "Service Unavailable"}
    assert [r["fullName"] for r in crm.records("contacts")] == ["Lost"]
    # Used up: the retry goes through and meets the record it created.
    retry = await call(http, crm, "POST", "/contacts", json={"fullName": "Lost", "emailAddress": "l@x.y"})
    assert retry.status == 409


async def test_fault_without_commit_writes_nothing_and_matches_by_body(
    http: aiohttp.ClientSession, eco: EcosireSandbox
) -> None:
    eco.faults.add("POST /contacts", status=500, when=lambda body: body.get("email") == "b@x.example")
    ok = await call(http, eco, "POST", "/contacts", json={"name": "A", "email": "a@x.example"})
    failed = await call(http, eco, "POST", "/contacts", json={"name": "B", "email": "b@x.example"})
    assert (ok.status, failed.status) == (201, 500)
    assert [r["name"] for r in eco.records("contacts")] == ["A"]

    eco.faults.add("PATCH /contacts/{id}", status=429, record_id=ok.body["id"], times=2)
    for _ in range(2):
        limited = await call(http, eco, "PATCH", f"/contacts/{ok.body['id']}", json={})
        assert limited.status == 429
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert "X-RateLimit-Reset" in limited.headers
    assert (await call(http, eco, "PATCH", f"/contacts/{ok.body['id']}", json={})).status == 200
    assert eco.requests["rate_limited"] == 2


async def test_reset_fault_drops_the_connection(http: aiohttp.ClientSession, crm: CrmSandbox) -> None:
    crm.faults.add("POST /contacts", reset=True, after_commit=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, crm, "POST", "/contacts", json={"fullName": "Maybe"})
    assert len(crm.records("contacts")) == 1  # committed before the connection died
    assert (await call(http, crm, "GET", "/contacts")).status == 200

    # aiohttp retries an idempotent request once on a dropped connection: two resets to see one.
    crm.faults.add("GET /contacts", reset=True, times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, crm, "GET", "/contacts")
    assert crm.requests["GET /contacts"] == 3


async def test_crm_fault_429_sends_retry_after_and_custom_headers(
    http: aiohttp.ClientSession, crm: CrmSandbox
) -> None:
    crm.faults.add("*", status=429)
    crm.faults.add("GET /contacts", status=429, headers={"Retry-After": "7"})
    first = await call(http, crm, "GET", "/deals")
    second = await call(http, crm, "GET", "/contacts")
    assert (first.status, first.headers["Retry-After"]) == (429, "1")
    assert "X-RateLimit-Limit" not in first.headers  # this CRM has no limit configured
    assert (second.status, second.headers["Retry-After"]) == (429, "7")
    assert crm.requests["rate_limited"] == 2


async def test_malformed_body_and_delay_faults(http: aiohttp.ClientSession, eco: EcosireSandbox) -> None:
    eco.faults.add("GET /contacts", body=b"<html>oops</html>", content_type="text/html", status=502)
    async with http.get(eco.url + "/contacts", headers={"Authorization": f"Bearer {eco.api_key}"}) as r:
        assert (r.status, r.content_type, await r.read()) == (502, "text/html", b"<html>oops</html>")

    eco.faults.add("POST /contacts", delay=5, after_commit=True)
    with pytest.raises(asyncio.TimeoutError):
        await http.post(
            eco.url + "/contacts",
            json={"name": "Slow"},
            headers={"Authorization": f"Bearer {eco.api_key}"},
            timeout=aiohttp.ClientTimeout(total=0.1),
        )
    assert [r["name"] for r in eco.records("contacts")] == ["Slow"]


async def test_faults_match_rejects_nonsense(eco: EcosireSandbox) -> None:
    with pytest.raises(ValueError, match="fault match"):
        eco.faults.add("contacts", status=503)
    eco.faults.add("* /contacts", status=503, times=3)
    assert len(eco.faults) == 1
    eco.faults.clear()
    assert len(eco.faults) == 0


# ----- admin endpoints -------------------------------------------------------------------------


async def test_admin_endpoints_drive_a_server_over_http(
    http: aiohttp.ClientSession, eco: EcosireSandbox
) -> None:
    admin = eco.admin_url
    fault = {"match": "POST /contacts", "status": 503, "after_commit": True}
    async with http.post(f"{admin}/faults", json=fault) as r:
        assert r.status == 201
    garbage = {"match": "GET /contacts", "body_base64": base64.b64encode(b"\xff\xfe").decode()}
    async with http.post(f"{admin}/faults", json=garbage) as r:
        assert r.status == 201

    assert (await call(http, eco, "POST", "/contacts", json={"name": "Z"})).status == 503
    async with http.get(eco.url + "/contacts", headers={"Authorization": f"Bearer {eco.api_key}"}) as r:
        assert await r.read() == b"\xff\xfe"

    async with http.get(f"{admin}/records/contacts") as r:
        assert [c["name"] for c in (await r.json())["data"]] == ["Z"]
    async with http.post(f"{admin}/records/contacts", json=[{"name": "Seeded"}]) as r:
        seeded_id = (await r.json())["data"][0]["id"]
    async with http.patch(f"{admin}/records/contacts/{seeded_id}", json={"name": "Edited"}) as r:
        assert (await r.json())["name"] == "Edited"
    async with http.delete(f"{admin}/records/contacts/{seeded_id}") as r:
        assert r.status == 204
    async with http.get(f"{admin}/faults") as r:
        assert [f["hits"] for f in (await r.json())["data"]] == [1, 1]
    async with http.get(f"{admin}/stats") as r:
        assert (await r.json())["requests"] == {"POST /contacts": 1, "GET /contacts": 1}
    async with http.put(f"{admin}/clock", json={"offset": -120}) as r:
        assert eco.clock_offset == -120
        assert parse_timestamp((await r.json())["now"]) < datetime.now(UTC) - timedelta(seconds=100)
    async with http.delete(f"{admin}/faults") as r:
        assert r.status == 204
    async with http.post(f"{admin}/faults", json={"match": "GET", "oops": 1}) as r:
        assert r.status == 400
    async with http.get(f"{admin}/records/widgets") as r:
        assert r.status == 404
    assert len(eco.faults) == 0
    assert eco.requests["GET /contacts"] == 1  # admin calls are not counted


# ----- demo data and the CLI entry ---------------------------------------------------------------


def test_demo_dataset_overlaps_and_is_valid_per_side() -> None:
    eco, crm = demo_dataset(seed=7, contacts=90)
    assert (eco, crm) == demo_dataset(seed=7, contacts=90)
    eco_emails = {unique_key(c["email"]) for c in eco["contacts"]} - {None}
    crm_emails = {unique_key(c["emailAddress"]) for c in crm["contacts"]} - {None}
    shared = eco_emails & crm_emails
    assert 25 <= len(shared) <= 35
    assert any(c["emailAddress"] != c["emailAddress"].strip().lower() for c in crm["contacts"]
               if unique_key(c["emailAddress"]) in shared)  # fmt: skip

    eco_by_email = {unique_key(c["email"]): c for c in eco["contacts"]}
    renamed = [
        c for c in crm["contacts"]
        if unique_key(c["emailAddress"]) in shared
        and c["fullName"] != eco_by_email[unique_key(c["emailAddress"])]["name"]
    ]  # fmt: skip
    assert len(renamed) == 1

    # Every record is valid for its own API, except the one the CRM takes and ECOSIRE refuses.
    for server, records in ((EcosireSandbox(), eco), (CrmSandbox(), crm)):
        load_dataset(server, records)
        for resource, schema in server.schemas.items():
            for record in server.records(resource):
                _, errors = schema.clean(record, create=True)
                for name, (target, _message) in schema.references.items():
                    if record[name] is not None:
                        assert server.get_record(target, record[name]) is not None
                if record.get("emailAddress") == "ops@intranet":
                    assert EcosireSandbox.schemas["contacts"].clean(
                        {"name": "x", "email": "ops@intranet"}, create=True
                    )[1] == ["email must be an email"]
                else:
                    assert errors == [], (resource, record)
    assert all(isinstance(d["amount"], int) and d["currency"].islower() for d in eco["deals"])
    assert all(d["currency"].isupper() for d in crm["deals"])


def test_seed_fills_ids_and_stamps_in_any_order() -> None:
    eco_records, _ = demo_dataset(seed=1, contacts=30)
    server = EcosireSandbox()
    server.seed("deals", eco_records["deals"])  # deals before contacts works: ids are pre-drawn
    server.seed("contacts", eco_records["contacts"])
    contacts = server.records("contacts")
    assert len({c["id"] for c in contacts}) == len(contacts) == len(eco_records["contacts"])
    assert all(parse_timestamp(c["updatedAt"]) for c in contacts)
    with pytest.raises(ValueError, match="already exists"):
        server.seed("contacts", [contacts[0]])


async def test_run_sandbox_serves_both_until_cancelled(http: aiohttp.ClientSession) -> None:
    ready: asyncio.Future[tuple[EcosireSandbox, CrmSandbox]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_sandbox("127.0.0.1", 0, 0, True, on_ready=lambda e, c: ready.set_result((e, c)))
    )
    eco, crm = await ready
    listed = await call(http, crm, "GET", "/contacts", params={"limit": "1"})
    assert listed.body["meta"]["total"] == len(demo_dataset()[1]["contacts"])
    assert (await call(http, eco, "GET", "/deals")).status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
