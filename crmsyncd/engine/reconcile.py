"""Reconciliation: ECOSIRE's list cannot show deletions, so now and then each side is listed in
full and compared with the map. A linked record the listing does not show, and a GET confirms
gone (404), was deleted there: the entity's delete policy applies. A sweep costs one request per
hundred records and is capped by a budget; a sweep that finds a larger share of an entity missing
than the delete guard allows stops before flagging or deleting anything, and says so."""

from __future__ import annotations

from collections.abc import Sequence

from crmsyncd.connectors.port import PagingLoop
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import Side
from crmsyncd.engine.apply import DeleteGuard, DeleteGuardTripped
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.deletes import apply_deletions
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.pairs import Pair

log = get_logger()


class Reconciler:
    def __init__(self, engine: EngineContext, budget: int, share: float) -> None:
        self.engine = engine
        self.budget = budget
        self.share = share

    async def entity(self, entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
        for side in Side:
            gone = await self._sweep(entity, side, run_id)
            if gone is None or not gone[0]:
                continue
            missing, total = gone
            guard = DeleteGuard(entity.name, self.share, total)
            if len(missing) > guard.allowance:
                raise DeleteGuardTripped(
                    f"circuit breaker: a full listing of {side.value} {entity.name} does not show "
                    f"{len(missing)} of {total} linked records ({len(missing) / total:.0%}, more than "
                    f"{self.share:.0%}); nothing was flagged or deleted. Check the {side.value} "
                    "account and its API, then raise CRMSYNCD_DELETE_GUARD if this is intended."
                )
            await self._apply(entity, side, missing, counts, guard)

    async def _sweep(self, entity: EntitySpec, side: Side, run_id: int) -> tuple[list[Pair], int] | None:
        engine = self.engine
        connector = engine.connectors[side]
        sweep = run_id * 2 + (0 if side is Side.ECOSIRE else 1)
        began = await engine.pairs.database_time()
        pages = connector.changes(entity.resource(side), since=None, max_requests=self.budget)
        try:
            async for page in pages:
                if page.records:
                    await engine.sweeps.note_seen(sweep, [rid for rid, _, _ in page.records])
                if engine.stopping.is_set():
                    return None
            return await engine.sweeps.missing(entity.name, side, sweep, began)
        except PagingLoop:
            log.warning(
                "reconcile_incomplete",
                entity=entity.name,
                side=side.value,
                budget=self.budget,
                detail="the full listing needs more requests than CRMSYNCD_RECONCILE_BUDGET; "
                "no deletion was inferred",
            )
            return None
        finally:
            await pages.aclose()
            await engine.sweeps.forget_sweep(sweep)

    async def _apply(
        self, entity: EntitySpec, side: Side, missing: Sequence[Pair], counts: PassCounts, guard: DeleteGuard
    ) -> None:
        await apply_deletions(
            self.engine,
            entity,
            side,
            missing,
            counts,
            guard,
            how="missing from a full listing and from a read by id",
            confirm=True,
        )
