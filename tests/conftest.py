"""Shared fixtures: a real PostgreSQL (embedded, or CRMSYNCD_TEST_DATABASE_URL) with a fresh
database per test, both sandbox APIs on loopback, and the app wired to them as a user would."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from crmsyncd.app import App, open_app
from crmsyncd.config import Settings, load_settings
from crmsyncd.domain.records import Side
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from crmsyncd.sandbox.hubspot import HubSpotSandbox, Limits
from crmsyncd.store.db import EmbeddedPostgres, database_name_dsn

_counter = itertools.count(1)


@pytest.fixture(scope="session")
async def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    external = os.environ.get("CRMSYNCD_TEST_DATABASE_URL")
    if external:
        yield external
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", stop_on_exit=True)
    dsn = await embedded.start()
    try:
        yield dsn
    finally:
        await embedded.stop()


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """A new, empty database on the test server, dropped afterwards; its DSN."""
    name = f"crmsyncd_test_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_name_dsn(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def database_url(server_dsn: str) -> AsyncIterator[str]:
    """A new, empty database for one test."""
    async with fresh_database(server_dsn) as dsn:
        yield dsn


@pytest.fixture
async def eco() -> AsyncIterator[EcosireSandbox]:
    # Unlimited by default so tests run fast; rate-limit tests set their own.
    async with EcosireSandbox(rate_limit_per_minute=None) as server:
        yield server


@pytest.fixture
async def crm() -> AsyncIterator[CrmSandbox]:
    async with CrmSandbox() as server:
        yield server


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpotSandbox]:
    """A fake HubSpot account: writes searchable at once and no limits, so tests run fast; a test
    of the index lag or the limits sets `search_lag` or `limits` itself."""
    unlimited = Limits(ten_second=None, oauth_ten_second=None, daily=None, search_per_second=None)
    async with HubSpotSandbox(search_lag=0.0, limits=unlimited) as server:
        yield server


@pytest.fixture
def env(database_url: str, eco: EcosireSandbox, crm: CrmSandbox, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment a user would set, pointed at the sandboxes and this test's database."""
    values = {
        "CRMSYNCD_DATABASE_URL": database_url,
        "CRMSYNCD_DATA_DIR": str(tmp_path / "data"),
        "ECOSIRE_API_URL": eco.url,
        "ECOSIRE_API_KEY": eco.api_key,
        "ECOSIRE_RATE_LIMIT": "100000",
        "CRMSYNCD_CRM": "rest",
        "CRM_API_URL": crm.url,
        "CRM_API_KEY": crm.api_key,
        "CRMSYNCD_RETRY_BACKOFF": "0.01",
        "CRMSYNCD_HTTP_TIMEOUT": "5",
        "CRMSYNCD_LOG_FORMAT": "json",
        "CRMSYNCD_LOG_LEVEL": "info",
        # Any free port for the daemon's HTTP server: daemons of tests running at once never
        # contend for the default one.
        "CRMSYNCD_HTTP_PORT": "0",
    }
    mp = pytest.MonkeyPatch()
    for name in list(os.environ):
        if name.startswith(("CRMSYNCD_", "ECOSIRE_", "CRM_")) and name != "CRMSYNCD_TEST_DATABASE_URL":
            mp.delenv(name)
    for name, value in values.items():
        mp.setenv(name, value)
    yield values
    mp.undo()


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    async with open_app(settings) as opened:
        yield opened


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: dict[str, str], limit: float = 120) -> CliResult:
    """The real command in a subprocess, while the sandboxes keep serving in this loop."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMSYNCD_", "ECOSIRE_", "CRM_"))}
    full_env.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crmsyncd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def by_email(records: list[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    return {str(r[field]).strip().casefold(): r for r in records if r.get(field)}


async def table(app: App, sql: str, *args: Any) -> list[asyncpg.Record]:
    return await app.pool.fetch(sql, *args)


SIDES = tuple(Side)


class SteppedClock:
    """A server clock that moves only when the test says so (`server.clock = SteppedClock(...)`)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class TickingClock:
    """A server clock that moves a few seconds at every reading, so that every stamp stands
    apart from the next by more than the re-read overlap: what a quiet day looks like."""

    def __init__(self, start: datetime, step: timedelta = timedelta(seconds=3)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


class InstantClock:
    """Sleeping advances time at once; the gaps the pacer chose are kept in `slept`."""

    def __init__(self, start: float = 1_800_000_000.3) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
