"""Staging: each page of changes becomes durable observations in the record map, in one
transaction with the cursor that covers it. A record whose mapped values equal what we last
wrote (our own echo) costs nothing; a record that cannot be read is parked with the reason,
dead at once: the verdict on the same payload cannot change, so retrying it would be noise. Fixed
at its source, the record is read again (its stamp moved) and its row is resolved when it syncs;
after a mapping change, `errors replay` gives it a new reading.

PostgreSQL keeps no U+0000 and no unpaired surrogate in jsonb or text, and one such character in
any field would fail the whole page's transaction, again at every pass. So every body is made
storable first: those characters become U+FFFD. In a mapped field they make the record bad input
anyway (canonical.text_problem); in an unmapped one they do not matter. A parked copy that had
characters replaced carries `REPLACED_KEY` (the error queue shows which fields); a retry reads the
record afresh at its source (engine/retry.py), never syncing the replacement characters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from crmsyncd.connectors.port import Checkpoint
from crmsyncd.domain.canonical import (
    RefTable,
    UnresolvedReference,
    canonicalize,
    normalise_key,
    ref_ids,
    text_problem,
)
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, BadRecord, Side
from crmsyncd.domain.storable import REPLACED_KEY, anonymous_id, storable
from crmsyncd.engine.counts import PassCounts
from crmsyncd.store.cursors import CursorStore
from crmsyncd.store.db import Pool, execute_atomically
from crmsyncd.store.errors import ErrorClass, ErrorStore, Failure
from crmsyncd.store.pairs import Observation, PairState, PairStore

_ABSENT = object()


def _parked_copy(body: JSON) -> JSON:
    """The payload kept with a parked record: storable, and marked if that changed its text."""
    clean, changed = storable(body)
    if changed and REPLACED_KEY not in clean:
        clean[REPLACED_KEY] = changed
    return clean


def _usable_id(record_id: str) -> bool:
    return text_problem(record_id) is None


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
        cursor: Checkpoint | None,
        *,
        id_field: str,
        reread: bool = False,
    ) -> list[str]:
        """Stage one page; returns the ids parked as unreadable. `reread`: a full re-read (a
        backfill, a resync), whose versions are staged even when not newer than the version
        merged, unless they equal what we last knew (echoes cost nothing there either)."""
        counts.seen[side.value] += len(records) + len(unusable)
        unusable = [*unusable]
        usable: list[tuple[str, datetime, JSON]] = []
        for record_id, stamp, body in records:
            if _usable_id(record_id):
                usable.append((record_id, stamp, body))
            else:
                unusable.append((body, BadRecord(id_field, "id holds characters no store can keep")))
        records = usable
        wanted = [ref for _, _, body in records for ref in ref_ids(entity, side, body)]
        refs = await resolve_refs(self.pairs, entity, wanted) if wanted else {}
        known = await self.pairs.known(entity.name, side, [rid for rid, _, _ in records])
        observations: list[Observation] = []
        failures = [
            Failure(
                entity.name,
                side,
                _unusable_id(body, exc, id_field),
                None,
                _parked_copy(body),
                f"{side.value} {entity.name} record unreadable: {exc}",
                ErrorClass.BAD_RECORD,
                final=True,
            )
            for body, exc in unusable
        ]
        for record_id, stamp, body in records:
            try:
                replaced = body.get(REPLACED_KEY)
                if replaced:
                    # A parked copy whose text was altered to be stored: only the source has it.
                    raise BadRecord(
                        str(replaced[0]) if isinstance(replaced, list) and replaced else REPLACED_KEY,
                        "text that could not be stored was replaced in this copy; fix the record "
                        "at its source",
                    )
                values = canonicalize(entity, side, body, refs)
            except BadRecord as exc:
                failures.append(
                    Failure(
                        entity.name,
                        side,
                        record_id,
                        None,
                        _parked_copy(body),
                        f"{side.value} {entity.name} {record_id}: {exc}",
                        ErrorClass.BAD_RECORD,
                        final=True,
                    )
                )
                continue
            except UnresolvedReference:
                values = None  # cannot be an echo; the merge resolves it or parks it
            prior = known.get(record_id)
            if prior is not None and (
                prior.pending_at == stamp
                or (not reread and prior.seen_at is not None and stamp <= prior.seen_at)
            ):
                # This very version is staged or merged already (re-read in the overlap).
                continue
            if (
                values is not None
                and prior is not None
                and prior.state == PairState.OK
                and not prior.has_pending
                and prior.snapshot == values
            ):
                counts.echoes += 1
                continue
            key = normalise_key(values.get(entity.match_key)) if values and entity.match_key else None
            # Unmapped fields may hold what PostgreSQL cannot keep; they are never written anywhere.
            observations.append(Observation(record_id, key, storable(body)[0], stamp))
        parked_ids = [f.record_id for f in failures]
        failures = await self._not_parked_yet(entity.name, side, failures)
        # One statement, so the page's observations, its parked records and the cursor past them
        # land together (three tables: no row is written twice).
        await execute_atomically(
            self.pool,
            [
                self.pairs.stage_statement(entity.name, side, observations, reread=reread),
                self.errors.park_statement(failures),
                None if cursor is None else self.cursors.save_statement(entity.name, side, cursor),
            ],
        )
        counts.staged += len(observations)
        for failure in failures:
            counts.parked[failure.error_class] += 1
        return parked_ids

    async def _not_parked_yet(self, entity: str, side: Side, failures: list[Failure]) -> list[Failure]:
        """Drop failures already parked with the very same payload: a bad record re-read (the
        overlap window, a re-listing) is the same verdict, and re-parking it would count attempts
        that nobody made (invariant 1: replaying a page changes nothing). A row given a new chance
        (`errors replay`) is pending again, and its verdict is recorded anew."""
        if not failures:
            return failures
        stored = await self.errors.dead_payloads(entity, side, [f.record_id for f in failures])
        return [f for f in failures if stored.get(f.record_id, _ABSENT) != f.payload]


def _unusable_id(body: JSON, exc: BadRecord, id_field: str) -> str:
    if exc.field != id_field:
        record_id = str(body.get(id_field))
        if _usable_id(record_id):
            return record_id
    return anonymous_id(body)
