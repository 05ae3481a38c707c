"""Start-up checks and housekeeping (issue 8, part 7): `CRM_RESOURCE_PATHS` checked against the
mapping before anything is read, pass history and resolved error rows pruned after
`CRMSYNCD_HISTORY_DAYS`, and a reader that closes the pipe early ending the output quietly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from crmsyncd.domain.records import Side
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from crmsyncd.store.errors import Backoff, ErrorClass, ErrorStore, Failure
from crmsyncd.store.runs import RunStore
from tests.conftest import run_cli
from tests.crash_daemon import Daemon, daemon_env

# 128 + SIGPIPE: what a shell shows for a command whose reader went away (`yes | head`).
EXIT_PIPE_CLOSED = 141


# --- CRM_RESOURCE_PATHS, checked at start --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("contact=/contacts,deals=/deals", "'contact'"),  # a typo of a mapped resource
        ("contacts=/contacts,deals=/deals,companies=/companies", "'companies'"),  # not mapped at all
    ],
)
async def test_an_unknown_resource_paths_key_exits_2_at_start_before_any_request(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, value: str, named: str
) -> None:
    eco.seed("contacts", [{"name": "Ann", "email": "ann@mail.example"}])
    for command in (("sync", "--once"), ("run",), ("retry", "--once"), ("reconcile", "--once")):
        result = await run_cli(*command, env={**env, "CRM_RESOURCE_PATHS": value})
        assert result.code == 2, (command, result.stderr[-2000:])
        assert "CRM_RESOURCE_PATHS" in result.stderr and named in result.stderr
        assert "valid keys: contacts, deals" in result.stderr
        assert "Traceback" not in result.stderr
    # Refused before a single request to either API.
    assert not eco.requests and not crm.requests
    assert len(crm.records("contacts")) == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("contacts:/people", "expected resource=/path pairs"),
        ("contacts=people", "expected resource=/path pairs"),
        ("=/people", "expected resource=/path pairs"),
        ("contacts=/people?active=1", "no query"),
        ("contacts=/people,contacts=/persons", "given twice"),
    ],
)
async def test_a_malformed_resource_paths_value_exits_2_naming_the_variable(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, value: str, reason: str
) -> None:
    result = await run_cli("sync", "--once", env={**env, "CRM_RESOURCE_PATHS": value})
    assert result.code == 2, result.stderr[-2000:]
    assert "CRM_RESOURCE_PATHS" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr
    assert not eco.requests and not crm.requests


async def test_resource_paths_are_trimmed_and_a_path_of_a_mapped_resource_is_used(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed("contacts", [{"name": "Ann", "email": "ann@mail.example"}])
    result = await run_cli(
        "sync", "--once", env={**env, "CRM_RESOURCE_PATHS": " contacts = /contacts , deals=/deals "}
    )
    assert result.code == 0, result.stderr[-2000:]
    assert [r["fullName"] for r in crm.records("contacts")] == ["Ann"]


# --- CRMSYNCD_HISTORY_DAYS and pruning --------------------------------------------------------


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The migrated database through the app's own pool (JSON codecs and all)."""
    from crmsyncd.store.db import create_pool
    from crmsyncd.store.migrate import migrate

    opened = await create_pool(database_url, max_size=2)
    try:
        await migrate(opened)
        yield opened
    finally:
        await opened.close()


async def _run(pool: asyncpg.Pool, kind: str, days_ago: float) -> int:
    runs = RunStore(pool)
    run_id = await runs.start(kind)
    await runs.finish(run_id, "ok", {"writes": 0}, {"ecosire": 1, "crm": 1})
    await pool.execute(
        "UPDATE sync_run SET started_at = now() - make_interval(secs => $2),"
        " finished_at = now() - make_interval(secs => $2) + interval '1 second' WHERE id = $1",
        run_id,
        days_ago * 86400,
    )
    return run_id


async def _error(pool: asyncpg.Pool, record_id: str, status: str, days_ago: float) -> int:
    """A retry-queue row parked `days_ago` days ago through the store, then resolved, left
    pending or dead, with its stamps moved back."""
    store = ErrorStore(pool, Backoff(max_attempts=3))
    failure = Failure(
        entity="contacts",
        side=Side.ECOSIRE,
        record_id=record_id,
        map_id=None,
        payload={"name": record_id},
        reason="422: email must be an email",
        error_class=ErrorClass.REJECTED,
        final=status == "dead",
    )
    await store.park(pool, [failure])
    row_id: int = await pool.fetchval(
        "SELECT id FROM sync_error WHERE record_id = $1 AND status <> 'resolved'", record_id
    )
    if status == "resolved":
        await store.resolve(pool, [row_id])
    await pool.execute(
        "UPDATE sync_error SET created_at = now() - make_interval(secs => $2),"
        " updated_at = now() - make_interval(secs => $2),"
        " resolved_at = CASE WHEN status = 'resolved' THEN now() - make_interval(secs => $2) END"
        " WHERE id = $1",
        row_id,
        days_ago * 86400,
    )
    return row_id


async def _history(pool: asyncpg.Pool) -> dict[str, int]:
    """The rows the test seeds, so that what is kept and what is removed can be named."""
    return {
        "sync 40 days": await _run(pool, "sync", 40),
        "sync 35 days": await _run(pool, "sync", 35),
        "sync 29 days": await _run(pool, "sync", 29),
        "sync today": await _run(pool, "sync", 0.01),
        "retry 40 days (the last retry)": await _run(pool, "retry", 40),
        "reconcile 50 days": await _run(pool, "reconcile", 50),
        "reconcile 31 days (the last reconcile)": await _run(pool, "reconcile", 31),
    }


async def _errors(pool: asyncpg.Pool) -> dict[str, int]:
    return {
        "resolved 40 days": await _error(pool, "e-old-resolved", "resolved", 40),
        "resolved 2 days": await _error(pool, "e-new-resolved", "resolved", 2),
        "pending 40 days": await _error(pool, "e-old-pending", "pending", 40),
        "dead 40 days": await _error(pool, "e-old-dead", "dead", 40),
    }


async def _left(pool: asyncpg.Pool, table: str, ids: dict[str, int]) -> set[str]:
    present = {r["id"] for r in await pool.fetch(f"SELECT id FROM {table}")}  # noqa: S608 (a constant)
    return {name for name, row_id in ids.items() if row_id in present}


async def test_prune_removes_old_history_and_keeps_open_rows_and_the_last_run_of_each_kind(
    env: dict[str, str], pool: asyncpg.Pool
) -> None:
    runs, errors = await _history(pool), await _errors(pool)

    result = await run_cli("prune", "--json", env=env)
    assert result.code == 0, result.stderr[-2000:]
    assert orjson.loads(result.stdout) == {"days": 30, "runs": 3, "errors": 1}
    assert await _left(pool, "sync_run", runs) == {
        "sync 29 days",
        "sync today",
        "retry 40 days (the last retry)",
        "reconcile 31 days (the last reconcile)",
    }
    # Open rows (pending, dead) are the queue itself: kept however old.
    assert await _left(pool, "sync_error", errors) == {"resolved 2 days", "pending 40 days", "dead 40 days"}

    again = await run_cli("prune", env=env)
    assert again.code == 0, again.stderr[-2000:]
    assert "removed 0 pass(es) and 0 resolved error row(s) older than 30 days" in again.stdout

    week = await run_cli("prune", env={**env, "CRMSYNCD_HISTORY_DAYS": "7"})
    assert week.code == 0, week.stderr[-2000:]
    assert "removed 1 pass(es) and 0 resolved error row(s) older than 7 days" in week.stdout
    assert "sync 29 days" not in await _left(pool, "sync_run", runs)
    one = await run_cli("prune", "--json", env={**env, "CRMSYNCD_HISTORY_DAYS": "1"})
    assert orjson.loads(one.stdout) == {"days": 1, "runs": 0, "errors": 1}
    assert await _left(pool, "sync_error", errors) == {"pending 40 days", "dead 40 days"}


@pytest.mark.parametrize("value", ["0", "-3", "thirty", "1.5"])
async def test_a_history_days_that_is_not_a_positive_integer_exits_2_naming_it(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, value: str
) -> None:
    for command in (("prune",), ("sync", "--once")):
        result = await run_cli(*command, env={**env, "CRMSYNCD_HISTORY_DAYS": value})
        assert result.code == 2, result.stderr[-2000:]
        assert "CRMSYNCD_HISTORY_DAYS" in result.stderr and "Traceback" not in result.stderr
    assert not eco.requests and not crm.requests


async def test_the_daemon_prunes_history_when_it_starts_and_then_daily(
    env: dict[str, str], pool: asyncpg.Pool, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    runs, errors = await _history(pool), await _errors(pool)
    daemon = Daemon(
        daemon_env(
            env,
            CRMSYNCD_SYNC_INTERVAL="3600",
            CRMSYNCD_RETRY_INTERVAL="3600",
            CRMSYNCD_RECONCILE_INTERVAL="0",
        )
    )
    await daemon.start()
    try:
        pruned = await daemon.next_named("history_pruned", 60)
        await daemon.next_named("sync_pass", 60)
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.tail()
    assert (pruned["runs"], pruned["errors"], pruned["days"]) == (3, 1, 30)
    assert await _left(pool, "sync_error", errors) == {"resolved 2 days", "pending 40 days", "dead 40 days"}
    assert "sync 40 days" not in await _left(pool, "sync_run", runs)
    started = daemon.named("daemon_started")
    assert started and started[0]["prune_interval"] == 86400


# --- a reader that closes the pipe early ------------------------------------------------------


def _read_one_line_then_close(args: list[str], env: dict[str, str]) -> tuple[bytes, int, bytes]:
    """`crmsyncd ARGS | head -1`: read the first line, close our end, wait for the exit."""
    full_env = daemon_env(env)
    with subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
        [sys.executable, "-m", "crmsyncd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    return first, code, err


@pytest.mark.parametrize("args", [["errors", "list"], ["errors", "list", "--json"]])
async def test_output_into_a_reader_that_closes_early_ends_quietly(
    env: dict[str, str], pool: asyncpg.Pool, args: list[str]
) -> None:
    # Far more output than a pipe holds (64 KiB), so the command is still writing when the
    # reader goes away: 1000 rows (the list's page) of about 400 characters each.
    store = ErrorStore(pool, Backoff())
    await store.park(
        pool,
        [
            Failure(
                entity="contacts",
                side=Side.CRM,
                record_id=f"c_{i:06d}",
                map_id=None,
                payload={"fullName": f"Person {i}"},
                reason=f"422: emailAddress {'x' * 300} is not an email ({i})",
                error_class=ErrorClass.REJECTED,
            )
            for i in range(1000)
        ],
    )
    first, code, err = await asyncio.to_thread(_read_one_line_then_close, args, env)
    assert first.strip(), "the command printed nothing"
    text = err.decode()
    assert "Traceback" not in text and "BrokenPipe" not in text and "Exception ignored" not in text, text
    assert code == EXIT_PIPE_CLOSED, (code, text)
    # And unpiped, the same command still prints everything and exits 0.
    whole = await run_cli(*args, env=env)
    assert whole.code == 0
    assert whole.stdout.count("c_0") == 1000


# --- other variables that used to fail after start ----------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("CRMSYNCD_SYNC_INTERVAL", "inf", "run"),  # passed gt=0, then overflowed the scheduler
        ("CRMSYNCD_RECONCILE_INTERVAL", "1e15", "run"),  # a date past the year 9999
        ("CRMSYNCD_OVERLAP", "inf", "sync"),  # a timedelta that cannot be
        ("CRMSYNCD_HTTP_TIMEOUT", "inf", "sync"),
    ],
)
async def test_an_interval_that_cannot_be_scheduled_exits_2_at_start(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, variable: str, value: str, command: str
) -> None:
    args = ("run",) if command == "run" else ("sync", "--once")
    result = await run_cli(*args, env={**env, variable: value})
    assert result.code == 2, result.stderr[-2000:]
    assert variable in result.stderr and "Traceback" not in result.stderr
    assert not eco.requests and not crm.requests


@pytest.mark.parametrize(
    "variable",
    ["CRM_ID_FIELD", "CRM_UPDATED_FIELD", "CRM_UPDATED_AFTER_PARAM", "CRM_PAGE_PARAM", "CRM_LIMIT_PARAM"],
)
async def test_an_empty_crm_field_or_parameter_name_exits_2_at_start(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, variable: str
) -> None:
    eco.seed("contacts", [{"name": "Ann", "email": "ann@mail.example"}])
    result = await run_cli("sync", "--once", env={**env, variable: " "})
    assert result.code == 2, result.stderr[-2000:]
    assert variable in result.stderr and "Traceback" not in result.stderr
    assert not eco.requests and not crm.requests
