"""What ECOSIRE and the REST CRM have in common: JSON collections of records addressed by id,
listed through the envelope {"data": [...], "meta": {"total", "page", "limit", "totalPages"}}."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from crmsyncd.connectors.base import ConnectorError, Outcome, Page, RequestStats
from crmsyncd.connectors.http import ApiClient, ApiResponse, MalformedResponse, path_segment
from crmsyncd.connectors.paging import MAX_REQUESTS, read_changes
from crmsyncd.connectors.port import Checkpoint, FeedPage, WriteResult
from crmsyncd.domain.canonical import normalise_key
from crmsyncd.domain.records import JSON, Side

# A lookup that needs more pages than this is too broad to trust: park it rather than guess.
LOOKUP_MAX_PAGES = 10
# GETs one `get_many` keeps in flight: enough to keep a paced API busy, few enough that a batch
# of ids does not open a connection per id. The pacer sets the rate; this only bounds the wait.
READ_CONCURRENCY = 8


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_page(response: ApiResponse) -> Page:
    """Validate the list envelope. Records are not checked: one bad record is the engine's to park,
    not a reason to throw away its page."""
    body = response.body
    if not isinstance(body, dict):
        raise MalformedResponse(f"malformed list response: expected an object, got {_kind(body)}")
    data = body.get("data")
    if not isinstance(data, list):
        raise MalformedResponse(f"malformed list response: 'data' is {_kind(data)}, not a list")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise MalformedResponse(
                f"malformed list response: data[{index}] is {_kind(record)}, not an object"
            )
    meta = body.get("meta")
    if not isinstance(meta, dict):
        raise MalformedResponse(f"malformed list response: 'meta' is {_kind(meta)}, not an object")
    for key in ("total", "page", "totalPages"):
        if not _is_int(meta.get(key)) or meta[key] < 0:
            raise MalformedResponse(f"malformed list response: meta.{key} is not a whole number")
    if "limit" in meta and (not _is_int(meta["limit"]) or meta["limit"] < 0):
        raise MalformedResponse("malformed list response: meta.limit is not a whole number")
    return Page(
        records=data,
        page=meta["page"],
        total_pages=meta["totalPages"],
        total=meta["total"],
        server_time=response.server_time,
    )


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def normalise(value: Any) -> str | None:
    """The match-key form of a value (trimmed, case-folded, NFC), as the engine compares it;
    None for anything but a non-blank string."""
    return normalise_key(value)


def parse_record(response: ApiResponse) -> JSON:
    if not isinstance(response.body, dict):
        raise MalformedResponse(f"expected a record object, got {_kind(response.body)}")
    return response.body


async def _one(write: Awaitable[JSON]) -> WriteResult:
    """A single write's outcome as a batch result: refused or failed, it is that input's error."""
    try:
        return WriteResult(record=await write)
    except ConnectorError as exc:
        return WriteResult(error=exc)


def _ignore(response: ApiResponse) -> None:
    return None


def require_aware(moment: datetime | None) -> None:
    if moment is not None and moment.tzinfo is None:
        raise ValueError("updated_after must be timezone-aware")


class CollectionConnector:
    """Shared operations; subclasses say where a resource lives and how it is listed and found."""

    side: Side
    id_field: str
    updated_field: str
    created_field: str | None
    stats: RequestStats
    feed_lag: timedelta = timedelta(0)  # a list answers every write made before it

    def __init__(
        self,
        client: ApiClient,
        *,
        id_field: str,
        updated_field: str,
        created_field: str | None = "createdAt",
        page_size: int,
        max_limit: int | None,
    ) -> None:
        self.side = client.side
        self.id_field = id_field
        self.updated_field = updated_field
        self.created_field = created_field
        self.page_size = page_size
        self.stats = client.stats
        self._client = client
        self._max_limit = max_limit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._client.base_url!r})"

    def collection_path(self, resource: str) -> str:
        raise NotImplementedError

    def list_params(self, *, updated_after: datetime | None, page: int, limit: int) -> dict[str, str]:
        raise NotImplementedError

    def _record_path(self, resource: str, record_id: str) -> str:
        if not isinstance(record_id, str) or not record_id.strip():
            # Reaches the engine as a parkable error instead of a crashed worker.
            raise ConnectorError(
                Outcome.PERMANENT,
                f"unusable record id {record_id!r}",
                side=self.side,
                path=self.collection_path(resource),
            )
        return f"{self.collection_path(resource)}/{path_segment(record_id)}"

    async def list_page(
        self, resource: str, *, updated_after: datetime | None, page: int, limit: int
    ) -> Page:
        require_aware(updated_after)
        if page < 1:
            raise ValueError("page is 1-based")
        if limit < 1 or (self._max_limit is not None and limit > self._max_limit):
            raise ValueError(f"limit must be between 1 and {self._max_limit}")
        return await self._client.request(
            "GET",
            self.collection_path(resource),
            kind="lists",
            params=self.list_params(updated_after=updated_after, page=page, limit=limit),
            parse=parse_page,
        )

    def changes(
        self,
        resource: str,
        *,
        since: datetime | None,
        checkpoint: Checkpoint | None = None,
        max_requests: int | None = None,
    ) -> AsyncGenerator[FeedPage, None]:
        """The page-number feed (connectors/paging.py) over this API's list. It re-anchors on
        stamps alone: `checkpoint` carries no token of its."""
        return read_changes(
            self, resource, since=since, page_size=self.page_size, max_requests=max_requests or MAX_REQUESTS
        )

    async def get(self, resource: str, record_id: str) -> JSON:
        path = self._record_path(resource, record_id)
        return await self._client.request("GET", path, kind="reads", parse=parse_record)

    async def get_many(self, resource: str, record_ids: Sequence[str]) -> dict[str, JSON]:
        """Neither API has a batch read: one GET per id, READ_CONCURRENCY at a time, each paced
        by the connector's pacer like any other request; a 404 (or 410) means gone, and the id
        is left out. Any other failure cancels the rest and is raised, as `get` raises it."""
        found: dict[str, JSON] = {}
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(record_id: str) -> None:
            async with gate:
                try:
                    found[record_id] = await self.get(resource, record_id)
                except ConnectorError as exc:
                    if exc.outcome is not Outcome.NOT_FOUND:
                        raise

        try:
            async with asyncio.TaskGroup() as readers:
                for record_id in dict.fromkeys(record_ids):  # each id once, in the order asked
                    readers.create_task(read(record_id))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        return found

    # Neither API has batch writes: the engine's batcher sends each write as its own call.
    max_batch = 1

    async def create_many(self, resource: str, bodies: Sequence[JSON]) -> list[WriteResult]:
        return [await _one(self.create(resource, body)) for body in bodies]

    async def update_many(self, resource: str, changes: Sequence[tuple[str, JSON]]) -> list[WriteResult]:
        return [await _one(self.update(resource, record_id, body)) for record_id, body in changes]

    async def delete_many(self, resource: str, record_ids: Sequence[str]) -> list[WriteResult]:
        results = []
        for record_id in record_ids:
            try:
                await self.delete(resource, record_id)
            except ConnectorError as exc:
                if exc.outcome is not Outcome.NOT_FOUND:
                    results.append(WriteResult(error=exc))
                    continue
            results.append(WriteResult(record={self.id_field: record_id}))  # gone: done
        return results

    async def create(self, resource: str, body: JSON) -> JSON:
        return await self._client.request(
            "POST",
            self.collection_path(resource),
            kind="creates",
            body=body,
            parse=self._parse_created,
        )

    def _parse_created(self, response: ApiResponse) -> JSON:
        record = parse_record(response)
        new_id = record.get(self.id_field)
        # Without the new id we cannot map the record; the write did happen, so the engine must
        # find it by its match key (MalformedResponse on a POST gives committed_maybe=True).
        if not isinstance(new_id, str | int) or isinstance(new_id, bool) or new_id == "":
            raise MalformedResponse(f"created record has no usable {self.id_field!r}")
        return record

    async def update(self, resource: str, record_id: str, body: JSON) -> JSON:
        path = self._record_path(resource, record_id)
        return await self._client.request("PATCH", path, kind="updates", body=body, parse=parse_record)

    async def delete(self, resource: str, record_id: str) -> None:
        path = self._record_path(resource, record_id)
        await self._client.request("DELETE", path, kind="deletes", parse=_ignore, expect_json=False)

    async def lookup(
        self,
        resource: str,
        params_for_page: Callable[[int], dict[str, str]],
        field: str,
        value: str,
    ) -> list[JSON]:
        """Page through a search, keeping records whose `field` equals `value` exactly
        (trimmed, case-folded), each once."""
        needle = normalise(value)
        if not needle:
            return []
        found: dict[str, JSON] = {}
        unkeyed: list[JSON] = []
        page_no = 1
        while True:
            page = await self._client.request(
                "GET",
                self.collection_path(resource),
                kind="lookups",
                params=params_for_page(page_no),
                parse=parse_page,
            )
            for record in page.records:
                if normalise(record.get(field)) != needle:
                    continue
                key = record.get(self.id_field)
                if isinstance(key, str | int) and not isinstance(key, bool):
                    found[str(key)] = record  # a record that moved between pages counts once
                else:
                    unkeyed.append(record)
            if page_no >= page.total_pages or not page.records:
                return [*found.values(), *unkeyed]
            if page_no >= LOOKUP_MAX_PAGES:
                raise ConnectorError(
                    Outcome.PERMANENT,
                    f"lookup by {field!r} matched more than {LOOKUP_MAX_PAGES} pages",
                    side=self.side,
                    method="GET",
                    path=self.collection_path(resource),
                )
            page_no += 1

    async def close(self) -> None:
        """Nothing to release: the session is shared, and the app that made it closes it."""
