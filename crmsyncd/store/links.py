"""Two records becoming one pair: the first sync's links by match key, counterparts a create
made (or a doubt found) attached, and the doubts an unfinished create leaves."""

from __future__ import annotations

from collections.abc import Sequence

from crmsyncd.domain.records import Side
from crmsyncd.store.db import Executor, Pool, Statement, execute
from crmsyncd.store.pairs import PAIR_COLUMNS, Link, Pair, column


class LinkStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

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

    async def attach(self, conn: Executor, links: Sequence[Link]) -> None:
        """Record counterparts created by a merge that failed afterwards: the pair is linked, and
        the created record is its observation on that side, so the retry has both sides' values."""
        await execute(conn, attach_statements(links))

    async def in_doubt(self, entity: str) -> list[Pair]:
        """Unlinked rows an unfinished claim may have created remotely (a crash, a lost answer)."""
        rows = await self.pool.fetch(
            f"SELECT {PAIR_COLUMNS} FROM record_map WHERE entity = $1 AND attempts > 0"
            " AND claimed_at IS NOT NULL AND state <> 'deleted' AND (ecosire_id IS NULL OR crm_id IS NULL)"
            " ORDER BY id",
            entity,
        )
        return [Pair.from_row(r) for r in rows]

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
                rid, other = column(link.side, "id"), column(link.side.other, "id")
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


def attach_statements(links: Sequence[Link]) -> list[Statement]:
    """`attach` as statements to run with others: one per side that has links."""
    statements = []
    for side in Side:
        mine = [link for link in links if link.side is side]
        if mine:
            statements.append(
                Statement(
                    f"UPDATE record_map m SET {column(side, 'id')} = u.rid,"
                    f" {column(side, 'pending')} = u.body, {column(side, 'pending_at')} = u.at,"
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
