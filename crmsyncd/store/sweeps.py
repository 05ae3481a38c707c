"""The reconcile sweep's bookkeeping: which ids a full listing showed, and the linked pairs
whose record it did not."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from crmsyncd.domain.records import Side
from crmsyncd.store.db import Pool
from crmsyncd.store.pairs import PAIR_COLUMNS, Pair, column


class SweepStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def note_seen(self, sweep: int, ids: Sequence[str]) -> None:
        await self.pool.execute(
            "INSERT INTO reconcile_seen (sweep, record_id) SELECT $1, unnest($2::text[])"
            " ON CONFLICT DO NOTHING",
            sweep,
            list(ids),
        )

    async def missing(self, entity: str, side: Side, sweep: int, before: datetime) -> tuple[list[Pair], int]:
        """Linked pairs settled before the sweep began whose `side` id the full listing did not
        show, and how many such pairs there are in all (the circuit breaker's base)."""
        rid = column(side, "id")
        rows = await self.pool.fetch(
            f"""
            SELECT {PAIR_COLUMNS} FROM record_map m
            WHERE entity = $1 AND state <> 'deleted' AND {rid} IS NOT NULL AND synced_at < $3
              AND NOT EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.sweep = $2 AND s.record_id = m.{rid})
            ORDER BY id
            """,
            entity,
            sweep,
            before,
        )
        total: int = await self.pool.fetchval(
            f"SELECT count(*) FROM record_map WHERE entity = $1 AND state <> 'deleted'"
            f" AND {rid} IS NOT NULL AND synced_at < $2",
            entity,
            before,
        )
        return [Pair.from_row(r) for r in rows], total

    async def forget_sweep(self, sweep: int) -> None:
        await self.pool.execute("DELETE FROM reconcile_seen WHERE sweep = $1", sweep)
