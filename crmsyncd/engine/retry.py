"""The retry job. Rows of the error queue that are due are claimed, and their records are read
again at their source, by ids in batches: a parked record is never retried from the copy stored
when it was parked (the user may have edited or deleted it since). A record still there is
staged as if a pass had re-read it and given to the merge again; a record gone is settled under
the entity's delete policy, never created anew, and its row resolved with a note. The rows whose
pair then settles are resolved.

Before the claim, rows waiting for a reference (a deal whose contact was not linked) are made
due at once when every record they reference is linked now."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, BadRecord, Side, parse_timestamp, record_key
from crmsyncd.domain.storable import anonymous_id
from crmsyncd.engine.apply import Deleted, DeleteGuard, PairWorker
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.merge import merge
from crmsyncd.engine.passes import EntityJob
from crmsyncd.engine.recover import resolve_doubts
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import execute_atomically
from crmsyncd.store.errors import ErrorClass, ErrorRow, Failure
from crmsyncd.store.pairs import Pair

log = get_logger()

# Rows one retry pass claims at most.
CLAIM_LIMIT = 10_000
# Rows whose sources are read and settled together: one read per side (get_many) and a few
# statements per batch, never a query per row.
READ_BATCH = 100
NO_ID_NOTE = "it has no id to read it again by; fixed at its source, it is read by the next sync pass"


async def claim_retries(
    ctx: EngineContext, entities: Sequence[EntitySpec], *, include_not_due: bool
) -> EntityJob:
    """Claim the due rows of these entities; the job that retries them, entity by entity."""
    for entity in entities:
        await _wake_dependents(ctx, entity)
    claimed = await ctx.errors.claim_due(CLAIM_LIMIT, include_not_due=include_not_due)
    wanted = {e.name for e in entities}
    claimed = [row for row in claimed if row.entity in wanted]

    async def retry_entity(entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
        rows = [row for row in claimed if row.entity == entity.name]
        if not rows:
            return
        await resolve_doubts(ctx, entity, counts)
        closed: set[int] = set()
        reread = _Reread(ctx, entity, counts)
        for start in range(0, len(rows), READ_BATCH):
            if ctx.stopping.is_set():
                break  # the rest keep their lease and come back after it
            closed |= await reread.batch(rows[start : start + READ_BATCH])
        await merge(ctx, entity, run_id, counts)
        counts.retried_ok += await ctx.errors.resolve_settled([r.id for r in rows if r.id not in closed])

    return retry_entity


async def _wake_dependents(ctx: EngineContext, entity: EntitySpec) -> None:
    refs = [(side, spec.remote_name(side), spec.ref_entity or "") for spec in entity.refs for side in Side]
    woken = await ctx.errors.wake_dependents(entity.name, refs)
    if woken:
        log.info(
            "dependents_due",
            entity=entity.name,
            rows=woken,
            detail="the records they reference are linked now: retried at once, with a fresh budget",
        )


@dataclass(slots=True)
class _Plan:
    """What one batch of rows needs read, and what became of each row."""

    reads: dict[Side, set[str]] = field(default_factory=lambda: {side: set() for side in Side})
    # Rows with a pair to retry, and rows whose record never reached the map.
    mapped: list[tuple[ErrorRow, Pair]] = field(default_factory=list)
    unmapped: list[ErrorRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class _Reread:
    def __init__(self, ctx: EngineContext, entity: EntitySpec, counts: PassCounts) -> None:
        self.ctx = ctx
        self.entity = entity
        self.counts = counts
        self._worker: PairWorker | None = None

    async def _deleted(self, pair: Pair, gone: Side) -> Deleted:
        """The entity's delete policy applied to a pair whose record `gone` has lost, by the
        worker the passes use, under one guard on mass deletion for the whole retry."""
        if self._worker is None:
            ctx, entity = self.ctx, self.entity
            linked = await ctx.pairs.linked_count(entity.name)
            guard = DeleteGuard(entity.name, ctx.settings.delete_guard, linked)
            self._worker = PairWorker(
                entity, ctx.connectors, ctx.pairs.owner, ctx.pairs.linked_ids, self.counts, guard
            )
        return await self._worker.deleted(
            pair, gone, "deleted at its source while parked: 404 on the retry's read"
        )

    async def batch(self, rows: Sequence[ErrorRow]) -> set[int]:
        """Read this batch's records again and stage or settle them; returns the rows closed
        here (their record gone, or unreadable by id), which the merge has nothing to do for."""
        ctx, entity = self.ctx, self.entity
        plan = _Plan()
        closed: set[int] = set()
        pairs = {p.id: p for p in await ctx.pairs.by_ids([r.map_id for r in rows if r.map_id is not None])}
        for row in rows:
            pair = pairs.get(row.map_id) if row.map_id is not None else None
            if pair is not None:
                # Every observation the merge would use is read again; a pair with none
                # (settled or deleted meanwhile) needs no read: resolve_settled closes its row.
                for side in Side:
                    record_id = pair.id_of(side)
                    if pair.pending(side) is not None and record_id is not None:
                        plan.reads[side].add(record_id)
                plan.mapped.append((row, pair))
            elif row.record_id == anonymous_id(row.payload):
                # Parked for having no usable id: nothing to read it by. Dead again, as it was.
                reason = row.reason if NO_ID_NOTE in row.reason else f"{row.reason}; {NO_ID_NOTE}"
                plan.failures.append(_again(row, reason, ErrorClass(row.error_class), final=True))
                closed.add(row.id)
            else:
                plan.reads[row.side].add(row.record_id)
                plan.unmapped.append(row)

        fresh, unread = await self._read(plan.reads)
        gone_notes: list[tuple[int, str]] = []
        deleted: list[Deleted] = []
        staged: dict[Side, dict[str, JSON]] = {side: {} for side in Side}
        unpark: list[int] = []
        try:
            for row, pair in plan.mapped:
                sides = [s for s in Side if pair.pending(s) is not None and pair.id_of(s) is not None]
                if any(s in unread for s in sides):
                    plan.failures.append(_unread(row, unread[next(s for s in sides if s in unread)]))
                    continue
                gone = [s for s in sides if pair.id_of(s) not in fresh[s]]
                if gone:
                    if not any(d.pair_id == pair.id for d in deleted):
                        try:
                            deleted.append(await self._deleted(pair, gone[0]))
                        except ConnectorError as exc:
                            if exc.outcome.stops_pass:
                                raise
                            # `propagate` could not delete the counterpart now: tried again later.
                            reason = f"deleted at its source; deleting its counterpart failed: {exc}"
                            plan.failures.append(_again(row, reason, ErrorClass.TRANSIENT))
                            continue
                    gone_notes.append((row.id, self._gone_note(gone[0], pair.id_of(gone[0]) or "")))
                    continue
                for side in sides:
                    record_id = pair.id_of(side) or ""
                    staged[side][record_id] = fresh[side][record_id]
                unpark.append(pair.id)
            for row in plan.unmapped:
                if row.side in unread:
                    plan.failures.append(_unread(row, unread[row.side]))
                elif row.record_id not in fresh[row.side]:
                    self.counts.deleted_seen[row.side.value] += 1
                    gone_notes.append((row.id, self._gone_note(row.side, row.record_id)))
                else:
                    staged[row.side][row.record_id] = fresh[row.side][row.record_id]
        finally:
            # What was decided (and, under `propagate`, deleted remotely) is recorded even when
            # the delete guard stops the batch part way.
            await self._settle(gone_notes, deleted, plan.failures)
        closed |= {row_id for row_id, _ in gone_notes}
        if gone_notes:
            log.info(
                "retry_sources_gone",
                entity=entity.name,
                rows=len(gone_notes),
                detail="deleted at their source while parked: resolved, nothing created",
            )

        unreadable: set[tuple[Side, str]] = set()
        for side in Side:
            if staged[side]:
                unreadable |= {(side, rid) for rid in await self._stage(side, staged[side])}
        # A pair whose fresh record cannot be read stays parked (its row says why now): merged,
        # it would be written from the stale observation.
        still_bad = {
            row.map_id
            for row, pair in plan.mapped
            if any((s, pair.id_of(s)) in unreadable for s in Side if pair.pending(s) is not None)
        }
        if unpark := [pair_id for pair_id in unpark if pair_id not in still_bad]:
            await ctx.pairs.unpark(unpark)
        # A record parked before it reached the map, staged now: its row's verdict is void (the
        # merge parks it afresh, in the map, if it fails).
        await ctx.errors.resolve(
            ctx.pool,
            [
                r.id
                for r in plan.unmapped
                if r.record_id in staged[r.side] and (r.side, r.record_id) not in unreadable
            ],
        )
        return closed

    async def _read(
        self, reads: dict[Side, set[str]]
    ) -> tuple[dict[Side, dict[str, JSON]], dict[Side, ConnectorError]]:
        """Both sides read at once; a side that cannot be read now is returned as its error."""
        entity = self.entity

        async def read(side: Side) -> dict[str, JSON] | ConnectorError:
            if not reads[side]:
                return {}
            try:
                return await self.ctx.connectors[side].get_many(entity.resource(side), sorted(reads[side]))
            except ConnectorError as exc:
                if exc.outcome.stops_pass:
                    raise  # the pass stops and says which key to check
                log.warning("retry_read_failed", entity=entity.name, side=side.value, error=str(exc))
                return exc

        results = await asyncio.gather(*(read(side) for side in Side))
        fresh: dict[Side, dict[str, JSON]] = {}
        unread: dict[Side, ConnectorError] = {}
        for side, result in zip(Side, results, strict=True):
            if isinstance(result, ConnectorError):
                unread[side] = result
                fresh[side] = {}
            else:
                fresh[side] = result
        return fresh, unread

    async def _settle(
        self, gone_notes: list[tuple[int, str]], deleted: list[Deleted], failures: list[Failure]
    ) -> None:
        """One batch's verdicts in one go: rows resolved, pairs deleted, rows parked again."""
        ctx = self.ctx
        flags = [d.failure for d in deleted if d.failure is not None]
        for failure in failures:
            self.counts.parked[failure.error_class] += 1
        # A flag may land on a row resolved here (the survivor's own row): resolved first, in
        # turn, so that the flag opens a row of its own.
        await execute_atomically(
            ctx.pool,
            [
                ctx.errors.resolve_gone_statement(gone_notes),
                ctx.pairs.mark_deleted_statement([(d.pair_id, d.side) for d in deleted]),
                ctx.errors.park_statement([*flags, *failures]),
            ],
            in_order=bool(flags),
        )

    async def _stage(self, side: Side, records: dict[str, JSON]) -> list[str]:
        """Fresh records staged as a pass stages what it reads; returns the ids parked unreadable."""
        connector = self.ctx.connectors[side]
        usable: list[tuple[str, datetime, JSON]] = []
        unusable: list[tuple[JSON, BadRecord]] = []
        for body in records.values():
            try:
                record_id = record_key(body, connector.id_field)
                stamp = parse_timestamp(body.get(connector.updated_field), connector.updated_field)
            except BadRecord as exc:
                unusable.append((body, exc))
                continue
            usable.append((record_id, stamp, body))
        return await self.ctx.stager.stage(
            self.entity, side, usable, unusable, self.counts, None, id_field=connector.id_field
        )

    def _gone_note(self, side: Side, record_id: str) -> str:
        policy = self.entity.delete_policy.value
        return (
            f"{side.value} {self.entity.name} {record_id} was deleted at its source while parked: "
            f"not retried, nothing created (delete policy: {policy})"
        )


def _again(row: ErrorRow, reason: str, error_class: ErrorClass, *, final: bool = False) -> Failure:
    return Failure(row.entity, row.side, row.record_id, row.map_id, row.payload, reason, error_class, final)


def _unread(row: ErrorRow, exc: ConnectorError) -> Failure:
    """A row whose source could not be read now: parked again, an attempt counted, its pair kept
    parked (nothing is written from the stored copy)."""
    error_class = ErrorClass.REJECTED if exc.outcome is Outcome.PERMANENT else ErrorClass.TRANSIENT
    if exc.outcome is Outcome.RATE_LIMITED:
        error_class = ErrorClass.RATE_LIMITED
    return _again(row, f"could not read the record again at its source: {exc}", error_class)
