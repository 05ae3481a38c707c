"""The sync job, per entity in dependency order: the doubts of earlier passes are looked up, both
sides' change feeds stage their changes concurrently, then the pairs are linked and merged
(engine/merge.py). A backfill or a resync (engine/backfill.py) reads both sides in full instead
(`FullRead`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from structlog.contextvars import bound_contextvars

from crmsyncd.connectors.port import TICK, FeedPage, PagingLoop
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import Side
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.deletes import feed_deletions
from crmsyncd.engine.fieldcheck import FieldWatch, field_watches
from crmsyncd.engine.merge import merge
from crmsyncd.engine.recover import resolve_doubts
from crmsyncd.observability.logging import get_logger

log = get_logger()


@dataclass(slots=True)
class FullRead:
    """Both sides read from the start of their lists, whatever the cursors say, and every version
    read staged, even one not newer than the version last merged: a re-read of what the delta
    reads saw already (staging would drop it as old)."""

    on_page: Callable[[Side, FeedPage], Awaitable[None]]  # after each page is staged
    complete: set[Side] = field(default_factory=set)  # the sides read to their list's end


async def sync_entity(
    ctx: EngineContext, entity: EntitySpec, run_id: int, counts: PassCounts, full: FullRead | None = None
) -> None:
    await resolve_doubts(ctx, entity, counts)
    # Sides whose mapped field names were not checked against what the API returns yet.
    watches = await field_watches(ctx, entity, run_id)
    try:
        # A reader that fails cancels its sibling: the entity waits for the next pass.
        async with asyncio.TaskGroup() as readers:
            for side in Side:
                readers.create_task(_read_side(ctx, entity, side, counts, watches.get(side), full))
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    await merge(ctx, entity, run_id, counts)


async def _read_side(
    ctx: EngineContext,
    entity: EntitySpec,
    side: Side,
    counts: PassCounts,
    watch: FieldWatch | None,
    full: FullRead | None,
) -> None:
    with bound_contextvars(side=side.value):
        await _read(ctx, entity, side, counts, watch, full)


async def _read(
    ctx: EngineContext,
    entity: EntitySpec,
    side: Side,
    counts: PassCounts,
    watch: FieldWatch | None,
    full: FullRead | None = None,
) -> None:
    connector = ctx.connectors[side]
    cursor = await ctx.cursors.get(entity.name, side)
    # A pass re-reads the overlap before the newest stamp read, for late commits, until a
    # complete read has done so at least the overlap after that stamp was read (what is still
    # hidden then took longer than the overlap to commit): after a burst of writes the window
    # may hold many pages, which quiet passes would otherwise read again for ever. The list
    # filter is strictly after: one tick more keeps the window's first stamp (and the
    # cursor's own stamp, whose later ids may be unread) inside it.
    since = None
    settles = False
    # A feed that shows writes late, and so not always in stamp order (HubSpot's search index),
    # needs at least its lag re-read.
    overlap = max(ctx.settings.overlap, connector.feed_lag)
    if cursor is not None and full is None:
        since = cursor.updated_at - (timedelta(0) if cursor.window_settled else overlap) - TICK
        settles = not cursor.window_settled and cursor.age >= overlap.total_seconds()
    pages = connector.changes(
        entity.resource(side), since=since, checkpoint=cursor.checkpoint if cursor and full is None else None
    )
    complete = False
    listed = False  # this read's total is counted (a backfill reads a side twice in a pass)
    deleted: list[str] = []  # ids the feed reports deleted (HubSpot's archived records)
    try:
        async with contextlib.aclosing(pages):
            async for page in pages:
                if page.total is not None and not listed:
                    counts.listed[side.value] += page.total  # for the progress figures
                    listed = True
                deleted.extend(page.deleted)
                if watch is not None:
                    watch.feed([body for _, _, body in page.records])
                    watch.feed([body for body, _ in page.unusable])
                complete = complete or page.complete
                await ctx.stager.stage(
                    entity,
                    side,
                    page.records,
                    page.unusable,
                    counts,
                    page.checkpoint,
                    id_field=connector.id_field,
                    reread=full is not None,
                )
                if full is not None:
                    await full.on_page(side, page)
                if page.complete and settles and cursor is not None:
                    await ctx.cursors.settle_window(entity.name, side, cursor)
                if ctx.stopping.is_set():
                    return
    except PagingLoop as exc:
        # What was staged is safe and the cursor passes nothing unread: this side's read ends
        # here, the pass merges what it has, and the next pass reads on from the cursor.
        log.error("paging_stopped", entity=entity.name, side=side.value, error=str(exc))
    if deleted:
        # Before the merge: a pair whose record is gone must not be written to it.
        await feed_deletions(ctx, entity, side, deleted, counts)
    if full is not None and complete:
        full.complete.add(side)
    if watch is not None:
        await watch.finish(counts, read_whole_side=since is None and complete)
