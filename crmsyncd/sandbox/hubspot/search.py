"""`POST /crm/v3/objects/{objectType}/search`, over the lagging search index.

As documented (developers.hubspot.com, CRM search, "Limitations"):
- filters within a group are ANDed, groups ORed; at most 5 groups, 10 filters a group, 25 in all;
- `limit` at most 200 (a larger one is a 400 here: the docs give the maximum, not the answer);
- at most 10,000 results per query: `after` at or beyond 10,000 is a 400. The page before the cap
  still offers `paging.next.after = "10000"` when more results match, so a client that follows
  `paging` blindly meets the 400, as it does against HubSpot;
- `total` counts every match (beyond 10,000 too);
- a write becomes searchable only after the index lag (`HubSpotSandbox.search_lag`);
- archived objects are never found.

Where the docs are silent, chosen here:
- `after` is the offset of the page's first result, as a decimal string (HubSpot's is opaque);
- string comparisons ignore case (HubSpot's index does; it documents IN wanting lower case);
  datetime properties compare as instants, given as epoch milliseconds or ISO 8601; numbers as
  numbers;
- NEQ and NOT_IN also match objects without the property;
- results with equal sort values, and results without `sorts`, come in id order;
- an unknown property in a filter or sort is a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crmsyncd.domain.records import JSON
from crmsyncd.sandbox.hubspot.errors import json_answer, validation
from crmsyncd.sandbox.hubspot.objects import json_body, names_in
from crmsyncd.sandbox.hubspot.properties import PropertyDef, parse_moment
from crmsyncd.sandbox.hubspot.store import numeric_key

if TYPE_CHECKING:
    from crmsyncd.sandbox.hubspot.app import HubSpotSandbox

SEARCH_LIMIT = 200
SEARCH_DEFAULT = 10
RESULT_CAP = 10_000
MAX_GROUPS, MAX_GROUP_FILTERS, MAX_FILTERS = 5, 10, 25
OPERATORS = {
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "NOT_IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
    "CONTAINS_TOKEN",
    "NOT_CONTAINS_TOKEN",
}
# Free-text `query` looks in these (HubSpot's default searchable properties, roughly).
QUERY_PROPERTIES = {
    "contacts": ("email", "firstname", "lastname", "phone", "company"),
    "deals": ("dealname",),
}

Predicate = Callable[[dict[str, str]], bool]


def search_routes(server: HubSpotSandbox, object_type: str) -> list[web.RouteDef]:
    async def search(request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        return json_answer(run_search(server, object_type, body))

    return [web.post(f"/crm/v3/objects/{object_type}/search", search)]


def run_search(server: HubSpotSandbox, object_type: str, body: JSON) -> JSON:
    definitions = server.portal.definitions[object_type]
    limit = _integer(body.get("limit", SEARCH_DEFAULT), "limit")
    if not 1 <= limit <= SEARCH_LIMIT:
        raise validation(f"limit must be between 1 and {SEARCH_LIMIT}, got {limit}", limit=[str(limit)])
    after = _offset(body.get("after"))
    if after >= RESULT_CAP:
        raise validation(
            f"Search results are limited to {RESULT_CAP} per query: after must be less than "
            f"{RESULT_CAP}, got {after}",
            after=[str(after)],
        )
    matches = _predicate(body.get("filterGroups"), definitions)
    query = body.get("query")
    found = [
        snapshot
        for snapshot in server.portal.searchable(object_type, server.now())
        if matches(snapshot["values"]) and _query_matches(query, object_type, snapshot["values"])
    ]
    found.sort(key=lambda s: numeric_key(str(s["id"])))
    for name, descending in reversed(_sorts(body.get("sorts"), definitions)):
        found.sort(key=_sort_key(definitions[name], descending), reverse=descending)
    end = min(after + limit, RESULT_CAP, len(found))
    names = names_in(body, "properties")
    results = [
        server.portal.wire_values(
            object_type, str(s["id"]), s["values"], s["createdAt"], s["updatedAt"], False, None, names
        )
        for s in found[after:end]
    ]
    answer: JSON = {"total": len(found), "results": results}
    if end < len(found):
        answer["paging"] = {"next": {"after": str(end)}}
    return answer


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise validation(f"{name} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise validation(f"{name} must be an integer, got {value!r}") from None


def _offset(value: object) -> int:
    if value in (None, ""):
        return 0
    offset = _integer(value, "after")
    if offset < 0:
        raise validation(f"after must not be negative, got {offset}")
    return offset


def _sorts(raw: object, definitions: dict[str, PropertyDef]) -> list[tuple[str, bool]]:
    """`[{"propertyName", "direction": "ASCENDING"|"DESCENDING"}]`; a bare name (the SDK types sorts
    as strings) sorts ascending, "-name" descending."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise validation("sorts must be a list")
    sorts: list[tuple[str, bool]] = []
    for item in raw:
        if isinstance(item, str):
            name, descending = item.removeprefix("-"), item.startswith("-")
        elif isinstance(item, dict):
            name = str(item.get("propertyName", ""))
            direction = str(item.get("direction", "ASCENDING")).upper()
            if direction not in ("ASCENDING", "DESCENDING"):
                raise validation(f"sort direction must be ASCENDING or DESCENDING, got {direction}")
            descending = direction == "DESCENDING"
        else:
            raise validation("each sort is an object with propertyName and direction")
        if name not in definitions:
            raise validation(f"Unable to sort by unknown property {name}", propertyName=[name])
        sorts.append((name, descending))
    return sorts


def _sort_key(definition: PropertyDef, descending: bool) -> Callable[[JSON], tuple[int, Any]]:
    """Objects without the value sort last either way (chosen: HubSpot does not document it); the
    sort is stable, so equal values keep the id order."""
    missing = (0, 0) if descending else (1, 0)

    def key(snapshot: JSON) -> tuple[int, Any]:
        comparable = _comparable(definition, snapshot["values"].get(definition.name))
        return missing if comparable is None else (1 if descending else 0, comparable)

    return key


def _comparable(definition: PropertyDef, value: str | None) -> Any:
    if value is None:
        return None
    if definition.type in ("datetime", "date"):
        moment = parse_moment(value)
        return None if moment is None else moment.timestamp()
    if definition.type == "number":
        try:
            return float(value)
        except ValueError:
            return None
    return value.casefold()


def _predicate(raw: object, definitions: dict[str, PropertyDef]) -> Predicate:
    if raw is None or raw == []:
        return lambda values: True
    if not isinstance(raw, list):
        raise validation("filterGroups must be a list")
    if len(raw) > MAX_GROUPS:
        raise validation(f"Too many filter groups: {len(raw)} > {MAX_GROUPS}")
    groups: list[list[Predicate]] = []
    total = 0
    for group in raw:
        filters = group.get("filters") if isinstance(group, dict) else None
        if not isinstance(filters, list):
            raise validation("each filter group needs a filters list")
        if len(filters) > MAX_GROUP_FILTERS:
            raise validation(f"Too many filters in a group: {len(filters)} > {MAX_GROUP_FILTERS}")
        total += len(filters)
        groups.append([_filter(f, definitions) for f in filters])
    if total > MAX_FILTERS:
        raise validation(f"Too many filters: {total} > {MAX_FILTERS}")
    return lambda values: any(all(test(values) for test in group) for group in groups)


def _filter(raw: object, definitions: dict[str, PropertyDef]) -> Predicate:
    if not isinstance(raw, dict):
        raise validation("each filter is an object with propertyName and operator")
    name, operator = str(raw.get("propertyName", "")), str(raw.get("operator", "EQ")).upper()
    definition = definitions.get(name)
    if definition is None:
        raise validation(f"Unable to filter on unknown property {name}", propertyName=[name])
    if operator not in OPERATORS:
        raise validation(f"{operator} is not a valid filter operator", operator=[operator])

    def get(values: dict[str, str]) -> Any:
        return _comparable(definition, values.get(name))

    if operator == "HAS_PROPERTY":
        return lambda values: values.get(name) not in (None, "")
    if operator == "NOT_HAS_PROPERTY":
        return lambda values: values.get(name) in (None, "")
    if operator in ("IN", "NOT_IN"):
        wanted = raw.get("values")
        if not isinstance(wanted, list) or not wanted:
            raise validation(f"{operator} on {name} needs a values list")
        options = {_comparable(definition, str(v)) for v in wanted}
        if operator == "IN":
            return lambda values: get(values) in options
        return lambda values: get(values) not in options
    if operator in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
        token = str(raw.get("value", "")).casefold().strip("*")
        contained: Predicate = lambda values: token in (values.get(name) or "").casefold()  # noqa: E731
        return contained if operator == "CONTAINS_TOKEN" else (lambda values: not contained(values))
    if raw.get("value") is None:
        raise validation(f"{operator} on {name} needs a value")
    low = _comparable(definition, str(raw["value"]))
    if low is None:
        raise validation(f"{raw['value']!r} is not a valid value for {name}", propertyName=[name])
    if operator == "BETWEEN":
        high = _comparable(definition, str(raw.get("highValue")))
        if high is None:
            raise validation(f"BETWEEN on {name} needs a valid highValue")
        return lambda values: (v := get(values)) is not None and low <= v <= high
    if operator == "EQ":
        return lambda values: get(values) == low
    if operator == "NEQ":
        return lambda values: get(values) != low
    compare: dict[str, Callable[[Any], bool]] = {
        "LT": lambda v: v < low,
        "LTE": lambda v: v <= low,
        "GT": lambda v: v > low,
        "GTE": lambda v: v >= low,
    }
    test = compare[operator]
    return lambda values: (v := get(values)) is not None and test(v)


def _query_matches(query: object, object_type: str, values: dict[str, str]) -> bool:
    if not isinstance(query, str) or not query.strip():
        return True
    needle = query.strip().casefold()
    return any(needle in (values.get(name) or "").casefold() for name in QUERY_PROPERTIES[object_type])
