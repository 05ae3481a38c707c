"""The retry queue: failed records with their reason and payload, backoff, dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from crmsyncd.domain.records import JSON, Side
from crmsyncd.store.db import Executor, Pool, Statement, execute


class ErrorClass(StrEnum):
    """Why a record is in the retry queue (its `error_class` column)."""

    BAD_RECORD = "bad_record"  # a field the engine cannot read or the other side cannot hold
    REJECTED = "rejected"  # the API refused the payload (400/422)
    CONFLICT = "conflict"  # a unique value is held by a record linked elsewhere
    NOT_FOUND = "not_found"  # the record is gone on the side written
    TRANSIENT = "transient"  # 5xx, timeout, reset: retried with backoff
    RATE_LIMITED = "rate_limited"  # still 429 after the connector's own waiting
    AMBIGUOUS = "ambiguous"  # a match key held by several records on a side
    UNRESOLVED_REFERENCE = "unresolved_reference"  # a deal's contact is not linked yet
    DELETED = "deleted"  # deleted on one side, the survivor flagged (delete policy)


@dataclass(frozen=True, slots=True)
class Failure:
    entity: str
    side: Side
    record_id: str
    map_id: int | None
    payload: JSON
    reason: str
    error_class: ErrorClass
    # Permanent verdicts that no retry can change (a deleted record, flagged): dead at once.
    final: bool = False
    # Seconds before which a retry cannot help: the next attempt is not due sooner.
    not_before: float = 0.0


@dataclass(frozen=True, slots=True)
class Backoff:
    base_seconds: float = 60.0
    cap_seconds: float = 6 * 3600.0
    max_attempts: int = 5


@dataclass(frozen=True, slots=True)
class ErrorRow:
    id: int
    entity: str
    side: Side
    record_id: str
    map_id: int | None
    payload: JSON
    reason: str
    error_class: str
    attempts: int
    status: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ErrorRow:
        return cls(
            id=row["id"],
            entity=row["entity"],
            side=Side(row["side"]),
            record_id=row["record_id"],
            map_id=row["map_id"],
            payload=row["payload"],
            reason=row["reason"],
            error_class=row["error_class"],
            attempts=row["attempts"],
            status=row["status"],
        )


_COLUMNS = "id, entity, side, record_id, map_id, payload, reason, error_class, attempts, status"


class ErrorStore:
    def __init__(self, pool: Pool, backoff: Backoff) -> None:
        self.pool = pool
        self.backoff = backoff

    async def park(self, conn: Executor, failures: Sequence[Failure]) -> None:
        """One open row per record: a repeat failure counts an attempt and pushes the next one
        out exponentially, with full jitter so that parked records do not retry in lockstep."""
        await execute(conn, [self.park_statement(failures)])

    def park_statement(self, failures: Sequence[Failure]) -> Statement | None:
        """`park` as a statement to run with others; None when there is nothing to park."""
        if not failures:
            return None
        return Statement(
            """
            INSERT INTO sync_error AS e (entity, side, record_id, map_id, payload, reason,
                                         error_class, status, next_attempt_at)
            SELECT u.entity, u.side, u.rid, u.map_id, u.payload, u.reason, u.cls,
                   CASE WHEN u.final OR $9 <= 1 THEN 'dead' ELSE 'pending' END,
                   now() + make_interval(secs => greatest(u.not_before, least($11, $10 * random())))
            FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::jsonb[], $6::text[],
                        $7::text[], $8::bool[], $12::float8[])
                 AS u(entity, side, rid, map_id, payload, reason, cls, final, not_before)
            ON CONFLICT (entity, side, record_id) WHERE status <> 'resolved' DO UPDATE SET
                -- A dead row's record may fail again (an edit re-read by a sync pass merges it
                -- once more): it stays dead, and its count never passes the limit.
                attempts = least(e.attempts + 1, greatest($9, e.attempts)),
                map_id = coalesce(EXCLUDED.map_id, e.map_id),
                payload = EXCLUDED.payload,
                reason = EXCLUDED.reason,
                error_class = EXCLUDED.error_class,
                status = CASE WHEN EXCLUDED.status = 'dead' OR e.attempts + 1 >= $9
                              THEN 'dead' ELSE 'pending' END,
                next_attempt_at = now() + make_interval(secs => greatest(
                    -- this record's own input (EXCLUDED holds no column for it)
                    (SELECT v.nb FROM unnest($1::text[], $2::text[], $3::text[], $12::float8[])
                         AS v(entity, side, rid, nb)
                     WHERE v.entity = e.entity AND v.side = e.side AND v.rid = e.record_id LIMIT 1),
                    least($11, $10 * power(2, e.attempts)) * random())),
                updated_at = now()
            """,
            (
                [f.entity for f in failures],
                [f.side.value for f in failures],
                [f.record_id for f in failures],
                [f.map_id for f in failures],
                [f.payload for f in failures],
                [f.reason for f in failures],
                [f.error_class for f in failures],
                [f.final for f in failures],
                self.backoff.max_attempts,
                self.backoff.base_seconds,
                self.backoff.cap_seconds,
                [f.not_before for f in failures],
            ),
        )

    async def claim_due(self, limit: int, *, include_not_due: bool = False) -> list[ErrorRow]:
        """Pending rows whose time has come, leased for a while so that a second daemon's retry
        job skips them (SKIP LOCKED) and a crashed one's lease simply runs out."""
        rows = await self.pool.fetch(
            f"""
            UPDATE sync_error SET next_attempt_at = now() + interval '10 minutes'
            WHERE id IN (
                SELECT id FROM sync_error
                WHERE status = 'pending' AND ($2 OR next_attempt_at <= now())
                ORDER BY next_attempt_at, id LIMIT $1
                FOR UPDATE SKIP LOCKED)
            RETURNING {_COLUMNS}
            """,
            limit,
            include_not_due,
        )
        return [ErrorRow.from_row(r) for r in sorted(rows, key=lambda r: r["id"])]

    async def dead_payloads(self, entity: str, side: Side, record_ids: Sequence[str]) -> dict[str, JSON]:
        """Payloads of records already parked dead as unreadable, by record id."""
        rows = await self.pool.fetch(
            "SELECT record_id, payload FROM sync_error WHERE entity = $1 AND side = $2"
            " AND record_id = ANY($3::text[]) AND map_id IS NULL AND status = 'dead'"
            " AND error_class = 'bad_record'",
            entity,
            side.value,
            list(record_ids),
        )
        return {row["record_id"]: row["payload"] for row in rows}

    async def resolve(self, conn: Executor, ids: Sequence[int]) -> None:
        if ids:
            await conn.execute(
                "UPDATE sync_error SET status = 'resolved', resolved_at = now(), updated_at = now()"
                " WHERE id = ANY($1::bigint[]) AND status <> 'resolved'",
                list(ids),
            )

    def resolve_gone_statement(self, notes: Sequence[tuple[int, str]]) -> Statement | None:
        """Rows whose record was deleted at its source while parked: resolved, nothing retried,
        the note saying so put before the reason they were parked for."""
        if not notes:
            return None
        return Statement(
            """
            UPDATE sync_error e SET status = 'resolved', resolved_at = now(), updated_at = now(),
                   reason = u.note || '; it was parked for: ' || e.reason
            FROM unnest($1::bigint[], $2::text[]) AS u(id, note)
            WHERE e.id = u.id AND e.status <> 'resolved'
            """,
            ([row_id for row_id, _ in notes], [note for _, note in notes]),
        )

    async def wake_dependents(self, entity: str, refs: Sequence[tuple[Side, str, str]]) -> int:
        """Rows of `entity` parked because a reference could not be resolved (a deal whose
        contact was not linked), whose references all resolve now and at least one of whose
        referenced records was linked or changed since the row was last parked: due now, with a
        fresh attempt budget, since the reason they failed is gone. `refs` holds, per side, the
        field holding a reference there (in that side's own record) and the entity it names.
        A row retried and parked again is not woken again until a referenced record changes
        once more. Returns how many rows were woken."""
        if not refs:
            return 0
        woken: int = await self.pool.fetchval(
            """
            WITH parked AS (
                SELECT e.id, e.side, e.updated_at,
                       coalesce(CASE e.side WHEN 'ecosire' THEN m.ecosire_pending
                                            ELSE m.crm_pending END, e.payload) AS body
                FROM sync_error e LEFT JOIN record_map m ON m.id = e.map_id
                WHERE e.entity = $1 AND e.error_class = 'unresolved_reference'
                  AND e.status IN ('pending', 'dead')
            ), wanted AS (
                SELECT p.id, p.updated_at, r.side, r.ref_entity, p.body ->> r.field AS rid
                FROM parked p
                JOIN unnest($2::text[], $3::text[], $4::text[]) AS r(side, field, ref_entity)
                  ON r.side = p.side
                WHERE coalesce(p.body ->> r.field, '') <> ''
            ), ready AS (
                -- The same test as reference translation (PairStore.counterparts): the
                -- referenced record has a counterpart on the other side.
                SELECT w.id FROM wanted w
                LEFT JOIN LATERAL (
                    SELECT d.updated_at FROM record_map d
                    WHERE w.side = 'ecosire' AND d.entity = w.ref_entity AND d.ecosire_id = w.rid
                      AND d.crm_id IS NOT NULL
                    UNION ALL
                    SELECT d.updated_at FROM record_map d
                    WHERE w.side = 'crm' AND d.entity = w.ref_entity AND d.crm_id = w.rid
                      AND d.ecosire_id IS NOT NULL
                ) d ON true
                GROUP BY w.id
                HAVING bool_and(d.updated_at IS NOT NULL) AND bool_or(d.updated_at > w.updated_at)
            ), woken AS (
                UPDATE sync_error e SET status = 'pending', attempts = 0, next_attempt_at = now(),
                       updated_at = now()
                FROM ready WHERE e.id = ready.id
                RETURNING e.id)
            SELECT count(*) FROM woken
            """,
            entity,
            [side.value for side, _, _ in refs],
            [field for _, field, _ in refs],
            [ref_entity for _, _, ref_entity in refs],
        )
        return woken

    async def resolve_settled(self, ids: Sequence[int]) -> int:
        """Of these rows, resolve those whose pair is now settled (by a merge just now or a pass
        meanwhile); returns how many of them are resolved. Rows whose pair was deleted meanwhile
        are closed: a delete flag (a replayed one) is dead again, the record of the deletion;
        any other row is resolved, saying so, since a deleted pair is never written again."""
        done: int = await self.pool.fetchval(
            """
            WITH settled AS (
                UPDATE sync_error e SET status = 'resolved', resolved_at = now(), updated_at = now()
                FROM record_map m
                WHERE e.id = ANY($1::bigint[]) AND e.status <> 'resolved' AND e.map_id = m.id
                  AND m.state = 'ok' AND m.ecosire_pending IS NULL AND m.crm_pending IS NULL
                RETURNING e.id
            ), closed AS (
                UPDATE sync_error e SET updated_at = now(),
                    status = CASE WHEN e.error_class = 'deleted' THEN 'dead' ELSE 'resolved' END,
                    resolved_at = CASE WHEN e.error_class = 'deleted' THEN NULL ELSE now() END,
                    reason = CASE WHEN e.error_class = 'deleted' THEN e.reason
                                  ELSE 'its record was deleted on ' || coalesce(m.deleted_side, '?')
                                       || ' meanwhile: nothing to retry; it was parked for: '
                                       || e.reason END
                FROM record_map m
                WHERE e.id = ANY($1::bigint[]) AND e.status = 'pending' AND e.map_id = m.id
                  AND m.state = 'deleted'
                RETURNING e.id)
            SELECT (SELECT count(*) FROM settled)
                 + (SELECT count(*) FROM sync_error WHERE id = ANY($1::bigint[]) AND status = 'resolved')
            """,
            list(ids),
        )
        return done

    async def replay(self, ids: Sequence[int] | None) -> int:
        """Make dead (or pending) rows due now with a fresh attempt budget."""
        result: str = await self.pool.execute(
            """
            UPDATE sync_error SET status = 'pending', attempts = 0, next_attempt_at = now(),
                   updated_at = now()
            WHERE status <> 'resolved' AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
            """,
            list(ids) if ids is not None else None,
        )
        return int(result.split()[-1])

    async def latest(self, status: str, limit: int = 50) -> list[asyncpg.Record]:
        """Rows of one status, the latest changed first (the status page)."""
        return await self.pool.fetch(
            f"SELECT {_COLUMNS}, next_attempt_at, created_at, updated_at FROM sync_error"
            " WHERE status = $1 ORDER BY updated_at DESC, id DESC LIMIT $2",
            status,
            limit,
        )

    async def open_counts(self) -> list[asyncpg.Record]:
        """Open rows (pending, dead) by entity, side, status and error class (metrics)."""
        return await self.pool.fetch(
            "SELECT entity, side, status, error_class, count(*) AS n FROM sync_error"
            " WHERE status <> 'resolved' GROUP BY entity, side, status, error_class"
        )

    async def list(self, *, dead_only: bool = False, limit: int = 1000) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"""
            SELECT {_COLUMNS}, next_attempt_at, created_at, updated_at FROM sync_error
            WHERE status <> 'resolved' AND (NOT $1 OR status = 'dead')
            ORDER BY id LIMIT $2
            """,
            dead_only,
            limit,
        )

    async def counts(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT status, count(*) AS n FROM sync_error GROUP BY status")
        counts = {"pending": 0, "dead": 0, "resolved": 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def prune(self, days: int) -> int:
        """Delete rows resolved more than `days` days ago: history, not the queue (pending and
        dead rows stay however old). One statement on the resolved rows' index (migration 008)."""
        result: str = await self.pool.execute(
            "DELETE FROM sync_error WHERE status = 'resolved'"
            " AND resolved_at < now() - make_interval(days => $1)",
            days,
        )
        return int(result.split()[-1])
