"""History of passes: when they ran, how they ended, what they counted and spent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from crmsyncd.store.db import Pool
from crmsyncd.store.errors import Backoff, ErrorStore


class RunStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def start(self, kind: str) -> int:
        run_id: int = await self.pool.fetchval("INSERT INTO sync_run (kind) VALUES ($1) RETURNING id", kind)
        return run_id

    async def finish(
        self,
        run_id: int,
        status: str,
        counts: dict[str, Any],
        requests: dict[str, Any],
        error: str | None = None,
    ) -> None:
        await self.pool.execute(
            "UPDATE sync_run SET finished_at = now(), status = $2, counts = $3, requests = $4,"
            " error = $5 WHERE id = $1",
            run_id,
            status,
            counts,
            requests,
            error,
        )

    async def last(self, kind: str = "sync") -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT id, kind, started_at, finished_at, status, counts, requests, error"
            " FROM sync_run WHERE kind = $1 ORDER BY id DESC LIMIT 1",
            kind,
        )

    async def recent(self, limit: int = 20) -> list[asyncpg.Record]:
        """The latest passes of every kind, newest first (the status page)."""
        return await self.pool.fetch(
            "SELECT id, kind, started_at, finished_at, status, counts, requests, error,"
            " extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 AS seconds"
            " FROM sync_run ORDER BY id DESC LIMIT $1",
            limit,
        )

    async def last_finished(self) -> asyncpg.Record | None:
        """The last pass of any kind that ended (readiness: did it fail for credentials?)."""
        return await self.pool.fetchrow(
            "SELECT id, kind, status, error FROM sync_run WHERE finished_at IS NOT NULL"
            " ORDER BY id DESC LIMIT 1"
        )

    async def prune(self, days: int) -> int:
        """Delete passes started more than `days` days ago, except the last of each kind, which
        `status` shows however old it is. One statement on the indexes of migration 008."""
        result: str = await self.pool.execute(
            """
            DELETE FROM sync_run r
            WHERE r.started_at < now() - make_interval(days => $1)
              AND EXISTS (SELECT 1 FROM sync_run n WHERE n.kind = r.kind AND n.id > r.id)
            """,
            days,
        )
        return int(result.split()[-1])


@dataclass(frozen=True, slots=True)
class Pruned:
    days: int
    runs: int
    errors: int


async def prune_history(pool: Pool, days: int) -> Pruned:
    """The history older than `days` (CRMSYNCD_HISTORY_DAYS): past passes and resolved error
    rows, which nothing reads but `status` and which would otherwise grow without bound. Run by
    `crmsyncd prune` and by the daemon once a day."""
    runs = await RunStore(pool).prune(days)
    errors = await ErrorStore(pool, Backoff()).prune(days)
    return Pruned(days=days, runs=runs, errors=errors)
