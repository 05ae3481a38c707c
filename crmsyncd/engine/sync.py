"""One pass, per entity in dependency order: both sides' pagers stage their changes concurrently,
records are linked by the match key, then claimed pairs flow through a bounded queue to N workers
that merge and write; bookkeeping lands in batches."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crmsyncd.connectors.base import Connector, ConnectorError, Outcome
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import Side
from crmsyncd.engine.apply import AuthFailure, PairWorker, Parked, wanted_refs
from crmsyncd.engine.buffer import ResultBuffer
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.pager import read_changes
from crmsyncd.engine.stage import Cursor, Stager, resolve_refs
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import Pool
from crmsyncd.store.errors import Backoff, ErrorStore, Failure
from crmsyncd.store.pairs import CursorStore, Pair, PairStore
from crmsyncd.store.runs import RunStore

log = get_logger()


@dataclass(frozen=True, slots=True)
class EngineSettings:
    workers: int = 8
    queue_size: int = 200
    page_size: int = 100
    overlap: timedelta = timedelta(seconds=2)
    claim_batch: int = 100
    flush_size: int = 100
    flush_interval: float = 0.5


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
        await asyncio.gather(*(self._read_side(entity, side, counts) for side in Side))
        await self.merge(entity, run_id, counts)

    async def _read_side(self, entity: EntitySpec, side: Side, counts: PassCounts) -> None:
        connector = self.connectors[side]
        cursor = await self.cursors.get(entity.name, side)
        since = cursor[0] - self.settings.overlap if cursor else None
        pages = read_changes(connector, entity.resource(side), since=since, page_size=self.settings.page_size)
        async with contextlib.aclosing(pages):
            async for page in pages:
                last = max(((at, rid) for rid, at, _ in page.records), default=None)
                await self.stager.stage(
                    entity,
                    side,
                    page.records,
                    page.unusable,
                    counts,
                    Cursor(last[0], last[1]) if last else None,
                    id_field=connector.id_field,
                )
                if self.stopping.is_set():
                    return

    # -- linking and merging, shared by the sync and retry jobs -------------------------------

    async def merge(
        self, entity: EntitySpec, run_id: int, counts: PassCounts, only: Sequence[int] | None = None
    ) -> None:
        await self._link(entity, counts)
        worker = PairWorker(entity, self.connectors, self.pairs.owner, counts)
        queue: asyncio.Queue[tuple[Pair, Any] | None] = asyncio.Queue(self.settings.queue_size)
        claimed: dict[int, Pair] = {}
        auth_error: list[str] = []
        abort = asyncio.Event()

        async def produce() -> None:
            try:
                while not (self.stopping.is_set() or abort.is_set()):
                    batch = await self.pairs.claim(entity.name, run_id, self.settings.claim_batch, only)
                    if not batch:
                        break
                    wanted = wanted_refs(entity, batch)
                    refs = await resolve_refs(self.pairs, entity, wanted) if wanted else {}
                    for pair in batch:
                        claimed[pair.id] = pair
                        await queue.put((pair, refs))
            finally:
                for _ in range(self.settings.workers):
                    await queue.put(None)

        async def consume(buffer: ResultBuffer) -> None:
            while (item := await queue.get()) is not None:
                pair, refs = item
                if abort.is_set() or self.stopping.is_set():
                    continue  # left claimed-but-untouched; released below
                try:
                    result = await worker.apply(pair, refs)
                except AuthFailure as exc:
                    auth_error.append(str(exc))
                    abort.set()
                    continue
                claimed.pop(pair.id, None)
                await buffer.add(result)

        async with ResultBuffer(
            entity.name,
            self.pool,
            self.pairs,
            self.errors,
            self.settings.flush_size,
            self.settings.flush_interval,
        ) as buffer:
            await asyncio.gather(produce(), *(consume(buffer) for _ in range(self.settings.workers)))
        if claimed:
            await self.pairs.release(self.pool, list(claimed), "ok", untouched=True)
        if auth_error:
            raise AuthFailure(auth_error[0])

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
        try:
            for entity in entities:
                if self.stopping.is_set():
                    report.status = "stopped"
                    break
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
            if self.stopping.is_set():
                report.status = "stopped"
        except (AuthFailure, ConnectorError) as exc:
            report.status = "failed"
            report.error = str(exc)
        finally:
            report.seconds = time.monotonic() - started
            report.requests = {side.value: self.connectors[side].stats.total - before[side] for side in Side}
            await self.runs.finish(run_id, report.status, counts.as_dict(), report.requests, report.error)
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
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)

    # -- the retry job ------------------------------------------------------------------------

    async def retry_pass(
        self, entities: Sequence[EntitySpec], *, include_not_due: bool = False
    ) -> PassReport:
        async with self._busy:
            claimed = await self.errors.claim_due(10_000, include_not_due=include_not_due)
            wanted = {e.name for e in entities}
            claimed = [row for row in claimed if row.entity in wanted]

            async def retry_entity(entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
                rows = [row for row in claimed if row.entity == entity.name]
                if not rows:
                    return
                await self.pairs.unpark([r.map_id for r in rows if r.map_id is not None])
                for row in rows:
                    if row.map_id is None:
                        await self._restage(entity, row.side, row.payload, row.id, counts)
                await self.merge(entity, run_id, counts)
                counts.retried_ok += await self._resolve_clean([r.id for r in rows])

            return await self._run("retry", entities, retry_entity)

    async def _restage(
        self, entity: EntitySpec, side: Side, payload: Any, error_id: int, counts: PassCounts
    ) -> None:
        """A record parked before it reached the map goes through staging again, as if re-read."""
        from crmsyncd.domain.records import BadRecord, parse_timestamp
        from crmsyncd.engine.pager import _record_id

        connector = self.connectors[side]
        try:
            record_id = _record_id(payload, connector.id_field)
            stamp = parse_timestamp(payload.get(connector.updated_field), connector.updated_field)
        except BadRecord as exc:
            await self.stager.stage(
                entity, side, [], [(payload, exc)], counts, None, id_field=connector.id_field
            )
            return
        parked = await self.stager.stage(
            entity, side, [(record_id, stamp, payload)], [], counts, None, id_field=connector.id_field
        )
        if not parked:
            await self.errors.resolve(self.pool, [error_id])

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
