"""Numbered SQL migrations, applied in order under an advisory lock so that two daemons starting
together cannot both apply one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from crmsyncd.store.db import Pool

# An arbitrary constant: the advisory lock key that serialises migrations across processes.
_MIGRATION_LOCK = 0x63726D73_796E63


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("crmsyncd.store").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{3})_([a-z0-9_]+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n without gaps: {versions}")
    return found


async def pending_migrations(pool: Pool) -> list[int]:
    """The versions not applied yet (all of them on a database never migrated): readiness."""
    applied = await pool.fetchval(
        "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN ARRAY[]::int[]"
        " ELSE (SELECT coalesce(array_agg(version), ARRAY[]::int[]) FROM schema_migrations) END"
    )
    return [m.version for m in available_migrations() if m.version not in set(applied)]


async def migrate(pool: Pool) -> list[int]:
    """Apply what is missing; returns the versions applied now."""
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in available_migrations():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                applied_now.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now
