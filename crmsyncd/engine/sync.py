"""One pass, per entity in dependency order: both sides' pagers stage their changes concurrently,
records are linked by the match key, then claimed pairs flow through a bounded queue per target API
to its workers, which merge and write; bookkeeping lands in batches."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crmsyncd.connectors.base import Connector, ConnectorError, Outcome, body_id
from crmsyncd.domain.canonical import UnresolvedReference
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, BadRecord, Side, parse_timestamp
from crmsyncd.engine.apply import (
    AuthFailure,
    DeleteGuard,
    DeleteGuardTripped,
    PairWorker,
    Parked,
    PassAborted,
    wanted_refs,
)
from crmsyncd.engine.buffer import ResultBuffer
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.doubts import scan_for_creates
from crmsyncd.engine.pager import TICK as PAGER_TICK
from crmsyncd.engine.pager import PagingLoop, read_changes
from crmsyncd.engine.stage import Cursor, Stager, resolve_refs
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import DATABASE_ERRORS, Pool, describe_database_error
from crmsyncd.store.errors import Backoff, ErrorRow, ErrorStore, Failure
from crmsyncd.store.pairs import CursorStore, Link, Pair, PairStore
from crmsyncd.store.runs import RunStore

log = get_logger()


@dataclass(frozen=True, slots=True)
class EngineSettings:
    workers: int = 32  # split evenly between the two target APIs
    queue_size: int = 200
    page_size: int = 100
    overlap: timedelta = timedelta(seconds=2)
    claim_batch: int = 100
    flush_size: int = 100
    flush_interval: float = 0.5
    delete_guard: float = 0.1  # the largest share of an entity one pass may delete
    reconcile_budget: int = 1000  # list requests per entity and side for one full listing


@dataclass(slots=True)
class PassReport:
    run_id: int
    kind: str
    status: str
    counts: PassCounts
    requests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


class SyncEngine:
    def __init__(
        self,
        pool: Pool,
        connectors: Mapping[Side, Connector],
        settings: EngineSettings,
        backoff: Backoff,
    ) -> None:
        self.pool = pool
        self.connectors = connectors
        self.settings = settings
        self.pairs = PairStore(pool)
        self.cursors = CursorStore(pool)
        self.errors = ErrorStore(pool, backoff)
        self.runs = RunStore(pool)
        self.stager = Stager(pool, self.pairs, self.cursors, self.errors)
        # Set by a signal: pagers stop after their page, workers after their record.
        self.stopping = asyncio.Event()
        self._busy = asyncio.Lock()  # the sync and retry jobs of one process take turns

    # -- the sync job -------------------------------------------------------------------------

    async def sync_pass(self, entities: Sequence[EntitySpec]) -> PassReport:
        async with self._busy:
            return await self._run("sync", entities, self._sync_entity)

    async def _sync_entity(self, entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
        await self.resolve_doubts(entity, counts)
        try:
            # A reader that fails cancels its sibling: the entity waits for the next pass.
            async with asyncio.TaskGroup() as readers:
                for side in Side:
                    readers.create_task(self._read_side(entity, side, counts))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        await self.merge(entity, run_id, counts)

    async def _read_side(self, entity: EntitySpec, side: Side, counts: PassCounts) -> None:
        connector = self.connectors[side]
        cursor = await self.cursors.get(entity.name, side)
        # A pass re-reads the overlap before the newest stamp read, for late commits, until a
        # complete read has done so at least the overlap after that stamp was read (what is still
        # hidden then took longer than the overlap to commit): after a burst of writes the window
        # may hold many pages, which quiet passes would otherwise read again for ever. The list
        # filter is strictly after: one tick more keeps the window's first stamp (and the
        # cursor's own stamp, whose later ids may be unread) inside it.
        since = None
        settles = False
        overlap = self.settings.overlap
        if cursor is not None:
            since = cursor.updated_at - (timedelta(0) if cursor.window_settled else overlap) - PAGER_TICK
            settles = not cursor.window_settled and cursor.age >= overlap.total_seconds()
        pages = read_changes(
            connector, entity.resource(side), since=since, page_size=self._page_size(connector)
        )
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    await self.stager.stage(
                        entity,
                        side,
                        page.records,
                        page.unusable,
                        counts,
                        Cursor(*page.cursor) if page.cursor else None,
                        id_field=connector.id_field,
                    )
                    if page.complete and settles and cursor is not None:
                        await self.cursors.settle_window(entity.name, side, cursor)
                    if self.stopping.is_set():
                        return
        except PagingLoop as exc:
            # What was staged is safe and the cursor passes nothing unread: this side's read ends
            # here, the pass merges what it has, and the next pass reads on from the cursor.
            log.error("paging_stopped", entity=entity.name, side=side.value, error=str(exc))

    # -- linking and merging, shared by the sync and retry jobs -------------------------------

    async def merge(
        self, entity: EntitySpec, run_id: int, counts: PassCounts, only: Sequence[int] | None = None
    ) -> None:
        await self._link(entity, counts)
        guard = DeleteGuard(
            entity.name, self.settings.delete_guard, await self.pairs.linked_count(entity.name)
        )
        worker = PairWorker(entity, self.connectors, self.pairs.owner, self.pairs.linked_ids, counts, guard)
        # A queue and a set of workers per target API, so that both are written at once: with one
        # queue, pairs claimed in id order keep every worker waiting on whichever API is slower
        # (or more tightly limited) while the other idles. Each connector's pacer keeps its API
        # within its limit however many workers wait on it.
        workers = max(1, self.settings.workers // len(Side))
        queues: dict[Side, asyncio.Queue[tuple[Pair, Any] | None]] = {
            side: asyncio.Queue(max(1, self.settings.queue_size // len(Side))) for side in Side
        }
        waiting: set[int] = set()  # claimed, not yet started: their claim can be undone
        started: set[int] = set()  # a remote write may have happened: the doubt is kept
        aborted: list[BaseException] = []

        def target(plan: JSON | None) -> Side:
            if plan:
                return Side(next(iter(plan)))
            # Nothing to write (or a record to park): whichever queue is shorter.
            return min(Side, key=lambda side: queues[side].qsize())

        async def produce() -> None:
            try:
                after: int | None = None  # claims go on from the last id claimed (keyset)
                while not (self.stopping.is_set() or aborted):
                    batch = await self.pairs.claim(
                        entity.name, run_id, self.settings.claim_batch, only, after=after
                    )
                    if not batch:
                        break
                    after = batch[-1].id  # claim returns its rows sorted by id
                    wanted = wanted_refs(entity, batch)
                    refs = await resolve_refs(self.pairs, entity, wanted) if wanted else {}
                    # Recorded before any remote call: a kill then leaves what was meant.
                    plans = [(pair, worker.plan(pair, refs)) for pair in batch]
                    await self.pairs.set_intents([(p.id, p.with_intent(plan)) for p, plan in plans if plan])
                    for pair, plan in plans:
                        waiting.add(pair.id)
                        await queues[target(plan)].put((pair, refs))
            except Exception as exc:
                aborted.append(exc)
            finally:
                for queue in queues.values():
                    for _ in range(workers):
                        await queue.put(None)

        async def consume(queue: asyncio.Queue[tuple[Pair, Any] | None], buffer: ResultBuffer) -> None:
            while (item := await queue.get()) is not None:
                pair, refs = item
                if aborted or self.stopping.is_set():
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
            self.pool,
            self.pairs,
            self.errors,
            self.settings.flush_size,
            self.settings.flush_interval,
        ) as buffer:
            consumers = [consume(queue, buffer) for queue in queues.values() for _ in range(workers)]
            await asyncio.gather(produce(), *consumers)
        await self.pairs.release(self.pool, sorted(waiting), "ok", untouched=True)
        await self.pairs.release(self.pool, sorted(started), "ok")
        if aborted:
            raise aborted[0]

    async def resolve_doubts(self, entity: EntitySpec, counts: PassCounts) -> None:
        """Before anything is read: creates that may have happened without our hearing of it (a
        lost answer, a kill) are looked up on the target in one scan per side, so that such a
        record, when the delta shows it, is known as ours and not taken for a new one to copy
        back. Doubts the scan proves absent are cleared; the rest stay doubts."""
        doubts = await self.pairs.in_doubt(entity.name)
        if not doubts:
            return
        worker = PairWorker(entity, self.connectors, self.pairs.owner, self.pairs.linked_ids, counts)
        wanted = wanted_refs(entity, doubts)
        refs = await resolve_refs(self.pairs, entity, wanted) if wanted else {}
        found: list[Link] = []
        cleared: list[int] = []
        for target in Side:
            items = []
            for pair in doubts:
                source = Side.ECOSIRE if pair.ecosire_id is not None else Side.CRM
                if source.other is not target:
                    continue
                try:
                    # What the unfinished attempt sent, if it recorded it; else what it would send.
                    values = pair.last_intended(target) or worker.create_values(
                        worker.view_of(pair, source, refs), target
                    )
                except (BadRecord, UnresolvedReference):
                    continue  # its merge parks it with the reason
                items.append((pair, values))
            if not items:
                continue
            connector = self.connectors[target]
            try:
                scan = await scan_for_creates(
                    entity,
                    connector,
                    target,
                    items,
                    refs,
                    max_requests=self.settings.reconcile_budget,
                    taken=functools.partial(self.pairs.linked_ids, entity.name, target),
                    page_size=self._page_size(connector),
                )
            except ConnectorError as exc:
                if exc.outcome is Outcome.AUTH_FAILED:
                    raise
                log.warning("doubts_unresolved", entity=entity.name, side=target.value, error=str(exc))
                continue
            if scan.by_likeness:
                log.warning(
                    "doubts_matched_by_likeness",
                    entity=entity.name,
                    side=target.value,
                    count=scan.by_likeness,
                    detail="copies we created and users edited before we could look for them",
                )
            for pair, sent in items:
                bodies = {str(b.get(connector.id_field)): b for b in scan.matches.get(pair.id, [])}
                if len(bodies) == 1:
                    [(record_id, body)] = bodies.items()
                    stamp = body.get(connector.updated_field)
                    at = parse_timestamp(stamp) if stamp else None
                    # What the create sent is what both sides agreed on at that moment.
                    found.append(Link(pair.id, target, record_id, body, at, base=sent))
                elif not bodies and scan.complete:
                    cleared.append(pair.id)
        refused = await self.pairs.adopt(found)
        await self.pairs.clear_doubt(cleared)
        counts.linked += len(found) - len(refused)
        for link in refused:
            log.warning(
                "doubt_conflict",
                entity=entity.name,
                pair=link.pair_id,
                record=link.record_id,
                detail="the record found is already linked to another pair",
            )
        log.info(
            "doubts_resolved",
            entity=entity.name,
            doubts=len(doubts),
            found=len(found) - len(refused),
            proven_absent=len(cleared),
        )

    def _page_size(self, connector: Connector) -> int:
        """Each API pages by its own size (CRM_PAGE_SIZE for the CRM); the engine's is a fallback."""
        page_size = getattr(connector, "page_size", None)
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
            return self.settings.page_size
        return page_size

    async def _link(self, entity: EntitySpec, counts: PassCounts) -> None:
        """First sync of two populated systems: records sharing a normalised match key become
        one pair instead of two creates; a key held by several records on a side is parked."""
        if entity.match_key is None:
            return
        groups = await self.pairs.link_groups(entity.name)
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
            ambiguous.extend(await self._park_rows(entity, e_rows + c_rows, reason))
        await self.pairs.link(links)
        counts.linked += len(links)
        if ambiguous:
            counts.parked["ambiguous"] += len(ambiguous)
            async with self.pool.acquire() as conn, conn.transaction():
                await self.errors.park(conn, [p.failure for p in ambiguous])
                await self.pairs.release(conn, [p.pair_id for p in ambiguous], "parked")

    async def _park_rows(self, entity: EntitySpec, row_ids: list[int], reason: str) -> list[Parked]:
        rows = await self.pool.fetch(
            "SELECT id, ecosire_id, crm_id, ecosire_pending, crm_pending, ecosire_snapshot,"
            " crm_snapshot FROM record_map WHERE id = ANY($1::bigint[])",
            row_ids,
        )
        parked = []
        for row in rows:
            side = Side.ECOSIRE if row["ecosire_id"] is not None else Side.CRM
            payload = row[f"{side.value}_pending"] or row[f"{side.value}_snapshot"] or {}
            parked.append(
                Parked(
                    row["id"],
                    Failure(
                        entity.name, side, row[f"{side.value}_id"], row["id"], payload, reason, "ambiguous"
                    ),
                )
            )
        return parked

    # -- a pass's frame: run history, entity locks, summary line ------------------------------

    async def _run(self, kind: str, entities: Sequence[EntitySpec], body: Any) -> PassReport:
        run_id = await self.runs.start(kind)
        counts = PassCounts()
        before = {side: self.connectors[side].stats.total for side in Side}
        started = time.monotonic()
        report = PassReport(run_id, kind, "ok", counts)
        problems: list[str] = []
        try:
            for entity in entities:
                if self.stopping.is_set():
                    break
                try:
                    async with self._entity_lock(entity) as held:
                        if not held:
                            log.warning(
                                "entity_busy",
                                entity=entity.name,
                                run=run_id,
                                detail="another crmsyncd holds this entity's lock; skipped",
                            )
                            continue
                        await body(entity, run_id, counts)
                except DeleteGuardTripped as exc:
                    report.status = "blocked"
                    problems.append(f"{entity.name}: {exc}")
                    log.error("delete_guard_tripped", entity=entity.name, run=run_id, error=str(exc))
                except ConnectorError as exc:
                    if exc.outcome is Outcome.AUTH_FAILED:
                        raise AuthFailure(str(exc)) from None
                    # A side that cannot be read now (5xx beyond the retries, a garbled listing):
                    # this entity waits for the next pass, its cursor untouched; the others go on.
                    if report.status == "ok":
                        report.status = "partial"
                    problems.append(f"{entity.name}: {exc}")
                    log.error("entity_failed", entity=entity.name, run=run_id, error=str(exc))
            if self.stopping.is_set():
                report.status = "stopped"
        except AuthFailure as exc:
            report.status = "failed"
            problems.append(str(exc))
        except DATABASE_ERRORS as exc:  # the database went away: say so, keep the daemon up
            report.status = "error"
            problems.append(describe_database_error(exc))
            log.error(f"{kind}_pass_error", run=run_id, error=problems[-1])
        except Exception as exc:  # a bug: say so with its traceback, keep the daemon up
            report.status = "error"
            problems.append(f"{type(exc).__name__}: {exc}")
            log.exception(f"{kind}_pass_error", run=run_id, error=str(exc))
        finally:
            report.error = "; ".join(problems) or None
            report.seconds = time.monotonic() - started
            report.requests = {side.value: self.connectors[side].stats.total - before[side] for side in Side}
            try:
                await self.runs.finish(run_id, report.status, counts.as_dict(), report.requests, report.error)
            except DATABASE_ERRORS as exc:
                log.error("run_history_unsaved", run=run_id, error=describe_database_error(exc))
            log.info(
                f"{kind}_pass",
                run=run_id,
                status=report.status,
                seconds=round(report.seconds, 3),
                requests=report.requests,
                error=report.error,
                **counts.as_dict(),
            )
        return report

    @contextlib.asynccontextmanager
    async def _entity_lock(self, entity: EntitySpec) -> AsyncIterator[bool]:
        """One pass per entity across all daemons sharing the database."""
        key = zlib.crc32(f"crmsyncd:{entity.name}".encode())
        async with self.pool.acquire() as conn:
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
            try:
                yield bool(held)
            finally:
                if held:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", key)
                    except DATABASE_ERRORS as exc:
                        # A session that died took its lock with it: nothing is held, and the
                        # pass's own error (if any) is the one to report.
                        log.warning(
                            "entity_lock_lost",
                            entity=entity.name,
                            error=describe_database_error(exc),
                            detail="the lock ended with its database session",
                        )

    # -- reconciliation ------------------------------------------------------------------------

    async def reconcile_pass(self, entities: Sequence[EntitySpec]) -> PassReport:
        from crmsyncd.engine.reconcile import Reconciler

        reconciler = Reconciler(self, self.settings.reconcile_budget, self.settings.delete_guard)
        async with self._busy:
            return await self._run("reconcile", () if self.stopping.is_set() else entities, reconciler.entity)

    # -- the retry job ------------------------------------------------------------------------

    async def retry_pass(
        self, entities: Sequence[EntitySpec], *, include_not_due: bool = False
    ) -> PassReport:
        async with self._busy:
            if self.stopping.is_set():  # queued behind a pass during a stop: claim nothing
                return await self._run("retry", (), self._nothing)
            claimed = await self.errors.claim_due(10_000, include_not_due=include_not_due)
            wanted = {e.name for e in entities}
            claimed = [row for row in claimed if row.entity in wanted]

            async def retry_entity(entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
                rows = [row for row in claimed if row.entity == entity.name]
                if not rows:
                    return
                await self.resolve_doubts(entity, counts)
                await self.pairs.unpark([r.map_id for r in rows if r.map_id is not None])
                for side in Side:
                    unmapped = [r for r in rows if r.map_id is None and r.side is side]
                    if unmapped:
                        await self._restage(entity, side, unmapped, counts)
                await self.merge(entity, run_id, counts)
                counts.retried_ok += await self._resolve_clean([r.id for r in rows])

            return await self._run("retry", entities, retry_entity)

    async def _restage(
        self, entity: EntitySpec, side: Side, rows: Sequence[ErrorRow], counts: PassCounts
    ) -> None:
        """Records parked before they reached the map go through staging again, as if re-read:
        one batch per entity and side."""
        connector = self.connectors[side]
        records: list[tuple[str, datetime, JSON]] = []
        unusable: list[tuple[JSON, BadRecord]] = []
        for row in rows:
            try:
                try:
                    record_id = body_id(row.payload, connector.id_field)
                except ValueError:
                    raise BadRecord(connector.id_field, "missing or not an id") from None
                stamp = parse_timestamp(row.payload.get(connector.updated_field), connector.updated_field)
            except BadRecord as exc:
                unusable.append((row.payload, exc))
                continue
            records.append((record_id, stamp, row.payload))
        parked = set(
            await self.stager.stage(
                entity, side, records, unusable, counts, None, id_field=connector.id_field
            )
        )
        staged_ids = {record_id for record_id, _, _ in records} - parked
        await self.errors.resolve(self.pool, [r.id for r in rows if r.record_id in staged_ids])

    async def _nothing(self, entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
        return None

    async def _resolve_clean(self, error_ids: Sequence[int]) -> int:
        """Claimed rows whose pair is now settled (by this merge or a pass meanwhile)."""
        result: str = await self.pool.execute(
            """
            UPDATE sync_error e SET status = 'resolved', resolved_at = now(), updated_at = now()
            FROM record_map m
            WHERE e.id = ANY($1::bigint[]) AND e.status <> 'resolved' AND e.map_id = m.id
              AND m.state = 'ok' AND m.ecosire_pending IS NULL AND m.crm_pending IS NULL
            """,
            list(error_ids),
        )
        done: int = await self.pool.fetchval(
            "SELECT count(*) FROM sync_error WHERE id = ANY($1::bigint[]) AND status = 'resolved'",
            list(error_ids),
        )
        del result
        return done


def is_auth_failure(exc: BaseException) -> bool:
    return isinstance(exc, AuthFailure) or (
        isinstance(exc, ConnectorError) and exc.outcome is Outcome.AUTH_FAILED
    )
