"""History of passes: when they ran, how they ended, what they counted and spent."""

from __future__ import annotations

from typing import Any

import asyncpg

from crmsyncd.store.db import Pool


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
