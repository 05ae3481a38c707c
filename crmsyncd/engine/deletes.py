"""Records gone on one side: the entity's delete policy applied to their pairs, under the delete
guard, with the bookkeeping batched. Deletions come from two places: a full listing that no
longer shows a linked record (engine/reconcile.py, confirmed by a read by id, since a listing
cannot prove absence), and a change feed that reports them itself (HubSpot's archived records),
taken at its word."""

from __future__ import annotations

from collections.abc import Sequence

from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import Side
from crmsyncd.engine.apply import DeleteGuard, PairWorker
from crmsyncd.engine.buffer import ResultBuffer
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.store.pairs import Pair

# Ids one confirming read asks for (HubSpot's batch read takes 100).
CONFIRM_BATCH = 100


async def apply_deletions(
    ctx: EngineContext,
    entity: EntitySpec,
    side: Side,
    pairs: Sequence[Pair],
    counts: PassCounts,
    guard: DeleteGuard,
    *,
    how: str,
    confirm: bool,
) -> None:
    """Apply the delete policy to `pairs`, whose `side` record is gone; with `confirm`, only to
    those a read by id does not find either."""
    worker = PairWorker(entity, ctx.connectors, ctx.pairs.owner, ctx.pairs.linked_ids, counts, guard)
    connector = ctx.connectors[side]
    async with ResultBuffer(entity.name, ctx.pool, ctx.pairs, ctx.errors) as buffer:
        for start in range(0, len(pairs), CONFIRM_BATCH):
            chunk = pairs[start : start + CONFIRM_BATCH]
            found = (
                await connector.get_many(entity.resource(side), [p.id_of(side) or "" for p in chunk])
                if confirm
                else {}
            )
            for pair in chunk:
                if (pair.id_of(side) or "") in found:
                    continue  # there after all (a listing moved it past the sweep's end)
                await buffer.add(await worker.deleted(pair, side, how))


async def feed_deletions(
    ctx: EngineContext, entity: EntitySpec, side: Side, record_ids: Sequence[str], counts: PassCounts
) -> None:
    """Ids the `side` feed reported deleted (archived): their pairs settled by the policy."""
    pairs = await ctx.pairs.by_record_ids(entity.name, side, sorted(set(record_ids)))
    if not pairs:
        return
    guard = DeleteGuard(entity.name, ctx.settings.delete_guard, await ctx.pairs.linked_count(entity.name))
    await apply_deletions(
        ctx, entity, side, pairs, counts, guard, how="reported deleted by its API", confirm=False
    )
