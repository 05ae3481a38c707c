"""Linking and merging, shared by the sync and retry jobs: records sharing a match key become one
pair, then claimed pairs flow through a bounded queue per target API to its workers, which merge
per field and write; their bookkeeping lands in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, Side
from crmsyncd.engine.apply import DeleteGuard, PairWorker, Parked, PassAborted, wanted_refs
from crmsyncd.engine.buffer import ResultBuffer
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.stage import resolve_refs
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import DATABASE_ERRORS
from crmsyncd.store.errors import ErrorClass, Failure
from crmsyncd.store.pairs import Pair, PairState

log = get_logger()


async def merge(
    ctx: EngineContext, entity: EntitySpec, run_id: int, counts: PassCounts, only: Sequence[int] | None = None
) -> None:
    await link(ctx, entity, counts)
    guard = DeleteGuard(entity.name, ctx.settings.delete_guard, await ctx.pairs.linked_count(entity.name))
    worker = PairWorker(entity, ctx.connectors, ctx.pairs.owner, ctx.pairs.linked_ids, counts, guard)
    # A queue and a set of workers per target API, so that both are written at once: with one
    # queue, pairs claimed in id order keep every worker waiting on whichever API is slower
    # (or more tightly limited) while the other idles. Each connector's pacer keeps its API
    # within its limit however many workers wait on it.
    # An API that writes in batches needs a batch's worth of writes at once for its batches to
    # fill (engine/batching.py), and the workers of both queues write to it (a pair's first write
    # picks its queue, its others follow): each side gets at least two batches' worth, one in
    # flight and one filling, and a batch's worth of queue. Pacers, not worker counts, keep each
    # API within its limit.
    batch = max(connector.max_batch for connector in ctx.connectors.values())
    per_side = max(1, ctx.settings.workers // len(Side), 2 * batch if batch > 1 else 1)
    workers = dict.fromkeys(Side, per_side)
    queues: dict[Side, asyncio.Queue[tuple[Pair, Any] | None]] = {
        side: asyncio.Queue(max(1, ctx.settings.queue_size // len(Side), batch)) for side in Side
    }
    waiting: set[int] = set()  # claimed, not yet started: their claim can be undone
    started: set[int] = set()  # a remote write may have happened: the doubt is kept
    aborted: list[BaseException] = []

    def target(plan: JSON) -> Side:
        return Side(next(iter(plan)))  # the first side the plan writes

    async def produce(side: Side) -> None:
        # One claimer per target API: a single claimer in id order blocks on whichever queue
        # is full while the other API's workers starve (an initial sync stages one side's
        # records before the other's).
        try:
            after: int | None = None  # claims go on from the last id claimed (keyset)
            while not (ctx.stopping.is_set() or aborted):
                batch = await ctx.pairs.claim(
                    entity.name, run_id, ctx.settings.claim_batch, only, after=after, target=side
                )
                if not batch:
                    break
                after = batch[-1].id  # claim returns its rows sorted by id
                wanted = wanted_refs(entity, batch)
                refs = await resolve_refs(ctx.pairs, entity, wanted) if wanted else {}
                # Recorded before any remote call: a kill then leaves what was meant.
                plans = [(pair, worker.plan(pair, refs)) for pair in batch]
                await ctx.pairs.set_intents([(p.id, p.with_intent(plan)) for p, plan in plans if plan])
                for pair, plan in plans:
                    waiting.add(pair.id)
                    await queues[target(plan) if plan else side].put((pair, refs))
        except Exception as exc:
            aborted.append(exc)

    async def produce_all() -> None:
        try:
            await asyncio.gather(*(produce(side) for side in Side))
        finally:
            for side, queue in queues.items():
                for _ in range(workers[side]):
                    await queue.put(None)

    async def consume(queue: asyncio.Queue[tuple[Pair, Any] | None], buffer: ResultBuffer) -> None:
        while (item := await queue.get()) is not None:
            pair, refs = item
            if aborted or ctx.stopping.is_set():
                continue  # stays in `waiting`: released below, untouched
            waiting.discard(pair.id)
            started.add(pair.id)
            try:
                result = await worker.apply(pair, refs)
                await buffer.add(result)
            except (PassAborted, *DATABASE_ERRORS) as exc:  # the pass reports it
                aborted.append(exc)
                continue
            except Exception as exc:  # a bug: stop cleanly, keep the doubt
                log.exception("worker_failed", entity=entity.name, pair=pair.id, error=str(exc))
                aborted.append(exc)
                continue
            started.discard(pair.id)

    async with ResultBuffer(
        entity.name,
        ctx.pool,
        ctx.pairs,
        ctx.errors,
        ctx.settings.flush_size,
        ctx.settings.flush_interval,
    ) as buffer:
        consumers = [consume(queues[side], buffer) for side in Side for _ in range(workers[side])]
        await asyncio.gather(produce_all(), *consumers)
    await ctx.pairs.release(ctx.pool, sorted(waiting), PairState.OK, untouched=True)
    await ctx.pairs.release(ctx.pool, sorted(started), PairState.OK)
    if aborted:
        raise aborted[0]


async def link(ctx: EngineContext, entity: EntitySpec, counts: PassCounts) -> None:
    """First sync of two populated systems: records sharing a normalised match key become
    one pair instead of two creates; a key held by several records on a side is parked."""
    if entity.match_key is None:
        return
    groups = await ctx.links.link_groups(entity.name)
    links: list[tuple[int, int]] = []
    ambiguous: list[Parked] = []
    for key, e_rows, c_rows in groups:
        if len(e_rows) == 1 and len(c_rows) == 1:
            links.append((e_rows[0], c_rows[0]))
            continue
        reason = (
            f"ambiguous match: {entity.match_key} {key!r} is held by {len(e_rows)} unlinked "
            f"ecosire and {len(c_rows)} unlinked crm {entity.name} (map rows "
            f"ecosire {e_rows}, crm {c_rows}); fix the duplicates, then replay"
        )
        ambiguous.extend(await _park_rows(ctx, entity, e_rows + c_rows, reason))
    await ctx.links.link(links)
    counts.linked += len(links)
    if ambiguous:
        counts.parked[ErrorClass.AMBIGUOUS] += len(ambiguous)
        async with ctx.pool.acquire() as conn, conn.transaction():
            await ctx.errors.park(conn, [p.failure for p in ambiguous])
            await ctx.pairs.release(conn, [p.pair_id for p in ambiguous], PairState.PARKED)


async def _park_rows(ctx: EngineContext, entity: EntitySpec, row_ids: list[int], reason: str) -> list[Parked]:
    parked = []
    for pair in await ctx.pairs.by_ids(row_ids):
        side = Side.ECOSIRE if pair.ecosire_id is not None else Side.CRM
        payload = pair.pending(side) or pair.snapshot(side) or {}
        failure = Failure(
            entity.name, side, pair.id_of(side) or "", pair.id, payload, reason, ErrorClass.AMBIGUOUS
        )
        parked.append(Parked(pair.id, failure))
    return parked
