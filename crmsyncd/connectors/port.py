"""The connector port: what the engine needs from any API, whatever its paging, batching or auth.

Four APIs, four shapes: ECOSIRE and the REST CRM page by number and write one record a request;
HubSpot searches by stamp with an `after` token and writes batches of 100; Salesforce pages SOQL
results by locator; Pipedrive pages by cursor. The engine sees none of that:

* a **change feed** yields pages of changed records, each with the checkpoint it makes safe;
* a **batch writer** creates, updates, upserts and deletes batches, one result per input;
* **lookups** find records by match key or by ids, in batches;
* an **auth strategy** (connectors/auth.py) signs requests and renews what expires.

Checkpoints are positions in a list sorted by change stamp: `(stamp, id)` of the last record read,
plus an opaque token for APIs that continue from one. The stamp is not opaque on purpose: the
overlap re-read (engine/sync.py) is a rule about stamps, the same for every API, and lives once,
in the engine, instead of once per connector.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from crmsyncd.connectors.base import ConnectorError, RequestStats, SystemIdentity
from crmsyncd.domain.records import JSON, BadRecord, Side

# The finest step of a change stamp: both page-number APIs and HubSpot stamp to the millisecond.
# A filter "strictly after" moved back one tick keeps the stamp itself in the read.
TICK = timedelta(milliseconds=1)


class PagingLoop(RuntimeError):
    """The list did not behave as the feed needs (it kept changing, ignores its paging, is not
    sorted). Everything yielded before it is safe to stage: its checkpoints pass nothing unread."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Every record sorting at or before `(stamp, record_id)` has been read. `token` is the
    feed's own continuation (None for feeds that re-anchor on the stamp alone), saved with the
    cursor and handed back to the same feed only."""

    stamp: datetime
    record_id: str
    token: JSON | None = None


@dataclass(slots=True)
class FeedPage:
    """One page of a change feed: new records in list order (id, stamp, body), those that cannot
    even be keyed, ids the API reports deleted, and the checkpoint this page makes safe."""

    records: list[tuple[str, datetime, JSON]] = field(default_factory=list)
    unusable: list[tuple[JSON, BadRecord]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    # Set on the last page of a read that ran to the list's end (not cut short by its budget).
    complete: bool = False
    # How many records the list held when the read began, where the API says (progress lines).
    total: int | None = None

    def __bool__(self) -> bool:
        return bool(self.records or self.unusable or self.deleted or self.checkpoint or self.complete)


class ChangeFeed(Protocol):
    def changes(
        self,
        resource: str,
        *,
        since: datetime | None,
        checkpoint: Checkpoint | None = None,
        max_requests: int | None = None,
    ) -> AsyncGenerator[FeedPage, None]:
        """Records changed strictly after `since` (all records when None), sorted by stamp, each
        `(id, stamp)` once per read, in at most `max_requests` list requests (a full listing's
        budget; PagingLoop when spent). `checkpoint` is the last one this feed yielded for the
        resource, as saved (its token included), for a feed that continues from a token; `since`
        is where the engine wants the read to start (the checkpoint's stamp less the overlap).
        Raises `PagingLoop` when the API does not behave as the feed needs; everything yielded
        before is safe to stage."""
        ...


@dataclass(frozen=True, slots=True)
class WriteResult:
    """One input's fate: the record as the API returned it (at least its id), or why not."""

    record: JSON | None = None
    error: ConnectorError | None = None

    def __post_init__(self) -> None:
        if (self.record is None) == (self.error is None):
            raise ValueError("a write result holds a record or an error, not both or neither")


class BatchWriter(Protocol):
    """Creates, updates and deletes in the API's batches. A connector whose API upserts by a
    match key (HubSpot's contacts by email) offers `upsert_many` besides; the engine does not use
    it for creates: a create answered 409 is linked to the record holding the key only once the
    engine has checked that no other pair owns it, which an upsert would skip."""

    # Inputs one call may carry (1: the API writes one record a request).
    max_batch: int

    async def create_many(self, resource: str, bodies: Sequence[JSON]) -> list[WriteResult]:
        """One result per body, in input order. A refused input never fails its neighbours: an
        API that refuses a whole batch for one bad input has the batch split until it is found."""
        ...

    async def update_many(self, resource: str, changes: Sequence[tuple[str, JSON]]) -> list[WriteResult]:
        """Partial updates `(id, fields)`; one result per input, in input order."""
        ...

    async def delete_many(self, resource: str, record_ids: Sequence[str]) -> list[WriteResult]:
        """Deletes (or archives); a record already gone is a success (`record` = {id})."""
        ...


class Lookups(Protocol):
    async def get_many(self, resource: str, record_ids: Sequence[str]) -> dict[str, JSON]:
        """The records of these ids, keyed by the id asked for; an id absent from the answer is
        gone (deleted on this side). Any other failure raises ConnectorError. APIs without a
        batch read (ECOSIRE, the REST CRM) send one GET per id, a few at a time, paced like every
        other request (connectors/collection.py); HubSpot uses its batch read."""
        ...

    async def find_by_field(self, resource: str, field: str, value: str) -> list[JSON]:
        """Records whose `field` equals `value`, compared trimmed and case-insensitively."""
        ...


class Connector(ChangeFeed, BatchWriter, Lookups, Protocol):
    """Everything one API offers the engine. Resources are the API's collection names."""

    side: Side
    id_field: str
    updated_field: str
    # Where the API stamps a record's creation (a lost create is looked for among the records
    # created since its claim); None when it stamps none.
    created_field: str | None
    # How long a write may take to show in the change feed (HubSpot's search index lags writes;
    # 0 for the list APIs): a read of the feed proves nothing absent that was written later than
    # this before the read began.
    feed_lag: timedelta
    stats: RequestStats

    async def identify(self) -> SystemIdentity:
        """The system this connector is configured for. A method, not a field: an API that names
        its account only when asked (HubSpot's portal id, from GET /account-info/v3/details) makes
        that one request here; the others answer from their settings, without a request."""
        ...

    async def close(self) -> None: ...
