"""`SyncEngine`: the jobs (sync, retry, reconcile, resync) over one shared context, taking turns
within a process; across processes, each entity's lock keeps passes apart (engine/passes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from crmsyncd.connectors.port import Connector
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import Side
from crmsyncd.engine.backfill import RereadOutcome, resync_entity, sync_or_backfill
from crmsyncd.engine.context import EngineContext, EngineSettings
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.passes import PassKind, PassReport, run_pass
from crmsyncd.engine.reconcile import Reconciler
from crmsyncd.engine.retry import claim_retries
from crmsyncd.store.db import Pool
from crmsyncd.store.errors import Backoff


class SyncEngine(EngineContext):
    def __init__(
        self,
        pool: Pool,
        connectors: Mapping[Side, Connector],
        settings: EngineSettings,
        backoff: Backoff,
    ) -> None:
        super().__init__(pool, connectors, settings, backoff)
        self._busy = asyncio.Lock()  # the jobs of one process take turns

    async def sync_pass(self, entities: Sequence[EntitySpec]) -> PassReport:
        async def job(entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
            # A normal pass, or a backfill when the entity's mapping changed (engine/backfill.py).
            await sync_or_backfill(self, entity, run_id, counts)

        async with self._busy:
            return await run_pass(self, PassKind.SYNC, entities, job)

    async def retry_pass(
        self, entities: Sequence[EntitySpec], *, include_not_due: bool = False
    ) -> PassReport:
        async with self._busy:
            if self.stopping.is_set():  # queued behind a pass during a stop: claim nothing
                return await run_pass(self, PassKind.RETRY, (), _nothing)
            job = await claim_retries(self, entities, include_not_due=include_not_due)
            return await run_pass(self, PassKind.RETRY, entities, job)

    async def resync_pass(self, entities: Sequence[EntitySpec]) -> tuple[PassReport, list[RereadOutcome]]:
        """Both sides of each entity read in full and merged anew; what each re-read did."""
        outcomes: list[RereadOutcome] = []

        async def job(entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
            outcomes.append(await resync_entity(self, entity, run_id, counts))

        async with self._busy:
            return await run_pass(self, PassKind.RESYNC, entities, job), outcomes

    async def reconcile_pass(self, entities: Sequence[EntitySpec]) -> PassReport:
        reconciler = Reconciler(self, self.settings.reconcile_budget, self.settings.delete_guard)
        async with self._busy:
            return await run_pass(
                self, PassKind.RECONCILE, () if self.stopping.is_set() else entities, reconciler.entity
            )


async def _nothing(entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
    return None
