"""Delta reads that lose nothing to paging over a changing list.

The APIs page by number over a list computed per request, sorted by updated-at: a record updated
while we page moves to the end and shifts the others, so plain page numbers skip records. Each page
is therefore re-anchored on the last updated-at seen (minus one millisecond, since `updatedAfter`
is strictly after, so equal stamps at a boundary are read again and de-duplicated by id). Only
when a whole page shares one stamp does it fall back to page numbers under the same anchor.

The pass is capped by a signpost, the server's own clock at its first answer: records changed
after it belong to the next pass, so a pass ends even while users keep editing."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from crmsyncd.connectors.base import Connector
from crmsyncd.domain.records import JSON, BadRecord, parse_timestamp

_TICK = timedelta(milliseconds=1)
# The Date header has one-second resolution; the margin keeps records stamped within the second
# of the first answer inside this pass.
_SIGNPOST_MARGIN = timedelta(seconds=1)


@dataclass(slots=True)
class PageOfChanges:
    """New records of one page, in order, and those that cannot even be keyed (no id or stamp)."""

    records: list[tuple[str, datetime, JSON]] = field(default_factory=list)
    unusable: list[tuple[JSON, BadRecord]] = field(default_factory=list)


class PagingLoop(RuntimeError):
    pass


async def read_changes(
    connector: Connector,
    resource: str,
    *,
    since: datetime | None,
    page_size: int,
    max_requests: int = 1_000_000,
) -> AsyncGenerator[PageOfChanges, None]:
    anchor = since
    page = 1
    signpost: datetime | None = None
    # Ids already yielded whose stamp is at or after the anchor: re-reads of them are dropped.
    recent: dict[str, datetime] = {}
    requests = 0
    while True:
        requests += 1
        if requests > max_requests:
            raise PagingLoop(f"{resource}: more than {max_requests} list requests in one pass")
        result = await connector.list_page(resource, updated_after=anchor, page=page, limit=page_size)
        if signpost is None:
            signpost = (result.server_time or datetime.now(UTC)) + _SIGNPOST_MARGIN
        out = PageOfChanges()
        last_stamp: datetime | None = None
        past_signpost = False
        for body in result.records:
            try:
                record_id = _record_id(body, connector.id_field)
                stamp = parse_timestamp(body.get(connector.updated_field), connector.updated_field)
            except BadRecord as exc:
                out.unusable.append((body, exc))
                continue
            if stamp > signpost:
                past_signpost = True
                break
            last_stamp = stamp
            if recent.get(record_id) == stamp:
                continue
            recent[record_id] = stamp
            out.records.append((record_id, stamp, body))
        if out.records or out.unusable:
            yield out
        if past_signpost or len(result.records) < page_size or page >= max(result.total_pages, 1):
            return
        next_anchor = last_stamp - _TICK if last_stamp is not None else None
        if next_anchor is not None and (anchor is None or next_anchor > anchor):
            anchor, page = next_anchor, 1
            recent = {rid: at for rid, at in recent.items() if at > anchor}
        else:
            # A whole page under one stamp: step through it by page number.
            page += 1


def _record_id(body: JSON, id_field: str) -> str:
    value = body.get(id_field)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise BadRecord(id_field, "missing or not an id")
    return str(value)
