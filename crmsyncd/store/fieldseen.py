"""Field checks: per entity and side, which mapped fields the API never returned in the first
records read, and the mapped field list that result is valid for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from crmsyncd.domain.records import Side
from crmsyncd.store.db import Pool


@dataclass(frozen=True, slots=True)
class FieldCheck:
    entity: str
    side: Side
    fields: tuple[str, ...]  # the side's mapped field names when it was checked
    unseen: tuple[str, ...]
    sampled: int
    run_id: int | None
    checked_at: datetime


class FieldCheckStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def of_entity(self, entity: str) -> dict[Side, FieldCheck]:
        rows = await self.pool.fetch(_SELECT + " WHERE entity = $1", entity)
        return {check.side: check for check in map(_check, rows)}

    async def all(self) -> list[FieldCheck]:
        return [_check(row) for row in await self.pool.fetch(_SELECT + " ORDER BY entity, side")]

    async def save(
        self,
        entity: str,
        side: Side,
        fields: Sequence[str],
        unseen: Sequence[str],
        sampled: int,
        run_id: int | None,
    ) -> None:
        await self.pool.execute(
            """
            INSERT INTO field_check (entity, side, fields, unseen, sampled, run_id)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (entity, side) DO UPDATE SET
                fields = EXCLUDED.fields, unseen = EXCLUDED.unseen, sampled = EXCLUDED.sampled,
                run_id = EXCLUDED.run_id, checked_at = now()
            """,
            entity,
            side.value,
            list(fields),
            list(unseen),
            sampled,
            run_id,
        )


_SELECT = "SELECT entity, side, fields, unseen, sampled, run_id, checked_at FROM field_check"


def _check(row: asyncpg.Record) -> FieldCheck:
    return FieldCheck(
        entity=row["entity"],
        side=Side(row["side"]),
        fields=tuple(row["fields"]),
        unseen=tuple(row["unseen"]),
        sampled=row["sampled"],
        run_id=row["run_id"],
        checked_at=row["checked_at"],
    )
