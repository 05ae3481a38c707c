"""The change feed: HubSpot's CRM search by modification stamp, and the archived list.

`POST /crm/v3/objects/{type}/search` with `lastmodifieddate` (contacts) / `hs_lastmodifieddate`
(deals) GTE the stamp (epoch milliseconds), sorted ascending by it, `limit` up to 200, `after`
paging. A search answers at most 10,000 results (an `after` of 10,000 is refused), so before a
page would cross that cap the filter is re-anchored on the last stamp read and paging starts
again from the first page: the records sharing that stamp are read again and dropped by id.
Records sharing one stamp cannot be told apart by the filter, so a block of more than 10,000 of
them raises PagingLoop instead of losing any (HubSpot sorts by one property only).

Checkpoints: HubSpot promises no order among equal stamps, so after a page ending at stamp S
only the records stamped before S are all read: a page's checkpoint is the greatest (stamp, id)
below S; the last page's is the greatest read.

The index lag (a write is searchable a few seconds after it is made) is covered by the engine's
overlap: it moves `since` back, and the records re-read are the engine's to recognise. Records at
`since` itself are read too (GTE): re-reading the stamp the previous pass ended on is what keeps
the records sharing it.

Archived records are not searchable: after the search has run to its end, the archived list
(`GET /crm/v3/objects/{type}?archived=true`, `after` paging) gives them, as `deleted` ids, those
archived since `since` (by `archivedAt`) or all when HubSpot does not say when.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime

from crmsyncd.connectors.http import MalformedResponse
from crmsyncd.connectors.hubspot.associations import contacts_of
from crmsyncd.connectors.hubspot.client import HubSpotClient, body_of, next_after
from crmsyncd.connectors.hubspot.records import MODIFIED, flatten, object_type, with_contact
from crmsyncd.connectors.port import Checkpoint, FeedPage, PagingLoop
from crmsyncd.domain.records import JSON, BadRecord, format_timestamp, parse_timestamp, record_key

RESULT_CAP = 10_000  # results one search answers at most
LIST_LIMIT = 100  # the basic list endpoint's largest page
MAX_REQUESTS = 1_000_000

Position = tuple[datetime, str]


def epoch_ms(moment: datetime) -> str:
    return str(int(moment.astimezone(UTC).timestamp() * 1000))


def _results(body: JSON, what: str) -> list[JSON]:
    results = body.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise MalformedResponse(f"{what}: 'results' is not a list of objects")
    return results


class SearchFeed:
    """One read of one resource's changes; `pages()` yields them."""

    def __init__(
        self,
        client: HubSpotClient,
        resource: str,
        *,
        since: datetime | None,
        page_size: int,
        properties: Sequence[str],
        max_requests: int | None,
    ) -> None:
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        self.client = client
        self.resource = object_type(resource)
        self.stamp_property = MODIFIED[self.resource]
        self.since = since
        self.page_size = page_size
        self.properties = list(dict.fromkeys([*properties, self.stamp_property, "createdate"]))
        self.max_requests = max_requests or MAX_REQUESTS
        self.requests = 0
        self.total: int | None = None
        self.budget: int | None = None  # records this read takes at most (total + a page)
        self.taken = 0

    async def pages(self) -> AsyncGenerator[FeedPage, None]:
        anchor = self.since
        after: str | None = None
        in_query = 0  # results read under the current anchor
        # Ids read at the greatest stamp so far: a re-anchor on that stamp reads them again.
        at_last: set[str] = set()
        last: Position | None = None  # the greatest (stamp, id) read
        below: Position | None = None  # the greatest (stamp, id) read below the last stamp
        while True:
            body = await self._search(anchor, after)
            results = _results(body, "search")
            if self.total is None:
                total = body.get("total")
                self.total = total if isinstance(total, int) and not isinstance(total, bool) else None
                self.budget = (self.total or 0) + self.page_size
            page = FeedPage(total=self.total)
            fresh: list[tuple[str, datetime, JSON]] = []
            for obj in results:
                try:
                    key = record_key(obj, "id")
                    stamp = parse_timestamp(
                        (obj.get("properties") or {}).get(self.stamp_property) or obj.get("updatedAt"),
                        self.stamp_property,
                    )
                except BadRecord as exc:
                    page.unusable.append((flatten(self.resource, obj), exc))
                    continue
                if last is not None and stamp < last[0]:
                    raise PagingLoop(
                        f"crm {self.resource}: the search is not sorted by {self.stamp_property} "
                        f"({format_timestamp(stamp)} after {format_timestamp(last[0])})"
                    )
                if last is not None and stamp == last[0]:
                    if key in at_last:
                        continue  # read before the re-anchor
                    at_last.add(key)
                    last = max(last, (stamp, key))
                else:
                    below = last  # every record before this stamp has been read
                    at_last = {key}
                    last = (stamp, key)
                fresh.append((key, stamp, obj))
            in_query += len(results)
            self.taken += len(fresh)
            page.records = await self._records(fresh)
            after = next_after(body)
            spent = self.budget is not None and self.taken >= self.budget
            if after is None:
                page.checkpoint = _checkpoint(last)
                page.deleted = await self._archived()
                page.complete = True
                yield page
                return
            page.checkpoint = _checkpoint(below)
            if spent:
                yield page  # the rest belongs to the next pass, from this checkpoint on
                return
            yield page
            if in_query + self.page_size > RESULT_CAP:
                # The next page would cross the cap: search again from the last stamp read.
                assert last is not None
                if anchor is not None and last[0] <= anchor:
                    raise PagingLoop(
                        f"crm {self.resource}: more than {RESULT_CAP} records share the "
                        f"{self.stamp_property} {format_timestamp(last[0])}, more than HubSpot's "
                        "search can page through; the rest of them would be lost, so the read stops "
                        "here (a bulk import or workflow stamped them alike: edit some of them, or "
                        "raise it with HubSpot)"
                    )
                anchor, after, in_query = last[0], None, 0

    async def _search(self, anchor: datetime | None, after: str | None) -> JSON:
        self.requests += 1
        if self.requests > self.max_requests:
            raise PagingLoop(
                f"crm {self.resource}: more than {self.max_requests} search requests in one pass"
            )
        body: JSON = {
            "sorts": [{"propertyName": self.stamp_property, "direction": "ASCENDING"}],
            "properties": self.properties,
            "limit": self.page_size,
        }
        if anchor is not None:
            body["filterGroups"] = [
                {
                    "filters": [
                        {"propertyName": self.stamp_property, "operator": "GTE", "value": epoch_ms(anchor)}
                    ]
                }
            ]
        if after is not None:
            body["after"] = after
        return await self.client.search(self.resource, body, kind="lists")

    async def _records(self, fresh: list[tuple[str, datetime, JSON]]) -> list[tuple[str, datetime, JSON]]:
        if self.resource != "deals" or not fresh:
            return [(key, stamp, flatten(self.resource, obj)) for key, stamp, obj in fresh]
        # Search answers carry no associations: the page's deals' contacts in one batch read.
        links = await contacts_of(self.client, [key for key, _, _ in fresh])
        return [
            (key, stamp, with_contact(self.resource, flatten(self.resource, obj), links.get(key)))
            for key, stamp, obj in fresh
        ]

    async def _archived(self) -> list[str]:
        """Ids archived since `since` (all archived ones on a first read)."""
        gone: list[str] = []
        after: str | None = None
        while True:
            params = {"archived": "true", "limit": str(LIST_LIMIT), "properties": "hs_object_id"}
            if after is not None:
                params["after"] = after
            body = await self.client.call(
                "GET", f"/crm/v3/objects/{self.resource}", kind="lists", params=params, parse=body_of
            )
            for obj in _results(body, "archived list"):
                if self._archived_since(obj):
                    gone.append(str(obj.get("id")))
            after = next_after(body)
            if after is None:
                return gone

    def _archived_since(self, obj: JSON) -> bool:
        if obj.get("id") in (None, ""):
            return False
        if self.since is None:
            return True
        when = obj.get("archivedAt")
        if not when:
            return True  # HubSpot did not say when: reported, the engine settles it
        try:
            return parse_timestamp(when, "archivedAt") >= self.since
        except BadRecord:
            return True


def _checkpoint(position: Position | None) -> Checkpoint | None:
    return None if position is None else Checkpoint(*position)
