"""Mapping fingerprints and the full re-reads they start (migration 006).

Per entity, what its mapping said when its state was last brought in line with it: the resource
read on each side, the match key, and one row per field, so that a changed mapping is told apart
field by field. Beside them, the entity's last full re-read (a backfill after a mapping change, or
an on-demand resync): which fields it merges without a base, how far it got, whether it finished.
And the two state commands a refused start points to: carry an entity's state over to a new name,
or forget it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from crmsyncd.domain.records import JSON, Side
from crmsyncd.store.db import Pool, Statement, execute_atomically


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One entity's mapping as far as its stored state depends on it."""

    resources: Mapping[Side, str]  # per side, the resource path the connector reads
    match_key: str | None
    fields: Mapping[str, JSON]  # per field: remote names, direction, rule, transform, immutable


@dataclass(frozen=True, slots=True)
class Backfill:
    entity: str
    kind: str  # "backfill" (a mapping change) or "resync" (on demand)
    fields: tuple[str, ...]  # merged with no base; none for a plain resync
    run_id: int | None
    started_at: datetime
    finished_at: datetime | None
    progress: JSON = field(default_factory=dict)


# Tables holding an entity's state by name (sync_error rows go with their pairs).
_STATE_TABLES = ("record_map", "sync_cursor", "sync_error", "entity_backfill")


class FingerprintStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def load(self, entity: str) -> Fingerprint | None:
        head = await self.pool.fetchrow(
            "SELECT ecosire_resource, crm_resource, match_key FROM mapping_entity WHERE entity = $1", entity
        )
        if head is None:
            return None
        rows = await self.pool.fetch("SELECT field, spec FROM mapping_field WHERE entity = $1", entity)
        return Fingerprint(
            {Side.ECOSIRE: head["ecosire_resource"], Side.CRM: head["crm_resource"]},
            head["match_key"],
            {r["field"]: r["spec"] for r in rows},
        )

    def _save_statements(self, entity: str, print_: Fingerprint) -> list[Statement]:
        names = list(print_.fields)
        return [
            Statement(
                "INSERT INTO mapping_entity (entity, ecosire_resource, crm_resource, match_key)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (entity) DO UPDATE SET"
                " ecosire_resource = EXCLUDED.ecosire_resource, crm_resource = EXCLUDED.crm_resource,"
                " match_key = EXCLUDED.match_key, saved_at = now()",
                (entity, print_.resources[Side.ECOSIRE], print_.resources[Side.CRM], print_.match_key),
            ),
            Statement(
                "DELETE FROM mapping_field WHERE entity = $1 AND NOT field = ANY($2::text[])", (entity, names)
            ),
            Statement(
                "INSERT INTO mapping_field (entity, field, spec)"
                " SELECT $1, u.field, u.spec FROM unnest($2::text[], $3::jsonb[]) AS u(field, spec)"
                " ON CONFLICT (entity, field) DO UPDATE SET spec = EXCLUDED.spec",
                (entity, names, [print_.fields[n] for n in names]),
            ),
        ]

    async def save(self, entity: str, print_: Fingerprint) -> None:
        await execute_atomically(self.pool, self._save_statements(entity, print_), in_order=True)

    async def save_resources(self, entity: str, resources: Mapping[Side, str]) -> bool:
        """Accept the resources now configured; False when no fingerprint is stored for `entity`."""
        done = await self.pool.fetchval(
            "UPDATE mapping_entity SET ecosire_resource = $2, crm_resource = $3, saved_at = now()"
            " WHERE entity = $1 RETURNING entity",
            entity,
            resources[Side.ECOSIRE],
            resources[Side.CRM],
        )
        return done is not None

    async def entities_with_state(self) -> dict[str, int]:
        """Entity names the database holds state for (pairs or cursors), with their map rows."""
        rows = await self.pool.fetch(
            "SELECT entity, sum(n)::bigint AS n FROM ("
            " SELECT entity, count(*) AS n FROM record_map GROUP BY entity"
            " UNION ALL SELECT entity, 0 FROM sync_cursor) AS s GROUP BY entity ORDER BY entity"
        )
        return {r["entity"]: r["n"] for r in rows}

    # -- full re-reads -------------------------------------------------------------------------

    async def backfill(self, entity: str) -> Backfill | None:
        rows = await self._backfills("WHERE entity = $1", entity)
        return rows[0] if rows else None

    async def backfills(self) -> list[Backfill]:
        return await self._backfills("")

    async def _backfills(self, where: str, *args: str) -> list[Backfill]:
        rows = await self.pool.fetch(
            "SELECT entity, kind, fields, run_id, started_at, finished_at, progress"
            f" FROM entity_backfill {where} ORDER BY entity",
            *args,
        )
        return [
            Backfill(
                r["entity"],
                r["kind"],
                tuple(r["fields"]),
                r["run_id"],
                r["started_at"],
                r["finished_at"],
                r["progress"],
            )
            for r in rows
        ]

    async def start(self, entity: str, kind: str, fields: Sequence[str], run_id: int) -> None:
        """Record a full re-read as started and drop both sides' bases of `fields`, together: the
        pairs then merge those fields as on a first link, whichever job merges them, and a
        re-read cut short leaves its fields on record for the next pass to finish."""
        await execute_atomically(
            self.pool,
            [
                Statement(
                    "INSERT INTO entity_backfill (entity, kind, fields, run_id) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (entity) DO UPDATE SET kind = EXCLUDED.kind, fields = EXCLUDED.fields,"
                    " run_id = EXCLUDED.run_id, started_at = now(), finished_at = NULL, progress = '{}'",
                    (entity, kind, list(fields), run_id),
                ),
                None
                if not fields
                else Statement(
                    "UPDATE record_map SET ecosire_snapshot = ecosire_snapshot - $2::text[],"
                    " crm_snapshot = crm_snapshot - $2::text[], updated_at = now()"
                    " WHERE entity = $1 AND (ecosire_snapshot ?| $2::text[] OR crm_snapshot ?| $2::text[])",
                    (entity, list(fields)),
                ),
            ],
        )

    async def note_progress(self, entity: str, progress: JSON) -> None:
        await self.pool.execute(
            "UPDATE entity_backfill SET progress = $2 WHERE entity = $1", entity, progress
        )

    async def finish(self, entity: str, progress: JSON, print_: Fingerprint) -> None:
        """The re-read is complete: it is marked done and the mapping it applied becomes the
        entity's fingerprint, in one transaction (a kill before leaves it to be run again)."""
        await execute_atomically(
            self.pool,
            [
                Statement(
                    "UPDATE entity_backfill SET finished_at = now(), progress = $2 WHERE entity = $1",
                    (entity, progress),
                ),
                *self._save_statements(entity, print_),
            ],
            in_order=True,
        )

    # -- the state commands --------------------------------------------------------------------

    async def rename_entity(self, old: str, new: str) -> int:
        """Carry `old`'s state over to `new` (pairs, cursors, error rows, fingerprint); the map rows
        moved. Both names are checked by the caller."""
        async with self.pool.acquire() as conn, conn.transaction():
            moved: int = await conn.fetchval("SELECT count(*) FROM record_map WHERE entity = $1", old)
            # What a stateless `new` may have left (a pass over empty lists saves a fingerprint).
            for table in ("entity_backfill", "mapping_entity"):
                await conn.execute(f"DELETE FROM {table} WHERE entity = $1", new)
            for table in (*_STATE_TABLES, "mapping_entity"):  # mapping_field follows by cascade
                await conn.execute(f"UPDATE {table} SET entity = $2 WHERE entity = $1", old, new)
        return moved

    async def forget_entity(self, entity: str) -> int:
        """Delete everything stored for `entity`; the map rows deleted."""
        async with self.pool.acquire() as conn, conn.transaction():
            gone: int = await conn.fetchval("SELECT count(*) FROM record_map WHERE entity = $1", entity)
            for table in ("sync_error", "record_map", "sync_cursor", "entity_backfill", "mapping_entity"):
                await conn.execute(f"DELETE FROM {table} WHERE entity = $1", entity)
        return gone
