"""Migrations on a real PostgreSQL, the daemon's life cycle, and secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta

import orjson

from crmsyncd.connectors.port import Checkpoint
from crmsyncd.domain.records import Side
from crmsyncd.observability.logging import configure_logging, get_logger
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from crmsyncd.store.cursors import CursorStore
from crmsyncd.store.db import create_pool, execute_atomically
from crmsyncd.store.migrate import available_migrations, migrate


async def test_migrations_apply_once_even_when_two_daemons_start_together(database_url: str) -> None:
    pool = await create_pool(database_url)
    try:
        first, second = await asyncio.gather(migrate(pool), migrate(pool))
        versions = [m.version for m in available_migrations()]
        assert sorted(first + second) == versions
        assert await migrate(pool) == []
        applied = await pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in applied] == versions
        tables = {
            r["tablename"]
            for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"record_map", "sync_cursor", "sync_error", "sync_run", "schema_migrations"} <= tables
    finally:
        await pool.close()


async def test_a_feeds_checkpoint_token_is_saved_with_its_cursor_and_only_moves_forward(
    database_url: str,
) -> None:
    """A feed that continues from a token of its own (a SOQL locator, a list cursor) gets it back
    at the next pass exactly as it yielded it, and an older position never replaces a newer."""
    pool = await create_pool(database_url)
    try:
        await migrate(pool)
        cursors = CursorStore(pool)
        at = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        token = {"locator": "01gD0000002HU6KAAW-2000", "page": [3, "x"]}
        newer = Checkpoint(at, "d9", token)
        await execute_atomically(pool, [cursors.save_statement("deals", Side.CRM, newer)])
        saved = await cursors.get("deals", Side.CRM)
        assert saved is not None and saved.checkpoint == newer
        older = Checkpoint(at - timedelta(seconds=1), "d1", {"locator": "old"})
        await execute_atomically(pool, [cursors.save_statement("deals", Side.CRM, older)])
        kept = await cursors.get("deals", Side.CRM)
        assert kept is not None and kept.checkpoint.token == token
    finally:
        await pool.close()


def test_secrets_never_reach_a_log_line() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", ["eco_live_abcdefghijklmnopqrstuvwx"], stream=stream)
    log = get_logger()
    log.info(
        "request",
        url="https://x/api?k=eco_live_abcdefghijklmnopqrstuvwx",
        api_key="raw-key",
        headers={"Authorization": "Bearer zzz"},
        note="fine",
    )
    line = json.loads(stream.getvalue())
    text = stream.getvalue()
    assert "eco_live_abcdefghijklmnopqrstuvwx" not in text and "raw-key" not in text and "zzz" not in text
    assert line["note"] == "fine" and line["event"] == "request"


async def test_run_syncs_at_start_and_stops_cleanly_on_sigterm(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed("contacts", [{"name": f"P{i}", "email": f"p{i}@mail.example"} for i in range(5)])
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMSYNCD_", "ECOSIRE_", "CRM_"))}
    full_env.update(env, CRMSYNCD_SYNC_INTERVAL="3600", CRMSYNCD_RETRY_INTERVAL="3600")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crmsyncd",
        "run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
    )
    assert proc.stderr is not None
    events: list[dict[str, object]] = []

    async def read_until(event: str) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            if line.startswith(b"{"):
                events.append(orjson.loads(line))
                if events[-1]["event"] == event:
                    return
        raise AssertionError(f"the daemon ended before {event!r}: {events}")

    try:
        await asyncio.wait_for(read_until("sync_pass"), 60)
        assert len(crm.records("contacts")) == 5
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(read_until("daemon_stopped"), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    names = [e["event"] for e in events]
    assert names.index("daemon_started") < names.index("sync_pass") < names.index("stop_requested")
    assert all(eco.api_key not in json.dumps(e) for e in events)
