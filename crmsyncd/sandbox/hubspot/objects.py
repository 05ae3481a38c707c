"""The basic object endpoints (`/crm/v3/objects/{objectType}[/{id}]`) and the write rules every
endpoint shares: property checks, the unique contact email, associations given with a create.

- `GET` list: `limit` 10 by default, at most 100 (400 above); `after` is the id to go on from (an
  opaque cursor to the client); `archived=true` lists the archived objects only; `properties`
  and `associations` as on a single read.
- `GET /{id}`: `idProperty=email` reads a contact by email; an archived object is 404 unless
  `archived=true`; `associations=contacts` adds the associated ids.
- `POST` (201), `PATCH /{id}` (200, `idProperty` too), `DELETE /{id}`: archives (204, also for an
  id that does not exist: HubSpot's archive is idempotent).
- A contact whose email another live contact holds is 409 CONFLICT, "Contact already exists.
  Existing ID: <id>", as HubSpot words it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from crmsyncd.domain.records import JSON, format_timestamp
from crmsyncd.sandbox.hubspot.errors import (
    HubSpotError,
    PropertyProblem,
    invalid_properties,
    json_answer,
    not_found,
    validation,
)
from crmsyncd.sandbox.hubspot.store import ASSOCIATION_TYPES, SINGULAR, HubObject, Portal, numeric_key

if TYPE_CHECKING:
    from crmsyncd.sandbox.hubspot.app import HubSpotSandbox

LIST_LIMIT = 100
LIST_DEFAULT = 10
Values = dict[str, str | None]


# ----- request helpers ----------------------------------------------------------------------------


async def json_body(request: web.Request) -> JSON:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as error:
        raise validation(f"Invalid input JSON: {error}") from None
    if not isinstance(body, dict):
        raise validation("Invalid input JSON: the request body must be a JSON object")
    return body


def listed(request: web.Request, name: str) -> list[str] | None:
    """A list query parameter, repeated (`?properties=a&properties=b`) or comma-joined."""
    values = [part.strip() for raw in request.query.getall(name, []) for part in raw.split(",")]
    values = [value for value in values if value]
    return values or None


def flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").strip().lower() == "true"


def names_in(body: JSON, key: str) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise validation(f"{key} must be a list of property names")
    return list(value) or None


# ----- the write rules ---------------------------------------------------------------------------


def clean_values(portal: Portal, object_type: str, raw: object) -> Values:
    """The written properties in stored form, or a 400 naming every refused one."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise validation("properties must be an object of property names to values")
    definitions = portal.definitions[object_type]
    values: Values = {}
    problems: list[PropertyProblem] = []
    for name, value in raw.items():
        definition = definitions.get(str(name))
        if definition is None:
            problems.append(
                PropertyProblem(str(name), "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
            )
            continue
        cleaned, problem = definition.clean(value)
        if problem is not None:
            problems.append(problem)
        else:
            values[definition.name] = cleaned
    if problems:
        raise invalid_properties(problems)
    return values


def conflict(existing_id: str) -> HubSpotError:
    return HubSpotError(409, "CONFLICT", f"Contact already exists. Existing ID: {existing_id}")


def check_unique(portal: Portal, object_type: str, values: Values, own_id: str | None) -> None:
    if object_type != "contacts" or "email" not in values:
        return
    holder = portal.email_holder(values["email"])
    if holder is not None and holder != own_id:
        raise conflict(holder)


def parse_associations(portal: Portal, object_type: str, raw: object) -> list[tuple[str, str]]:
    """`[{"to": {"id"}, "types": [{"associationCategory", "associationTypeId"}]}]` of a create input
    -> (to type, to id) pairs; the type id says which object type `to` is."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise validation("associations must be a list")
    by_type_id = {type_id: to for (source, to), type_id in ASSOCIATION_TYPES.items() if source == object_type}
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(raw):
        to = item.get("to") if isinstance(item, dict) else None
        types = item.get("types") if isinstance(item, dict) else None
        if not isinstance(to, dict) or to.get("id") is None or not isinstance(types, list) or not types:
            raise validation(f"associations[{index}] needs to.id and types")
        for spec in types:
            type_id = spec.get("associationTypeId") if isinstance(spec, dict) else None
            category = spec.get("associationCategory") if isinstance(spec, dict) else None
            if category != "HUBSPOT_DEFINED" or type_id not in by_type_id:
                raise validation(
                    f"associations[{index}]: {category} {type_id} is not a valid association type "
                    f"from {SINGULAR[object_type]}",
                    associationTypeId=[str(type_id)],
                )
            target = by_type_id[type_id]
            to_id = str(to["id"])
            if portal.get(target, to_id) is None:
                raise validation(
                    f"associations[{index}]: {SINGULAR[target]} {to_id} does not exist", ids=[to_id]
                )
            pairs.append((target, to_id))
    return pairs


def create(
    server: HubSpotSandbox, object_type: str, values: Values, links: list[tuple[str, str]]
) -> HubObject:
    """Store a checked create (the caller ran `clean_values` and `check_unique`)."""
    portal = server.portal
    now = server.now()
    stamp = format_timestamp(now)
    properties = {name: value for name, value in values.items() if value is not None}
    obj = HubObject(portal.new_id(object_type), properties, properties.get("createdate", stamp), stamp)
    portal.put(object_type, obj, now, lag=server.search_lag)
    for to_type, to_id in links:
        portal.associate(object_type, obj.id, to_type, to_id)
    return obj


def update(server: HubSpotSandbox, object_type: str, obj: HubObject, values: Values) -> HubObject:
    """Apply a checked update: sent properties replace, null or "" clear; the stamp always moves."""
    now = server.now()
    for name, value in values.items():
        if value is None:
            obj.properties.pop(name, None)
        else:
            obj.properties[name] = value
    obj.updated_at = format_timestamp(now)
    server.portal.put(object_type, obj, now, lag=server.search_lag)
    return obj


def archive(server: HubSpotSandbox, object_type: str, obj: HubObject) -> None:
    now = server.now()
    obj.archived = True
    obj.archived_at = format_timestamp(now)
    obj.updated_at = obj.archived_at
    server.portal.put(object_type, obj, now, lag=server.search_lag)


def with_associations(
    server: HubSpotSandbox, object_type: str, obj: HubObject, body: JSON, to_types: list[str] | None
) -> JSON:
    """`body` plus `associations` for each asked type that has any (HubSpot leaves out the rest)."""
    found: dict[str, Any] = {}
    for to_type in to_types or []:
        if (object_type, to_type) not in ASSOCIATION_TYPES:
            continue
        ids = server.portal.associated(object_type, obj.id, to_type)
        if ids:
            kind = f"{SINGULAR[object_type]}_to_{SINGULAR[to_type]}"
            found[to_type] = {"results": [{"id": i, "type": kind} for i in ids]}
    if found:
        body["associations"] = found
    return body


# ----- handlers ----------------------------------------------------------------------------------


def object_routes(server: HubSpotSandbox, object_type: str) -> list[web.RouteDef]:
    base = f"/crm/v3/objects/{object_type}"
    portal = server.portal

    def lookup(request: web.Request, *, archived: bool = False) -> HubObject:
        record_id = request.match_info["id"]
        id_property = request.query.get("idProperty")
        if archived:
            found = portal.get(object_type, record_id, archived=True)
        else:
            found = portal.find(object_type, id_property, record_id)
        if found is None:
            raise not_found(object_type, record_id)
        return found

    async def list_objects(request: web.Request) -> web.StreamResponse:
        limit = _int_query(request, "limit", LIST_DEFAULT)
        if not 1 <= limit <= LIST_LIMIT:
            raise validation(f"limit must be between 1 and {LIST_LIMIT}, got {limit}", limit=[str(limit)])
        archived = flag(request, "archived")
        after = request.query.get("after")
        start = numeric_key(after) if after else (-1, "")
        chosen = sorted(
            (o for o in portal.objects(object_type) if o.archived == archived and numeric_key(o.id) >= start),
            key=lambda o: numeric_key(o.id),
        )
        page, rest = chosen[:limit], chosen[limit:]
        names, to_types = listed(request, "properties"), listed(request, "associations")
        answer: JSON = {
            "results": [
                with_associations(server, object_type, o, portal.wire(object_type, o, names), to_types)
                for o in page
            ]
        }
        if rest:
            link = f"{server.url}{base}?limit={limit}&after={rest[0].id}"
            answer["paging"] = {"next": {"after": rest[0].id, "link": link}}
        return json_answer(answer)

    async def read(request: web.Request) -> web.StreamResponse:
        obj = lookup(request, archived=flag(request, "archived"))
        body = portal.wire(object_type, obj, listed(request, "properties"))
        return json_answer(with_associations(server, object_type, obj, body, listed(request, "associations")))

    async def create_one(request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        values = clean_values(portal, object_type, body.get("properties"))
        check_unique(portal, object_type, values, None)
        links = parse_associations(portal, object_type, body.get("associations"))
        obj = create(server, object_type, values, links)
        return json_answer(portal.wire(object_type, obj, list(values) or None), 201)

    async def update_one(request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        obj = lookup(request)
        values = clean_values(portal, object_type, body.get("properties"))
        check_unique(portal, object_type, values, obj.id)
        update(server, object_type, obj, values)
        return json_answer(portal.wire(object_type, obj, list(values) or None))

    async def archive_one(request: web.Request) -> web.StreamResponse:
        found = portal.get(object_type, request.match_info["id"])
        if found is not None:
            archive(server, object_type, found)
        return web.Response(status=204)

    return [
        web.get(base, list_objects, allow_head=False),
        web.post(base, create_one),
        web.get(f"{base}/{{id}}", read, allow_head=False),
        web.patch(f"{base}/{{id}}", update_one),
        web.delete(f"{base}/{{id}}", archive_one),
    ]


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise validation(f"{name} must be an integer, got {raw!r}") from None
