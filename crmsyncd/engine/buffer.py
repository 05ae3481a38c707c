"""Bookkeeping of finished pairs, written in batches (size or time, whichever comes first) so that
the hot path costs a fraction of a round trip per record. A crash loses at most one unflushed
batch, which the next pass redoes: the claim marks make it look before it creates again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import asyncpg

from crmsyncd.domain.records import Side
from crmsyncd.engine.apply import Deleted, Parked, Result
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import Pool, execute_atomically
from crmsyncd.store.errors import ErrorClass, ErrorStore, Failure
from crmsyncd.store.links import attach_statements
from crmsyncd.store.pairs import PairState, PairStore, Settled

log = get_logger()


class ResultBuffer:
    def __init__(
        self,
        entity: str,
        pool: Pool,
        pairs: PairStore,
        errors: ErrorStore,
        size: int = 100,
        interval: float = 0.5,
    ) -> None:
        self.entity = entity
        self.pool = pool
        self.pairs = pairs
        self.errors = errors
        self.size = size
        self.interval = interval
        self._items: list[Result] = []
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self.flushes = 0

    async def __aenter__(self) -> ResultBuffer:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # The ticker is told to stop, never cancelled: a cancel landing inside a flush would
        # roll back bookkeeping of writes that already happened remotely.
        self._closing.set()
        try:
            if self._ticker is not None:
                await self._ticker
        finally:
            await self.flush()

    async def add(self, result: Result) -> None:
        self._items.append(result)
        if len(self._items) >= self.size:
            await self.flush()

    async def _tick(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            items, self._items = self._items, []
            if not items:
                return
            try:
                await self._write(items)
            except asyncpg.UniqueViolationError:
                # Two pairs claimed the same remote record (a race between a link and a
                # create): write one by one so that only the culprit is parked.
                for item in items:
                    try:
                        await self._write([item])
                    except asyncpg.UniqueViolationError as exc:
                        await self._write([_as_conflict(self.entity, item, exc)])
            self.flushes += 1

    async def _write(self, items: Sequence[Result]) -> None:
        settled = [i for i in items if isinstance(i, Settled)]
        parked = [i for i in items if isinstance(i, Parked)]
        deleted = [i for i in items if isinstance(i, Deleted)]
        links = [p.link for p in parked if p.link]
        failures = [d.failure for d in deleted if d.failure is not None] + [p.failure for p in parked]
        # The batch lands whole or not at all, as one statement: no two parts may write the same
        # row, which holds while each pair has one result, unless a parked pair is also attached
        # (a create whose follow-up failed: rare). Otherwise the parts run in turn in a transaction.
        overlapping = bool(links) or len({i.pair_id for i in items}) < len(items)
        await execute_atomically(
            self.pool,
            [
                self.pairs.mark_deleted_statement([(d.pair_id, d.side) for d in deleted]),
                *attach_statements(links),
                *self.pairs.settle_statements(self.entity, settled),
                self.errors.park_statement(failures),
                self.pairs.release_statement([p.pair_id for p in parked], PairState.PARKED),
            ],
            in_order=overlapping,
        )


def _as_conflict(entity: str, item: Result, exc: Exception) -> Parked | Deleted:
    if isinstance(item, Deleted):
        return item
    if isinstance(item, Parked):
        # Its link collided with another pair: park it without the link.
        return Parked(item.pair_id, item.failure)
    log.warning("link_conflict", entity=entity, pair=item.pair_id, error=str(exc))
    return Parked(
        item.pair_id,
        Failure(
            entity=entity,
            side=Side.ECOSIRE,
            record_id=item.ecosire_id,
            map_id=item.pair_id,
            payload=item.ecosire_snapshot,
            reason=f"ecosire {entity} {item.ecosire_id} and crm {item.crm_id}: one of them is "
            "already linked to another record",
            error_class=ErrorClass.CONFLICT,
        ),
    )
