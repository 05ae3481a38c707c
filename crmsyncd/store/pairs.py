"""The record map: pairs, their snapshots, and observations waiting to be merged; their claims
and settling. Linking two records into a pair lives in store/links.py, the reconcile sweep's
bookkeeping in store/sweeps.py.

Every method works on a batch (a page or a claimed chunk), so the hot path costs a handful of
round trips per hundred records, never one per record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from crmsyncd.domain.records import JSON, Side
from crmsyncd.store.db import Executor, Pool, Statement, execute


class PairState(StrEnum):
    """A record-map row's `state` column."""

    OK = "ok"  # synced, or waiting to be merged
    PARKED = "parked"  # in the retry queue; unparked by a retry or a newer observation
    DELETED = "deleted"  # gone on one side; never written again


@dataclass(slots=True)
class Pair:
    id: int
    entity: str
    ecosire_id: str | None
    crm_id: str | None
    match_key: str | None
    ecosire_snapshot: JSON | None
    crm_snapshot: JSON | None
    ecosire_seen_at: datetime | None
    crm_seen_at: datetime | None
    ecosire_pending: JSON | None
    crm_pending: JSON | None
    ecosire_pending_at: datetime | None
    crm_pending_at: datetime | None
    attempts: int
    claimed_at: datetime | None
    intent: JSON | None  # {"ecosire"|"crm": {field: value}} written before the remote calls
    # When the row last changed: the release that parks a failed attempt sets it, so that
    # attempt's remote writes ended before it (engine/doubts.py, a lagging feed's proof).
    updated_at: datetime | None = None

    def id_of(self, side: Side) -> str | None:
        return self.ecosire_id if side is Side.ECOSIRE else self.crm_id

    def snapshot(self, side: Side) -> JSON | None:
        return self.ecosire_snapshot if side is Side.ECOSIRE else self.crm_snapshot

    def pending(self, side: Side) -> JSON | None:
        return self.ecosire_pending if side is Side.ECOSIRE else self.crm_pending

    def pending_at(self, side: Side) -> datetime | None:
        return self.ecosire_pending_at if side is Side.ECOSIRE else self.crm_pending_at

    def seen_at(self, side: Side) -> datetime | None:
        return self.ecosire_seen_at if side is Side.ECOSIRE else self.crm_seen_at

    def intended(self, side: Side) -> dict[str, list[Any]]:
        """Per field, every value an unfinished claim may have written to `side`."""
        found = (self.intent or {}).get(side.value)
        return found if isinstance(found, dict) else {}

    def last_intended(self, side: Side) -> JSON:
        """What the latest unfinished attempt meant to write (a create's body, in values)."""
        return {name: values[-1] for name, values in self.intended(side).items() if values}

    def with_intent(self, plan: JSON) -> JSON:
        """The intent once `plan` is added: earlier values are kept, since a kill may have
        landed any of them (each claim that did not finish adds what it meant to write)."""
        out: JSON = {
            side: {f: list(v) for f, v in fields.items()} for side, fields in (self.intent or {}).items()
        }
        for side, fields in plan.items():
            for name, value in fields.items():
                known = out.setdefault(side, {}).setdefault(name, [])
                if value not in known:
                    known.append(value)
        return out

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Pair:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Known:
    """What staging needs to know of a record already in the map."""

    snapshot: JSON | None
    has_pending: bool
    state: str
    pending_at: datetime | None  # of this side's observation waiting to be merged
    seen_at: datetime | None  # stamp of this side's version last merged


@dataclass(frozen=True, slots=True)
class Observation:
    record_id: str
    match_key: str | None
    body: JSON
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Settled:
    """A pair whose merge landed: both ids, each side's new snapshot and change stamp."""

    pair_id: int
    ecosire_id: str
    crm_id: str
    match_key: str | None
    ecosire_snapshot: JSON
    crm_snapshot: JSON
    ecosire_seen_at: datetime | None
    crm_seen_at: datetime | None
    # The observations this merge consumed: a newer one staged meanwhile must survive.
    ecosire_pending_at: datetime | None
    crm_pending_at: datetime | None


@dataclass(frozen=True, slots=True)
class Link:
    pair_id: int
    side: Side
    record_id: str
    body: JSON
    updated_at: datetime | None
    # The values the record was created with, where known: the base both sides start from, so
    # that edits made to either since the create are told apart from what the create wrote.
    base: JSON | None = None


PAIR_COLUMNS = ", ".join(Pair.__slots__)


def column(side: Side, name: str) -> str:
    # Only ever one of two fixed identifiers: never user input.
    return f"{side.value}_{name}"


class PairStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def known(self, entity: str, side: Side, ids: Sequence[str]) -> dict[str, Known]:
        rows = await self.pool.fetch(
            f"SELECT {column(side, 'id')} AS rid, {column(side, 'snapshot')} AS snap,"
            f" ecosire_pending IS NOT NULL OR crm_pending IS NOT NULL AS pending, state,"
            f" {column(side, 'pending_at')} AS pending_at, {column(side, 'seen_at')} AS seen_at"
            f" FROM record_map WHERE entity = $1 AND {column(side, 'id')} = ANY($2::text[])",
            entity,
            list(ids),
        )
        return {
            r["rid"]: Known(r["snap"], r["pending"], r["state"], r["pending_at"], r["seen_at"]) for r in rows
        }

    async def counterparts(self, entity: str, side: Side, ids: Sequence[str]) -> dict[str, str]:
        """For ids of `side`, the linked id on the other side (reference translation)."""
        if not ids:
            return {}
        rows = await self.pool.fetch(
            f"SELECT {column(side, 'id')} AS rid, {column(side.other, 'id')} AS oid FROM record_map"
            f" WHERE entity = $1 AND {column(side, 'id')} = ANY($2::text[])"
            f" AND {column(side.other, 'id')} IS NOT NULL",
            entity,
            list(ids),
        )
        return {r["rid"]: r["oid"] for r in rows}

    def stage_statement(
        self, entity: str, side: Side, batch: Sequence[Observation], *, reread: bool = False
    ) -> Statement | None:
        """Record observations; an older one never replaces a newer one; staging unparks.
        `reread` (a backfill, a resync) takes versions not newer than the one merged, too."""
        if not batch:
            return None
        rid, pend, pend_at = column(side, "id"), column(side, "pending"), column(side, "pending_at")
        seen = column(side, "seen_at")
        return Statement(
            f"""
            INSERT INTO record_map (entity, {rid}, match_key, {pend}, {pend_at})
            SELECT $1, u.rid, u.mkey, u.body, u.at
            FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::timestamptz[]) AS u(rid, mkey, body, at)
            ON CONFLICT (entity, {rid}) WHERE {rid} IS NOT NULL DO UPDATE SET
                {pend} = EXCLUDED.{pend},
                {pend_at} = EXCLUDED.{pend_at},
                match_key = EXCLUDED.match_key,
                state = CASE WHEN record_map.state = 'parked'
                                  AND record_map.{pend_at} IS DISTINCT FROM EXCLUDED.{pend_at}
                             THEN 'ok' ELSE record_map.state END,
                updated_at = now()
            WHERE record_map.state <> 'deleted'
              AND (record_map.{pend_at} IS NULL OR record_map.{pend_at} <= EXCLUDED.{pend_at})
              -- not older than the version already merged (a replayed or re-read payload)
              AND ($6::boolean OR record_map.{seen} IS NULL OR record_map.{seen} < EXCLUDED.{pend_at})
            """,
            (
                entity,
                [o.record_id for o in batch],
                [o.match_key for o in batch],
                [o.body for o in batch],
                [o.updated_at for o in batch],
                reread,
            ),
        )

    async def claim(
        self,
        entity: str,
        run_id: int,
        limit: int,
        only: Sequence[int] | None = None,
        *,
        after: int | None = None,
        target: Side | None = None,
    ) -> list[Pair]:
        """Rows with observations to merge, marked as this run's before any remote write, in id
        order. Given a `target`, only the rows whose first write goes to that side's API (a
        create there, or a change from the other side to carry over); the two targets partition
        the rows, so one claimer per target keeps both APIs busy.
        Given the last id of the previous batch as `after`, the claim walks the index from there
        instead of stepping again over the rows this run claimed and has not settled yet.
        Rows before it are this run's already but for two kinds, which then wait for the next
        pass: one skipped because another transaction had it locked, and one settled while a
        newer observation was staged (a pass stages before it claims, so only another process
        staging meanwhile could do that, and the entity lock keeps other daemons out).

        `attempts` counts claims that have not finished: above one, an earlier attempt may
        have written remotely and then died, so the worker looks before it creates."""
        rows = await self.pool.fetch(
            f"""
            UPDATE record_map m SET claim_run = $2, attempts = m.attempts + 1,
                claimed_at = coalesce(m.claimed_at, now())
            WHERE m.id IN (
                -- Exactly the predicate of the index record_map_claimable, which yields rows in
                -- id order whatever the statistics say (just after a bulk staging, they say the
                -- table is small and a sort of every pending row looks cheap).
                SELECT id FROM record_map
                WHERE entity = $1 AND state = 'ok'
                  AND (ecosire_pending IS NOT NULL OR crm_pending IS NOT NULL)
                  AND id > $5
                  AND claim_run IS DISTINCT FROM $2
                  AND ($4::bigint[] IS NULL OR id = ANY($4::bigint[]))
                  AND ($6::text IS NULL OR ($6::text = 'ecosire') =
                       (ecosire_id IS NULL OR (crm_id IS NOT NULL AND crm_pending IS NOT NULL)))
                ORDER BY id LIMIT $3
                FOR UPDATE SKIP LOCKED)
            RETURNING {PAIR_COLUMNS}
            """,
            entity,
            run_id,
            limit,
            list(only) if only is not None else None,
            after or 0,  # ids start at 1
            str(target) if target is not None else None,
        )
        return sorted((Pair.from_row(r) for r in rows), key=lambda p: p.id)

    def settle_statements(self, entity: str, settled: Sequence[Settled]) -> list[Statement]:
        """Merges that landed: the pairs' new state, and their error rows resolved."""
        if not settled:
            return []
        columns: list[list[Any]] = [[] for _ in range(10)]
        for s in settled:
            for i, value in enumerate(
                (
                    s.pair_id,
                    s.ecosire_id,
                    s.crm_id,
                    s.match_key,
                    s.ecosire_snapshot,
                    s.crm_snapshot,
                    s.ecosire_seen_at,
                    s.crm_seen_at,
                    s.ecosire_pending_at,
                    s.crm_pending_at,
                )
            ):
                columns[i].append(value)
        pairs = Statement(
            """
            UPDATE record_map m SET
                ecosire_id = u.eid, crm_id = u.cid, match_key = coalesce(u.mkey, m.match_key),
                ecosire_snapshot = u.esnap, crm_snapshot = u.csnap,
                ecosire_seen_at = coalesce(u.eseen, m.ecosire_seen_at),
                crm_seen_at = coalesce(u.cseen, m.crm_seen_at),
                ecosire_pending = CASE WHEN m.ecosire_pending_at IS NOT DISTINCT FROM u.epat
                                       THEN NULL ELSE m.ecosire_pending END,
                ecosire_pending_at = CASE WHEN m.ecosire_pending_at IS NOT DISTINCT FROM u.epat
                                          THEN NULL ELSE m.ecosire_pending_at END,
                crm_pending = CASE WHEN m.crm_pending_at IS NOT DISTINCT FROM u.cpat
                                   THEN NULL ELSE m.crm_pending END,
                crm_pending_at = CASE WHEN m.crm_pending_at IS NOT DISTINCT FROM u.cpat
                                      THEN NULL ELSE m.crm_pending_at END,
                state = 'ok', claim_run = NULL, attempts = 0, claimed_at = NULL, intent = NULL,
                synced_at = now(),
                updated_at = now()
            FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
                        $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
                 AS u(id, eid, cid, mkey, esnap, csnap, eseen, cseen, epat, cpat)
            WHERE m.id = u.id
            """,
            tuple(columns),
        )
        # Errors of these pairs are resolved, including rows parked before the record reached
        # the map (unreadable then, fixed since), found by their record id. Whether such a row
        # exists is not known here, and asking would cost as much as resolving: run together
        # with the update above, it costs no round trip (indexes sync_error_open, _map_id).
        errors = Statement(
            """
            UPDATE sync_error SET status = 'resolved', resolved_at = now(), updated_at = now()
            WHERE status <> 'resolved'
              AND (map_id = ANY($1::bigint[])
                   OR (map_id IS NULL AND entity = $2
                       AND ((side = 'ecosire' AND record_id = ANY($3::text[]))
                            OR (side = 'crm' AND record_id = ANY($4::text[])))))
            """,
            (
                [s.pair_id for s in settled],
                entity,
                [s.ecosire_id for s in settled],
                [s.crm_id for s in settled],
            ),
        )
        return [pairs, errors]

    async def database_time(self) -> datetime:
        """now() on the database's clock: a sweep's start, compared with rows it writes."""
        moment: datetime = await self.pool.fetchval("SELECT now()")
        return moment

    async def by_ids(self, ids: Sequence[int]) -> list[Pair]:
        rows = await self.pool.fetch(
            f"SELECT {PAIR_COLUMNS} FROM record_map WHERE id = ANY($1::bigint[]) ORDER BY id", list(ids)
        )
        return [Pair.from_row(r) for r in rows]

    async def by_record_ids(self, entity: str, side: Side, record_ids: Sequence[str]) -> list[Pair]:
        """The pairs, not deleted, that hold these `side` ids."""
        rows = await self.pool.fetch(
            f"SELECT {PAIR_COLUMNS} FROM record_map WHERE entity = $1 AND state <> 'deleted'"
            f" AND {column(side, 'id')} = ANY($2::text[]) ORDER BY id",
            entity,
            list(record_ids),
        )
        return [Pair.from_row(r) for r in rows]

    async def set_intents(self, intents: Sequence[tuple[int, JSON]]) -> None:
        """Record, before any remote call, what each claimed pair is about to write."""
        if intents:
            await self.pool.execute(
                "UPDATE record_map m SET intent = u.intent"
                " FROM unnest($1::bigint[], $2::jsonb[]) AS u(id, intent) WHERE m.id = u.id",
                [pair_id for pair_id, _ in intents],
                [intent for _, intent in intents],
            )

    async def linked_ids(self, entity: str, side: Side, ids: Sequence[str]) -> set[str]:
        """Which of these `side` ids belong to a pair linked on both sides."""
        rows = await self.pool.fetch(
            f"SELECT {column(side, 'id')} AS rid FROM record_map WHERE entity = $1"
            f" AND {column(side, 'id')} = ANY($2::text[]) AND {column(side.other, 'id')} IS NOT NULL",
            entity,
            list(ids),
        )
        return {r["rid"] for r in rows}

    async def owner(self, entity: str, side: Side, record_id: str) -> int | None:
        owner: int | None = await self.pool.fetchval(
            f"SELECT id FROM record_map WHERE entity = $1 AND {column(side, 'id')} = $2",
            entity,
            record_id,
        )
        return owner

    async def release(
        self, conn: Executor, pair_ids: Sequence[int], state: PairState, *, untouched: bool = False
    ) -> None:
        """Give back claimed rows that were not settled: parked, or (untouched) never attempted,
        in which case the claim is undone so that it raises no doubt next time."""
        await execute(conn, [self.release_statement(pair_ids, state, untouched=untouched)])

    def release_statement(
        self, pair_ids: Sequence[int], state: PairState, *, untouched: bool = False
    ) -> Statement | None:
        """`release` as a statement to run with others; None when there is nothing to release."""
        if not pair_ids:
            return None
        return Statement(
            "UPDATE record_map SET state = $2, claim_run = NULL, updated_at = now(),"
            " attempts = CASE WHEN $3 THEN greatest(attempts - 1, 0) ELSE attempts END,"
            " claimed_at = CASE WHEN $3 AND attempts <= 1 THEN NULL ELSE claimed_at END,"
            " intent = CASE WHEN $3 AND attempts <= 1 THEN NULL ELSE intent END"
            " WHERE id = ANY($1::bigint[])",
            (list(pair_ids), state, untouched),
        )

    def mark_deleted_statement(self, deleted: Sequence[tuple[int, Side]]) -> Statement | None:
        """A pair whose record is gone on one side: kept, never written again, never re-created."""
        if not deleted:
            return None
        return Statement(
            "UPDATE record_map m SET state = 'deleted', deleted_side = u.side, deleted_at = now(),"
            " claim_run = NULL, claimed_at = NULL, attempts = 0, intent = NULL, ecosire_pending = NULL,"
            " ecosire_pending_at = NULL, crm_pending = NULL, crm_pending_at = NULL, updated_at = now()"
            " FROM unnest($1::bigint[], $2::text[]) AS u(id, side) WHERE m.id = u.id",
            ([pair_id for pair_id, _ in deleted], [side.value for _, side in deleted]),
        )

    async def linked_count(self, entity: str) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM record_map WHERE entity = $1 AND state <> 'deleted'"
            " AND ecosire_id IS NOT NULL AND crm_id IS NOT NULL",
            entity,
        )
        return count

    async def unpark(self, pair_ids: Sequence[int]) -> None:
        await self.pool.execute(
            "UPDATE record_map SET state = 'ok' WHERE id = ANY($1::bigint[]) AND state = 'parked'",
            list(pair_ids),
        )

    async def counts(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """
            SELECT entity,
                   count(*) FILTER (WHERE ecosire_id IS NOT NULL AND crm_id IS NOT NULL
                                    AND state <> 'deleted') AS linked,
                   count(*) FILTER (WHERE (ecosire_id IS NULL OR crm_id IS NULL)
                                    AND state <> 'deleted') AS unlinked,
                   count(*) FILTER (WHERE ecosire_pending IS NOT NULL OR crm_pending IS NOT NULL)
                       AS pending,
                   count(*) FILTER (WHERE state = 'parked') AS parked,
                   count(*) FILTER (WHERE state = 'deleted') AS deleted
            FROM record_map GROUP BY entity ORDER BY entity
            """
        )
