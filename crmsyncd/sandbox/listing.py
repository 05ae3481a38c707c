"""List queries shared by both APIs: parameters, filtering, ordering and the page envelope."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crmsyncd.domain.records import JSON, BadRecord, format_timestamp, parse_timestamp
from crmsyncd.sandbox.responses import ApiError
from crmsyncd.sandbox.schema import Schema
from crmsyncd.sandbox.store import Collection, sort_key

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DEFAULT_SORT = "createdAt"


@dataclass(frozen=True, slots=True)
class ListQuery:
    page: int
    limit: int
    sort_by: str
    descending: bool
    # `updatedAfter` in the stored wire form (milliseconds): stored stamps have millisecond
    # precision, so "after T" equals "after T truncated to the millisecond".
    updated_after: str | None
    filters: dict[str, str]


def _positive_int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(400, f"{name} must be a positive integer") from None
    if value < 1:
        raise ApiError(400, f"{name} must be a positive integer")
    return value


def parse_list_query(query: Mapping[str, str], schema: Schema) -> ListQuery:
    """Parameters as the spec has them; anything malformed is a 400, unknown ones are ignored."""
    page = _positive_int(query, "page", 1)
    limit = _positive_int(query, "limit", DEFAULT_LIMIT)
    if limit > MAX_LIMIT:
        raise ApiError(400, f"limit must not be greater than {MAX_LIMIT}")
    sort_by = query.get("sortBy", DEFAULT_SORT)
    if sort_by not in schema.sort_fields:
        raise ApiError(400, f"sortBy must be one of: {', '.join(schema.sort_fields)}")
    order = query.get("sortOrder", "desc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, "sortOrder must be one of: asc, desc")
    updated_after = None
    if "updatedAfter" in query:
        try:
            updated_after = format_timestamp(parse_timestamp(query["updatedAfter"], "updatedAfter"))
        except BadRecord:
            # A '+' offset sent unencoded arrives as a space and lands here, as on real servers.
            raise ApiError(400, "updatedAfter must be a valid ISO 8601 date string") from None
    filters = {name: query[name] for name in schema.filters if query.get(name, "").strip()}
    return ListQuery(page, limit, sort_by, order == "desc", updated_after, filters)


def _sort_key(record: JSON, field: str) -> tuple[Any, ...]:
    return sort_key(record, field)


def list_page(records: Iterable[JSON], query: ListQuery, schema: Schema) -> JSON:
    """The envelope for one page, computed afresh from the current records."""
    selected = [
        record
        for record in records
        if (query.updated_after is None or str(record.get("updatedAt", "")) > query.updated_after)
        and all(schema.filters[name](value, record) for name, value in query.filters.items())
    ]
    selected.sort(key=lambda record: _sort_key(record, query.sort_by), reverse=query.descending)
    start = (query.page - 1) * query.limit
    return {
        "data": selected[start : start + query.limit],
        "meta": {
            "total": len(selected),
            "page": query.page,
            "limit": query.limit,
            "totalPages": math.ceil(len(selected) / query.limit),
        },
    }


def _envelope(data: list[JSON], total: int, query: ListQuery) -> JSON:
    return {
        "data": data,
        "meta": {
            "total": total,
            "page": query.page,
            "limit": query.limit,
            "totalPages": math.ceil(total / query.limit),
        },
    }


def list_collection(collection: Collection, query: ListQuery, schema: Schema) -> JSON:
    """`list_page` over a collection, read from its sorted order instead of sorting every record.

    The same answer as `list_page(collection, query, schema)`: keys are unique (the id settles
    ties), so the sorted order is the sort's order and descending is its exact reverse. A delta
    read (`sortBy=updatedAt` with `updatedAfter`, the sync's query) starts at a binary search:
    stored `updatedAt` values all have the one fixed-width wire form, which orders the same
    case-folded (the sort key) as raw (the filter)."""
    keys = collection.ordered(query.sort_by)
    lo = 0
    after = query.updated_after
    if after is not None and query.sort_by == "updatedAt":
        # The first key whose value is greater than `after`: "after + NUL" is the least string
        # above it, and a key (1, value, id) sorts after the 2-tuple (1, value).
        lo = bisect_left(keys, (1, after.casefold() + "\x00"))
        after = None
    start = (query.page - 1) * query.limit
    if after is None and not query.filters:
        total = len(keys) - lo
        stop = min(start + query.limit, total)
        if query.descending:
            positions: Iterable[int] = range(len(keys) - 1 - start, len(keys) - 1 - stop, -1)
        else:
            positions = range(lo + start, lo + stop)
        rows = [collection.get(keys[i][-1]) for i in positions]
        return _envelope([row for row in rows if row is not None], total, query)
    candidates = keys[lo:]
    if query.descending:
        candidates.reverse()
    selected: list[JSON] = []
    for key in candidates:
        record = collection.get(key[-1])
        if record is None:
            continue
        if after is not None and not str(record.get("updatedAt", "")) > after:
            continue
        if all(schema.filters[name](value, record) for name, value in query.filters.items()):
            selected.append(record)
    return _envelope(selected[start : start + query.limit], len(selected), query)
