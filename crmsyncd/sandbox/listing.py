"""List queries shared by both APIs: parameters, filtering, ordering and the page envelope."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crmsyncd.domain.records import JSON, BadRecord, format_timestamp, parse_timestamp
from crmsyncd.sandbox.responses import ApiError
from crmsyncd.sandbox.schema import Schema

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
    # Typed buckets keep a stray value from breaking the sort; the id settles ties so that
    # records with equal stamps keep one stable order across requests.
    value = record.get(field)
    if isinstance(value, bool) or value is None:
        bucket: tuple[Any, ...] = (2, "")
    elif isinstance(value, int | float):
        bucket = (0, value)
    else:
        bucket = (1, str(value).casefold())
    return (*bucket, str(record.get("id", "")))


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
