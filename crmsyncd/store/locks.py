"""Advisory locks: one pass per entity across every daemon sharing the database."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator

from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import DATABASE_ERRORS, Pool, describe_database_error

log = get_logger()


@contextlib.asynccontextmanager
async def entity_lock(pool: Pool, entity: str) -> AsyncIterator[bool]:
    """Try the entity's lock: yields whether it is held (another daemon may have it)."""
    key = zlib.crc32(f"crmsyncd:{entity}".encode())
    async with pool.acquire() as conn:
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
                        entity=entity,
                        error=describe_database_error(exc),
                        detail="the lock ended with its database session",
                    )
