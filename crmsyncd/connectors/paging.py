"""The page-number change feed: delta reads that lose nothing to paging over a changing list.

ECOSIRE and the REST CRM page by number over a list computed afresh for every request, sorted by updated-at:
a record updated while we page moves to the end and shifts the others down, so plain page
numbers skip records. Three techniques keep every record:

* **Re-anchoring.** Every request asks for page 1 of "updated strictly after the anchor", the
  anchor being the last stamp seen minus one millisecond: records sharing the last stamp are read
  again (and dropped by id), so a page boundary inside a group of equal stamps loses nothing, and
  records moving during paging cannot skip what is still ahead of the anchor.
* **Blocks, swept until they hold still.** When a whole page sits at the anchor's next stamp (a
  bulk import stamps thousands of records alike), the anchor cannot move, and the only way on is
  page numbers under the same anchor. A record of that block updated meanwhile leaves it and
  shifts an unread one onto a page already read. Records only ever *leave* such a block (an edit
  gives a later stamp, a delete removes it), so the block is swept again from page 1 until a sweep
  ends at the same position as the sweep before it, with no id it had not seen: no record left
  during that sweep, so it read every record the block still holds; those that left carry later
  stamps and are read after it. Records after the block are not taken during the sweeps, so the
  cursor never passes an unread member; after the last sweep the anchor moves past the block.
  Sweeps are bounded (`max_block_sweeps`): a block that keeps changing raises `PagingLoop`.
* **Stamps only.** Nothing but the records' own stamps places a pass: no clock reading (ours,
  or a server's `Date` header, which a front end writes while a database writes the stamps) ever
  hides a record or moves a cursor. Each page carries the cursor it makes safe: the greatest
  `(stamp, id)` such that every record sorting at or before it has been read (inside a block that
  has not settled yet, only the stamps before the block's).
* **A read budget.** Users who keep editing while we page push records to the list's end for ever.
  A pass reads what the list held at its first answer (its `total`) plus one page, then ends; the
  cursor stays on the last record read, so what it left belongs to the next pass.

A list that is not what paging needs raises `PagingLoop` rather than lose records: a page not
sorted ascending by the stamp, a page number that is ignored, a block that never holds still.
Everything yielded before it is safe to stage (the caller ends that side's read there).

What no pager can see in one pass, the next pass's overlap window catches (`since` is the newest
stamp read minus the overlap): a record committed late with an older stamp, or one stamped in the
very tick of a block already closed. Stamps are assumed to have millisecond precision at most (the wire
form of both APIs).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Protocol

from crmsyncd.connectors.base import Page
from crmsyncd.connectors.port import TICK, Checkpoint, FeedPage, PagingLoop
from crmsyncd.domain.records import JSON, BadRecord, Side, format_timestamp, parse_timestamp, record_key
from crmsyncd.domain.storable import anonymous_id
from crmsyncd.observability.logging import get_logger

log = get_logger()

# Verification sweeps of one block before the pass gives up on it (each costs the block's pages).
MAX_BLOCK_SWEEPS = 10
# A last resort against a server whose list never ends; the logic above terminates without it.
MAX_REQUESTS = 1_000_000

# A position in a list sorted by (stamp, id): every record sorting at or before it has been read.
Position = tuple[datetime, str]


class PagedList(Protocol):
    """What the feed needs of an API that lists by page number (connectors/collection.py)."""

    side: Side
    id_field: str
    updated_field: str

    async def list_page(
        self, resource: str, *, updated_after: datetime | None, page: int, limit: int
    ) -> Page: ...


@dataclass(frozen=True, slots=True)
class _Row:
    body: JSON
    key: str  # the record id, or a digest of the body when there is no usable id
    stamp: datetime | None  # None when the updated-at field does not parse
    error: BadRecord | None  # set when the record cannot be keyed (bad id or stamp)


@dataclass(slots=True)
class _SweepEnd:
    # Rows before the block's end, counted over the sweep's pages; None when it could not be told.
    size: int | None = None
    # The first row after the block, or None at the end of the list.
    end: _Row | None = None
    fresh: int = 0  # rows this sweep yielded that no earlier read had
    repeated: bool = False  # a row read twice within the sweep: the block grew under it
    last: Position | None = None  # the greatest (stamp, id) of the block's rows read


async def read_changes(
    connector: PagedList,
    resource: str,
    *,
    since: datetime | None,
    page_size: int,
    max_requests: int = MAX_REQUESTS,
    max_block_sweeps: int = MAX_BLOCK_SWEEPS,
) -> AsyncGenerator[FeedPage, None]:
    """Pages of records changed strictly after `since`.

    Records come in list order, each (id, stamp) once per pass. Staging a page and saving its
    cursor is safe: no record sorting at or before that cursor is left unread."""
    pager = _Pager(connector, resource, since, page_size, max_requests, max_block_sweeps)
    async for page in pager.pages():
        page.total = pager.total
        yield page


class _Pager:
    def __init__(
        self,
        connector: PagedList,
        resource: str,
        since: datetime | None,
        page_size: int,
        max_requests: int,
        max_block_sweeps: int,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.connector = connector
        self.resource = resource
        self.anchor = since
        self.page_size = page_size
        self.max_requests = max_requests
        self.max_block_sweeps = max_block_sweeps
        # Ids yielded whose stamp is after the anchor: re-reads of them are dropped.
        self.recent: dict[str, datetime] = {}
        # Unusable records reported this pass (by key), so a re-read does not park them twice.
        self.reported: set[str] = set()
        self.requests = 0
        self.taken = 0  # record versions yielded
        self.budget: int | None = None  # versions this pass reads before it ends (see module doc)
        self.total: int | None = None  # what the list held at its first answer
        self._list_ended = False  # a block ran to the list's end

    # -- the normal way: page 1 after an anchor that moves with every page --------------------

    async def pages(self) -> AsyncGenerator[FeedPage, None]:
        while True:
            result, rows = await self._fetch(1)
            more = bool(rows) and result.total_pages > 1
            if more:
                self._require_sorted(rows, 1)  # the next request relies on the order
            last = max((row.stamp for row in rows if row.stamp is not None), default=None)
            if more and (last is None or not self._progresses(last)):
                # A full page and nothing on it moves the anchor: step through the block.
                async for out in self._block(rows):
                    yield out
                if self._list_ended or self._spent():
                    return
                continue
            out = FeedPage()
            for row in rows:
                self._take(row, out)
            if not more:
                # The list ends here: every record of it was read.
                out.checkpoint, out.complete = _checkpoint(_greatest(rows)), True
            elif last is not None:
                # Records sharing the last stamp may continue on the next page.
                out.checkpoint = Checkpoint(last, "")
            if out:
                yield out
            if not more or self._spent():
                return
            assert last is not None
            self._move_anchor(last - TICK)

    # -- a block under one anchor: page numbers, swept until a sweep sees it hold still -------

    async def _block(self, page_one: list[_Row]) -> AsyncGenerator[FeedPage, None]:
        anchor = self.anchor
        previous: int | None = None
        for sweep in range(self.max_block_sweeps + 1):
            end = _SweepEnd()
            async for out in self._sweep(page_one if sweep == 0 else None, end):
                yield out
            settled = (
                sweep > 0
                and end.size is not None
                and end.size == previous
                and end.fresh == 0
                and not end.repeated
            )
            if settled:
                break
            previous = end.size
        else:
            where = f"updated just after {_when(anchor)}" if anchor is not None else "at the list's start"
            raise PagingLoop(
                f"{self.connector.side.value} {self.resource}: {previous} records {where} kept "
                f"changing while read by page number; gave up after {self.max_block_sweeps} "
                "sweeps (the next pass starts again before them)"
            )
        log.debug(
            "paging_block",
            side=self.connector.side.value,
            resource=self.resource,
            after=_when(anchor),
            records=end.size,
            sweeps=sweep + 1,
        )
        if end.end is None:
            # The block held still for a whole sweep and ran to the list's end: all was read.
            self._list_ended = True
            yield FeedPage(checkpoint=_checkpoint(end.last), complete=True)
            return
        if end.last is not None:
            # The block held still for a whole sweep: every member has been read.
            yield FeedPage(checkpoint=_checkpoint(end.last))
        assert end.end.stamp is not None  # a row ends a block by its stamp
        self._move_anchor(end.end.stamp - TICK)

    async def _sweep(self, page_one: list[_Row] | None, end: _SweepEnd) -> AsyncGenerator[FeedPage, None]:
        """Pages 1, 2, ... under the current anchor up to the first row that moves the anchor;
        only the block's own rows are taken. Its pages move no cursor: until the block holds
        still, a member not read yet may sort before any of them."""
        in_sweep: set[str] = set()
        position = 0
        page = 1
        rows = page_one
        last_page = False  # page one of the first sweep is known to have a successor
        while True:
            if rows is None:
                result, rows = await self._fetch(page)
                last_page = page >= result.total_pages
                self._require_sorted(rows, page)  # positions in a block rely on the order
            out = FeedPage()
            stop: int | None = None
            repeats = 0
            for index, row in enumerate(rows):
                if row.stamp is not None and self._progresses(row.stamp):
                    stop = index
                    break
                if row.key in in_sweep:
                    repeats += 1
                in_sweep.add(row.key)
                if self._take(row, out):
                    end.fresh += 1
            end.last = max(end.last, _greatest(rows[:stop]), key=_position_key)
            end.repeated = end.repeated or repeats > 0
            if out:
                yield out
            if stop is not None:
                end.size, end.end = position + stop, rows[stop]
                return
            if not rows:
                # Deletions emptied the list from here on: on page 1 the block is gone, on a later
                # page its size is not known (the next sweep tells).
                end.size, end.end = (0 if page == 1 else None), None
                return
            if page > 1 and repeats == len(rows):
                raise PagingLoop(
                    f"{self.connector.side.value} {self.resource}: page {page} repeats records of "
                    f"earlier pages; the server seems to ignore the page parameter"
                )
            position += len(rows)
            if last_page:
                end.size, end.end = position, None
                return
            page += 1
            rows = None

    # -- shared -------------------------------------------------------------------------------

    def _spent(self) -> bool:
        return self.budget is not None and self.taken >= self.budget

    async def _fetch(self, page: int) -> tuple[Page, list[_Row]]:
        self.requests += 1
        if self.requests > self.max_requests:
            raise PagingLoop(
                f"{self.connector.side.value} {self.resource}: more than {self.max_requests} "
                "list requests in one pass"
            )
        result = await self.connector.list_page(
            self.resource, updated_after=self.anchor, page=page, limit=self.page_size
        )
        if self.total is None:
            self.total = result.total
        if self.budget is None and result.total > 0:
            # What the list held at its first answer, and a page for what moves meanwhile.
            self.budget = result.total + self.page_size
        return result, [self._row(body) for body in result.records]

    def _require_sorted(self, rows: list[_Row], page: int) -> None:
        """Anchoring on, or stepping past, a page out of order would pass over records: refuse."""
        stamps = [row.stamp for row in rows if row.stamp is not None]
        if any(later < earlier for earlier, later in pairwise(stamps)):
            raise PagingLoop(
                f"{self.connector.side.value} {self.resource}: the list is not sorted by "
                f"{self.connector.updated_field} ascending (page {page}); check its sort parameters"
            )

    def _row(self, body: JSON) -> _Row:
        stamp: datetime | None = None
        error: BadRecord | None = None
        try:
            stamp = parse_timestamp(body.get(self.connector.updated_field), self.connector.updated_field)
        except BadRecord as exc:
            error = exc
        try:
            key = record_key(body, self.connector.id_field)
        except BadRecord as exc:
            key, error = "", exc
        if error is not None:
            key = _digest(body)
        return _Row(body, key, stamp, error)

    def _progresses(self, stamp: datetime) -> bool:
        """Re-anchoring just before `stamp` moves the anchor forward."""
        return self.anchor is None or stamp - TICK > self.anchor

    def _move_anchor(self, anchor: datetime) -> None:
        if self.anchor is not None and anchor <= self.anchor:
            raise PagingLoop(
                f"{self.connector.side.value} {self.resource}: the list is not sorted by "
                f"{self.connector.updated_field} (anchor would move back to {_when(anchor)})"
            )
        self.anchor = anchor
        self.recent = {rid: at for rid, at in self.recent.items() if at > anchor}

    def _take(self, row: _Row, out: FeedPage) -> bool:
        """Add the row to `out` unless this pass has it already; True when it was new."""
        if row.error is not None:
            if row.key in self.reported:
                return False
            self.reported.add(row.key)
            out.unusable.append((row.body, row.error))
            return True
        assert row.stamp is not None
        if self.recent.get(row.key) == row.stamp:
            return False
        self.recent[row.key] = row.stamp
        out.records.append((row.key, row.stamp, row.body))
        self.taken += 1
        return True


def _checkpoint(position: Position | None) -> Checkpoint | None:
    return None if position is None else Checkpoint(*position)


def _greatest(rows: list[_Row]) -> Position | None:
    """The greatest (stamp, id) among rows that could be keyed."""
    keyed = [(row.stamp, row.key) for row in rows if row.stamp is not None and row.error is None]
    return max(keyed, default=None)


def _position_key(position: Position | None) -> tuple[bool, Position]:
    # None sorts first: max(None, p) is p.
    return (position is not None, position or (datetime.min.replace(tzinfo=UTC), ""))


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


def _digest(body: JSON) -> str:
    # The same stable name staging parks such a record under (it survives unstorable text).
    return anonymous_id(body)
