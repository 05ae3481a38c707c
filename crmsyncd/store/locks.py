"""Advisory locks: one pass per entity across every daemon sharing the database."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Sequence

from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import DATABASE_ERRORS, Pool, describe_database_error

log = get_logger()


def _key(entity: str) -> int:
    return zlib.crc32(f"crmsyncd:{entity}".encode())


async def lock_holders(pool: Pool, entities: Sequence[str]) -> dict[str, int]:
    """Which of these entities' locks are held now, and by which database session (its pid):
    the replicas at work. A bigint advisory key shows in pg_locks as classid (its high half,
    0 for ours) and objid (its low half), with objsubid 1."""
    keys = {_key(entity): entity for entity in entities}
    rows = await pool.fetch(
        "SELECT objid::bigint AS key, pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = 0 AND objsubid = 1 AND objid::bigint = ANY($1::bigint[])"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        list(keys),
    )
    return {keys[row["key"]]: row["pid"] for row in rows}


@contextlib.asynccontextmanager
async def entity_lock(pool: Pool, entity: str) -> AsyncIterator[bool]:
    """Try the entity's lock: yields whether it is held (another daemon may have it)."""
    key = _key(entity)
    async with pool.acquire() as conn:
        held = await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
        # The session's pid is what pg_locks, the metrics and the status page name as the
        # holder: logged so that an operator can tell which replica that is.
        session = conn.get_server_pid()
        if held:
            log.info("entity_locked", entity=entity, session=session)
        try:
            yield bool(held)
        finally:
            if held:
                log.info("entity_unlocked", entity=entity, session=session)
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
