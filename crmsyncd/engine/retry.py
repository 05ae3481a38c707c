"""The retry job: rows of the error queue that are due are claimed, their records given to the
merge again (a pair unparked, or a record that never reached the map staged again), and the rows
whose pair then settles are resolved."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, BadRecord, Side, parse_timestamp, record_key
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.merge import merge
from crmsyncd.engine.passes import EntityJob
from crmsyncd.engine.recover import resolve_doubts
from crmsyncd.store.errors import ErrorRow

# Rows one retry pass claims at most.
CLAIM_LIMIT = 10_000


async def claim_retries(
    ctx: EngineContext, entities: Sequence[EntitySpec], *, include_not_due: bool
) -> EntityJob:
    """Claim the due rows of these entities; the job that retries them, entity by entity."""
    claimed = await ctx.errors.claim_due(CLAIM_LIMIT, include_not_due=include_not_due)
    wanted = {e.name for e in entities}
    claimed = [row for row in claimed if row.entity in wanted]

    async def retry_entity(entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
        rows = [row for row in claimed if row.entity == entity.name]
        if not rows:
            return
        await resolve_doubts(ctx, entity, counts)
        await ctx.pairs.unpark([r.map_id for r in rows if r.map_id is not None])
        for side in Side:
            unmapped = [r for r in rows if r.map_id is None and r.side is side]
            if unmapped:
                await _restage(ctx, entity, side, unmapped, counts)
        await merge(ctx, entity, run_id, counts)
        counts.retried_ok += await ctx.errors.resolve_settled([r.id for r in rows])

    return retry_entity


async def _restage(
    ctx: EngineContext, entity: EntitySpec, side: Side, rows: Sequence[ErrorRow], counts: PassCounts
) -> None:
    """Records parked before they reached the map go through staging again, as if re-read:
    one batch per entity and side."""
    connector = ctx.connectors[side]
    records: list[tuple[str, datetime, JSON]] = []
    unusable: list[tuple[JSON, BadRecord]] = []
    for row in rows:
        try:
            record_id = record_key(row.payload, connector.id_field)
            stamp = parse_timestamp(row.payload.get(connector.updated_field), connector.updated_field)
        except BadRecord as exc:
            unusable.append((row.payload, exc))
            continue
        records.append((record_id, stamp, row.payload))
    parked = set(
        await ctx.stager.stage(entity, side, records, unusable, counts, None, id_field=connector.id_field)
    )
    staged_ids = {record_id for record_id, _, _ in records} - parked
    await ctx.errors.resolve(ctx.pool, [r.id for r in rows if r.record_id in staged_ids])
