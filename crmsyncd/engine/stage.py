"""Staging: each page of changes becomes durable observations in the record map, in one
transaction with the cursor that covers it. A record whose mapped values equal what we last
wrote (our own echo) costs nothing; a record that cannot be read is parked with the reason."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from crmsyncd.domain.canonical import (
    RefTable,
    UnresolvedReference,
    canonicalize,
    normalise_key,
    ref_ids,
)
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, BadRecord, Side
from crmsyncd.engine.counts import PassCounts
from crmsyncd.store.db import Pool
from crmsyncd.store.errors import ErrorStore, Failure
from crmsyncd.store.pairs import CursorStore, Observation, PairStore


@dataclass(frozen=True, slots=True)
class Cursor:
    updated_at: datetime
    record_id: str


def anonymous_id(body: JSON) -> str:
    """A stable name for a record that has no usable id, so its error row is not duplicated."""
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return f"(no id) {digest}"


async def resolve_refs(
    pairs: PairStore, entity: EntitySpec, wanted: Sequence[tuple[str, Side, str]]
) -> RefTable:
    """Translate referenced ids through the referenced entity's map: one query per entity and side."""
    table: dict[tuple[str, Side, str], str] = {}
    groups: dict[tuple[str, Side], set[str]] = {}
    for ref_entity, side, rid in wanted:
        groups.setdefault((ref_entity, side), set()).add(rid)
    for (ref_entity, side), ids in groups.items():
        found = await pairs.counterparts(ref_entity, side, sorted(ids))
        for rid, other in found.items():
            # Both directions: a record written with a translated id is read back with it.
            table[(ref_entity, side, rid)] = other
            table[(ref_entity, side.other, other)] = rid
    return table


class Stager:
    def __init__(self, pool: Pool, pairs: PairStore, cursors: CursorStore, errors: ErrorStore) -> None:
        self.pool = pool
        self.pairs = pairs
        self.cursors = cursors
        self.errors = errors

    async def stage(
        self,
        entity: EntitySpec,
        side: Side,
        records: Sequence[tuple[str, datetime, JSON]],
        unusable: Sequence[tuple[JSON, BadRecord]],
        counts: PassCounts,
        cursor: Cursor | None,
        *,
        id_field: str,
    ) -> list[str]:
        """Stage one page; returns the ids parked as unreadable."""
        counts.seen[side.value] += len(records) + len(unusable)
        wanted = [ref for _, _, body in records for ref in ref_ids(entity, side, body)]
        refs = await resolve_refs(self.pairs, entity, wanted) if wanted else {}
        known = await self.pairs.known(entity.name, side, [rid for rid, _, _ in records])
        observations: list[Observation] = []
        failures = [
            Failure(
                entity.name,
                side,
                anonymous_id(body) if exc.field == id_field else str(body.get(id_field)),
                None,
                body,
                f"{side.value} {entity.name} record unreadable: {exc}",
                "bad_record",
            )
            for body, exc in unusable
        ]
        for record_id, stamp, body in records:
            try:
                values = canonicalize(entity, side, body, refs)
            except BadRecord as exc:
                failures.append(
                    Failure(
                        entity.name,
                        side,
                        record_id,
                        None,
                        body,
                        f"{side.value} {entity.name} {record_id}: {exc}",
                        "bad_record",
                    )
                )
                continue
            except UnresolvedReference:
                values = None  # cannot be an echo; the merge resolves it or parks it
            prior = known.get(record_id)
            if prior is not None and prior.pending_at == stamp:
                continue  # this very observation is staged already (re-read in the overlap)
            if (
                values is not None
                and prior is not None
                and prior.state == "ok"
                and not prior.has_pending
                and prior.snapshot == values
            ):
                counts.echoes += 1
                continue
            key = normalise_key(values.get(entity.match_key)) if values and entity.match_key else None
            observations.append(Observation(record_id, key, body, stamp))
        async with self.pool.acquire() as conn, conn.transaction():
            await self.pairs.stage(conn, entity.name, side, observations)
            await self.errors.park(conn, failures)
            if cursor is not None:
                await self.cursors.save(conn, entity.name, side, cursor.updated_at, cursor.record_id)
        counts.staged += len(observations)
        for failure in failures:
            counts.parked[failure.error_class] += 1
        return [f.record_id for f in failures]
