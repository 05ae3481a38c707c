"""Which systems the state belongs to (migration 005).

The record map pairs ids of one ECOSIRE with ids of one CRM, and the cursors stand on their
stamps; the same ids in another system are other records, so state applied to other systems
writes one system's people over another's. The identity of both sides is recorded at the first
start that syncs and checked at every later one; only `crmsyncd state rebind` replaces it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from crmsyncd.connectors.base import SystemIdentity
from crmsyncd.domain.records import Side
from crmsyncd.store.db import Executor, Pool
from crmsyncd.store.pairs import column

# An arbitrary constant: serialises the check-and-record of two processes starting together on a
# fresh database (a transaction-level lock: the transaction's end releases it).
_BIND_LOCK = 0x63726D73_6964656E

# The variables that configure each side's identity, named in the refusal.
_VARIABLES = {Side.ECOSIRE: "ECOSIRE_API_URL", Side.CRM: "CRMSYNCD_CRM, CRM_API_URL"}


@dataclass(frozen=True, slots=True)
class RecordedIdentity:
    identity: SystemIdentity
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Mismatch:
    side: Side
    recorded: SystemIdentity
    configured: SystemIdentity


class SystemsChanged(Exception):
    """The configured systems are not the ones the state belongs to (the CLI exits 2)."""

    def __init__(self, mismatches: list[Mismatch]) -> None:
        lines = [
            f"  {m.side.value}: recorded {m.recorded.describe()}, configured {m.configured.describe()}"
            f" ({_VARIABLES[m.side]})"
            for m in mismatches
        ]
        super().__init__(
            "the state in this database belongs to other systems than the configured ones:\n"
            + "\n".join(lines)
            + "\nIts links pair record ids of the recorded systems; the same ids elsewhere are other"
            " records, so a sync would write one system's data over another's. If these are the same"
            " systems at a new address, run `crmsyncd state rebind` to record the configured ones;"
            " for other systems, use a fresh database (another CRMSYNCD_DATABASE_URL or"
            " CRMSYNCD_DATA_DIR)."
        )
        self.mismatches = mismatches


@dataclass(frozen=True, slots=True)
class Binding:
    """What a start did to the record: sides recorded for the first time, and sides re-recorded
    because nothing of theirs had been stored yet (a first start against a mistyped URL)."""

    recorded: tuple[Side, ...] = ()
    replaced: tuple[Mismatch, ...] = ()


class IdentityStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def recorded(self) -> dict[Side, RecordedIdentity]:
        return await _recorded(self.pool)

    async def bind(self, configured: Mapping[Side, SystemIdentity]) -> Binding:
        """Record the configured systems where none is recorded; refuse (SystemsChanged, nothing
        written) where another one is and the state holds anything of that side."""
        recorded_now: list[Side] = []
        replaced: list[Mismatch] = []
        refused: list[Mismatch] = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _BIND_LOCK)
            stored = await _recorded(conn)
            for side, identity in configured.items():
                previous = stored.get(side)
                if previous is None:
                    recorded_now.append(side)
                elif previous.identity != identity:
                    mismatch = Mismatch(side, previous.identity, identity)
                    (refused if await _holds_state(conn, side) else replaced).append(mismatch)
            if refused:
                raise SystemsChanged(refused)  # the transaction rolls back: nothing recorded
            for side in (*recorded_now, *(m.side for m in replaced)):
                await _save(conn, side, configured[side])
        return Binding(tuple(recorded_now), tuple(replaced))

    async def rebind(self, configured: Mapping[Side, SystemIdentity]) -> dict[Side, SystemIdentity | None]:
        """Record the configured systems whatever was recorded; returns what each side replaced."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _BIND_LOCK)
            stored = await _recorded(conn)
            for side, identity in configured.items():
                if side not in stored or stored[side].identity != identity:
                    await _save(conn, side, identity)  # an unchanged side keeps its date
        return {side: stored[side].identity if side in stored else None for side in configured}


async def _recorded(executor: Executor) -> dict[Side, RecordedIdentity]:
    rows = await executor.fetch("SELECT side, kind, base_url, account, recorded_at FROM system_identity")
    return {
        Side(r["side"]): RecordedIdentity(
            SystemIdentity(r["kind"], r["base_url"], r["account"]), r["recorded_at"]
        )
        for r in rows
    }


async def _save(executor: Executor, side: Side, identity: SystemIdentity) -> None:
    await executor.execute(
        "INSERT INTO system_identity (side, kind, base_url, account) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (side) DO UPDATE SET kind = EXCLUDED.kind, base_url = EXCLUDED.base_url,"
        " account = EXCLUDED.account, recorded_at = now()",
        side.value,
        identity.kind,
        identity.base_url,
        identity.account,
    )


async def _holds_state(executor: Executor, side: Side) -> bool:
    """Whether anything learnt from that side is stored: a record id, a cursor, an open error
    row. Until then the state cannot mix two systems' records, and a new identity is harmless."""
    found: bool = await executor.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM record_map WHERE {column(side, 'id')} IS NOT NULL)"
        " OR EXISTS (SELECT 1 FROM sync_cursor WHERE side = $1)"
        " OR EXISTS (SELECT 1 FROM sync_error WHERE side = $1 AND status <> 'resolved')",
        side.value,
    )
    return found
