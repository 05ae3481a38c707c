"""Delta cursors: where each entity and side's read stands, placed by record stamps only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from crmsyncd.connectors.port import Checkpoint
from crmsyncd.domain.records import JSON, Side
from crmsyncd.store.db import Pool, Statement


@dataclass(frozen=True, slots=True)
class CursorPosition:
    """Where a side's delta read stands: every record sorting at or before (updated_at,
    record_id) has been read."""

    updated_at: datetime
    record_id: str
    # The overlap window before updated_at was re-read whole by a pass that started at least the
    # overlap after updated_at was first read: a record still hidden there took longer than the
    # overlap to commit, so later passes need not read the window again.
    window_settled: bool
    age: float  # seconds since this position was saved, on the database's clock
    token: JSON | None = None  # the feed's own continuation, opaque here

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.updated_at, self.record_id, self.token)


class CursorStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def get(self, entity: str, side: Side) -> CursorPosition | None:
        row = await self.pool.fetchrow(
            "SELECT updated_at, record_id, window_settled, token,"
            " extract(epoch FROM now() - saved_at)::float8 AS age"
            " FROM sync_cursor WHERE entity = $1 AND side = $2",
            entity,
            side.value,
        )
        if row is None:
            return None
        return CursorPosition(
            row["updated_at"], row["record_id"], row["window_settled"], row["age"], row["token"]
        )

    async def settle_window(self, entity: str, side: Side, at: CursorPosition) -> None:
        """A complete read re-read the overlap before `at` long enough after `at` was read: mark
        it, unless the cursor has moved meanwhile (a newer record opens a new window)."""
        await self.pool.execute(
            "UPDATE sync_cursor SET window_settled = true"
            " WHERE entity = $1 AND side = $2 AND updated_at = $3 AND record_id = $4",
            entity,
            side.value,
            at.updated_at,
            at.record_id,
        )

    def save_statement(self, entity: str, side: Side, at: Checkpoint) -> Statement:
        # GREATEST-style guard: a cursor only moves forward.
        return Statement(
            """
            INSERT INTO sync_cursor (entity, side, updated_at, record_id, token) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (entity, side) DO UPDATE SET
                updated_at = EXCLUDED.updated_at, record_id = EXCLUDED.record_id, saved_at = now(),
                window_settled = false, token = EXCLUDED.token
            WHERE (sync_cursor.updated_at, sync_cursor.record_id)
                  < (EXCLUDED.updated_at, EXCLUDED.record_id)
            """,
            (entity, side.value, at.stamp, at.record_id, at.token),
        )

    async def lags(self) -> list[asyncpg.Record]:
        """Per entity and side, seconds from the newest stamp read to now and since the cursor
        was saved, on the database's clock (metrics, status page)."""
        return await self.pool.fetch(
            "SELECT entity, side, updated_at, record_id, saved_at,"
            " extract(epoch FROM now() - updated_at)::float8 AS lag,"
            " extract(epoch FROM now() - saved_at)::float8 AS age"
            " FROM sync_cursor ORDER BY entity, side"
        )

    async def all(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT entity, side, updated_at, record_id, saved_at FROM sync_cursor ORDER BY entity, side"
        )
