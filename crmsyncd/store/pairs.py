"""The record map: linked pairs, their snapshots, and observations waiting to be merged.

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


_PAIR_COLUMNS = ", ".join(Pair.__slots__)


def _col(side: Side, name: str) -> str:
    # Only ever one of two fixed identifiers: never user input.
    return f"{side.value}_{name}"


class PairStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def known(self, entity: str, side: Side, ids: Sequence[str]) -> dict[str, Known]:
        rows = await self.pool.fetch(
            f"SELECT {_col(side, 'id')} AS rid, {_col(side, 'snapshot')} AS snap,"
            f" ecosire_pending IS NOT NULL OR crm_pending IS NOT NULL AS pending, state,"
            f" {_col(side, 'pending_at')} AS pending_at, {_col(side, 'seen_at')} AS seen_at"
            f" FROM record_map WHERE entity = $1 AND {_col(side, 'id')} = ANY($2::text[])",
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
            f"SELECT {_col(side, 'id')} AS rid, {_col(side.other, 'id')} AS oid FROM record_map"
            f" WHERE entity = $1 AND {_col(side, 'id')} = ANY($2::text[])"
            f" AND {_col(side.other, 'id')} IS NOT NULL",
            entity,
            list(ids),
        )
        return {r["rid"]: r["oid"] for r in rows}

    def stage_statement(self, entity: str, side: Side, batch: Sequence[Observation]) -> Statement | None:
        """Record observations; an older one never replaces a newer one; staging unparks."""
        if not batch:
            return None
        rid, pend, pend_at = _col(side, "id"), _col(side, "pending"), _col(side, "pending_at")
        seen = _col(side, "seen_at")
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
              AND (record_map.{seen} IS NULL OR record_map.{seen} < EXCLUDED.{pend_at})
            """,
            (
                entity,
                [o.record_id for o in batch],
                [o.match_key for o in batch],
                [o.body for o in batch],
                [o.updated_at for o in batch],
            ),
        )

    async def link_groups(self, entity: str) -> list[tuple[str, list[int], list[int]]]:
        """Match keys held by unlinked records: (key, ECOSIRE-only rows, CRM-only rows).

        Only keys with an unlinked record on both sides, or more than one on a side, and with
        at least one row waiting to be merged (so that a quiet pass costs nothing here)."""
        rows = await self.pool.fetch(
            """
            SELECT match_key,
                   coalesce(array_agg(id ORDER BY id) FILTER (WHERE crm_id IS NULL), '{}') AS e_rows,
                   coalesce(array_agg(id ORDER BY id) FILTER (WHERE ecosire_id IS NULL), '{}') AS c_rows
            FROM record_map
            WHERE entity = $1 AND match_key IS NOT NULL AND state = 'ok'
              AND (ecosire_id IS NULL OR crm_id IS NULL)
            GROUP BY match_key
            HAVING bool_or(ecosire_pending IS NOT NULL OR crm_pending IS NOT NULL)
               AND (count(*) FILTER (WHERE crm_id IS NULL) > 1
                    OR count(*) FILTER (WHERE ecosire_id IS NULL) > 1
                    OR (count(*) FILTER (WHERE crm_id IS NULL) = 1
                        AND count(*) FILTER (WHERE ecosire_id IS NULL) = 1))
            """,
            entity,
        )
        return [(r["match_key"], list(r["e_rows"]), list(r["c_rows"])) for r in rows]

    async def link(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Fold each CRM-only row into its ECOSIRE-only partner: one pair, no base yet."""
        if not pairs:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            # Open errors of the folded row follow it, so that settling the pair resolves them.
            await conn.execute(
                "UPDATE sync_error e SET map_id = p.e_row"
                " FROM unnest($1::bigint[], $2::bigint[]) AS p(e_row, c_row) WHERE e.map_id = p.c_row",
                [e for e, _ in pairs],
                [c for _, c in pairs],
            )
            moved = await conn.fetch(
                """
                DELETE FROM record_map m USING unnest($1::bigint[], $2::bigint[]) AS p(e_row, c_row)
                WHERE m.id = p.c_row
                RETURNING p.e_row, m.crm_id, m.crm_snapshot, m.crm_seen_at, m.crm_pending,
                          m.crm_pending_at
                """,
                [e for e, _ in pairs],
                [c for _, c in pairs],
            )
            await conn.execute(
                """
                UPDATE record_map m SET crm_id = u.crm_id, crm_snapshot = u.snap,
                    crm_seen_at = u.seen, updated_at = now(),
                    crm_pending = u.pend, crm_pending_at = u.pend_at
                FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::jsonb[],
                            $6::timestamptz[]) AS u(e_row, crm_id, snap, seen, pend, pend_at)
                WHERE m.id = u.e_row
                """,
                [r["e_row"] for r in moved],
                [r["crm_id"] for r in moved],
                [r["crm_snapshot"] for r in moved],
                [r["crm_seen_at"] for r in moved],
                [r["crm_pending"] for r in moved],
                [r["crm_pending_at"] for r in moved],
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
        the rows, so one claimer per target keeps both APIs busy. Given the last id of the previous batch as `after`, the claim walks the index from
        there instead of stepping again over the rows this run claimed and has not settled yet.
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
            RETURNING {_PAIR_COLUMNS}
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

    async def attach(self, conn: Executor, links: Sequence[Link]) -> None:
        """Record counterparts created by a merge that failed afterwards: the pair is linked, and
        the created record is its observation on that side, so the retry has both sides' values."""
        await execute(conn, self.attach_statements(links))

    def attach_statements(self, links: Sequence[Link]) -> list[Statement]:
        """`attach` as statements to run with others: one per side that has links."""
        statements = []
        for side in Side:
            mine = [link for link in links if link.side is side]
            if mine:
                statements.append(
                    Statement(
                        f"UPDATE record_map m SET {_col(side, 'id')} = u.rid,"
                        f" {_col(side, 'pending')} = u.body, {_col(side, 'pending_at')} = u.at,"
                        " ecosire_snapshot = coalesce(m.ecosire_snapshot, u.base),"
                        " crm_snapshot = coalesce(m.crm_snapshot, u.base)"
                        " FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::jsonb[])"
                        " AS u(id, rid, body, at, base) WHERE m.id = u.id",
                        (
                            [link.pair_id for link in mine],
                            [link.record_id for link in mine],
                            [link.body for link in mine],
                            [link.updated_at for link in mine],
                            [link.base for link in mine],
                        ),
                    )
                )
        return statements

    async def database_time(self) -> datetime:
        """now() on the database's clock: a sweep's start, compared with rows it writes."""
        moment: datetime = await self.pool.fetchval("SELECT now()")
        return moment

    async def by_ids(self, ids: Sequence[int]) -> list[Pair]:
        rows = await self.pool.fetch(
            f"SELECT {_PAIR_COLUMNS} FROM record_map WHERE id = ANY($1::bigint[]) ORDER BY id", list(ids)
        )
        return [Pair.from_row(r) for r in rows]

    async def in_doubt(self, entity: str) -> list[Pair]:
        """Unlinked rows an unfinished claim may have created remotely (a crash, a lost answer)."""
        rows = await self.pool.fetch(
            f"SELECT {_PAIR_COLUMNS} FROM record_map WHERE entity = $1 AND attempts > 0"
            " AND claimed_at IS NOT NULL AND state <> 'deleted' AND (ecosire_id IS NULL OR crm_id IS NULL)"
            " ORDER BY id",
            entity,
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
            f"SELECT {_col(side, 'id')} AS rid FROM record_map WHERE entity = $1"
            f" AND {_col(side, 'id')} = ANY($2::text[]) AND {_col(side.other, 'id')} IS NOT NULL",
            entity,
            list(ids),
        )
        return {r["rid"] for r in rows}

    async def clear_doubt(self, pair_ids: Sequence[int]) -> None:
        """Doubts a complete scan of the target proved groundless: their next create is safe."""
        if pair_ids:
            await self.pool.execute(
                "UPDATE record_map SET attempts = 0, claimed_at = NULL, intent = NULL"
                " WHERE id = ANY($1::bigint[])"
                " AND (ecosire_id IS NULL OR crm_id IS NULL)",
                list(pair_ids),
            )

    async def adopt(self, links: Sequence[Link]) -> list[Link]:
        """Attach found counterparts. A row that holds such a record unlinked (its own delta
        showed it before we knew it was ours) is folded in; one linked elsewhere is left alone
        and its link is returned as refused."""
        refused: list[Link] = []
        async with self.pool.acquire() as conn, conn.transaction():
            for link in links:
                rid, other = _col(link.side, "id"), _col(link.side.other, "id")
                holder = await conn.fetchrow(
                    f"SELECT id, {other} AS other FROM record_map WHERE entity ="
                    f" (SELECT entity FROM record_map WHERE id = $1) AND {rid} = $2",
                    link.pair_id,
                    link.record_id,
                )
                if holder is not None and holder["id"] != link.pair_id:
                    if holder["other"] is not None:
                        refused.append(link)
                        continue
                    await conn.execute(
                        "UPDATE sync_error SET map_id = $1 WHERE map_id = $2", link.pair_id, holder["id"]
                    )
                    await conn.execute("DELETE FROM record_map WHERE id = $1", holder["id"])
                await self.attach(conn, [link])
                # Linked now, the pair can be merged in this pass, which resolves its error row.
                await conn.execute(
                    "UPDATE record_map SET state = 'ok' WHERE id = $1 AND state = 'parked'", link.pair_id
                )
        return refused

    async def owner(self, entity: str, side: Side, record_id: str) -> int | None:
        owner: int | None = await self.pool.fetchval(
            f"SELECT id FROM record_map WHERE entity = $1 AND {_col(side, 'id')} = $2",
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

    async def note_seen(self, sweep: int, ids: Sequence[str]) -> None:
        await self.pool.execute(
            "INSERT INTO reconcile_seen (sweep, record_id) SELECT $1, unnest($2::text[])"
            " ON CONFLICT DO NOTHING",
            sweep,
            list(ids),
        )

    async def missing(self, entity: str, side: Side, sweep: int, before: datetime) -> tuple[list[Pair], int]:
        """Linked pairs settled before the sweep began whose `side` id the full listing did not
        show, and how many such pairs there are in all (the circuit breaker's base)."""
        rid = _col(side, "id")
        rows = await self.pool.fetch(
            f"""
            SELECT {_PAIR_COLUMNS} FROM record_map m
            WHERE entity = $1 AND state <> 'deleted' AND {rid} IS NOT NULL AND synced_at < $3
              AND NOT EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.sweep = $2 AND s.record_id = m.{rid})
            ORDER BY id
            """,
            entity,
            sweep,
            before,
        )
        total: int = await self.pool.fetchval(
            f"SELECT count(*) FROM record_map WHERE entity = $1 AND state <> 'deleted'"
            f" AND {rid} IS NOT NULL AND synced_at < $2",
            entity,
            before,
        )
        return [Pair.from_row(r) for r in rows], total

    async def forget_sweep(self, sweep: int) -> None:
        await self.pool.execute("DELETE FROM reconcile_seen WHERE sweep = $1", sweep)

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
