"""Graceful stop (issue 3, item 8): SIGTERM to `crmsyncd run` in the middle of a pass.

The daemon is a real subprocess; the sandboxes answer with a little latency so that the pass is
mid-flight when the signal lands (a server-side counter of its writes tells the test when). What
must hold: the writes in flight end answered and recorded (or parked), the cursors are saved, the
exit code is 0 within a bounded time, and a later `sync --once` completes everything with no
duplicates on either side (invariants 2 and 3)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from crmsyncd.domain.canonical import normalise_key
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from crmsyncd.sandbox.base import SandboxServer
from tests.conftest import run_cli
from tests.crash_daemon import Daemon, daemon_env

ECO_CONTACTS, CRM_CONTACTS, DEALS = 240, 160, 30


def seed_world(eco: EcosireSandbox, crm: CrmSandbox) -> tuple[set[str], set[str]]:
    eco_people = eco.seed(
        "contacts", [{"name": f"Eco {i}", "email": f"eco{i}@mail.example"} for i in range(ECO_CONTACTS)]
    )
    crm_people = crm.seed(
        "contacts",
        [{"fullName": f"Crm {i}", "emailAddress": f"crm{i}@mail.example"} for i in range(CRM_CONTACTS)],
    )
    eco_deals = eco.seed(
        "deals",
        [{"title": f"Deal {i}", "amount": 100 * i, "contactId": eco_people[i]["id"]} for i in range(DEALS)],
    )
    return {r["id"] for r in eco_people + eco_deals}, {r["id"] for r in crm_people}


def count_writes(server: SandboxServer, route: str, after: int, event: asyncio.Event) -> Callable[[], int]:
    """A rule that never matches but counts `route` writes; `event` is set at the `after`-th."""
    seen = [0]

    def predicate(body: Any) -> bool:
        seen[0] += 1
        if seen[0] >= after:
            event.set()
        return False

    server.faults.add(route, times=1, when=predicate)
    return lambda: seen[0]


async def assert_complete_without_duplicates(
    eco: EcosireSandbox, crm: CrmSandbox, env: dict[str, str]
) -> None:
    """A later `sync --once` finishes the job: every contact and deal once on each side, and the
    pass after it writes nothing."""
    done = await run_cli("sync", "--once", env=env)
    assert done.code == 0, done.stderr[-3000:]
    eco_emails = Counter(normalise_key(r["email"]) for r in eco.records("contacts"))
    crm_emails = Counter(normalise_key(r["emailAddress"]) for r in crm.records("contacts"))
    wanted = {f"eco{i}@mail.example" for i in range(ECO_CONTACTS)} | {
        f"crm{i}@mail.example" for i in range(CRM_CONTACTS)
    }
    assert set(eco_emails) == set(crm_emails) == wanted
    assert max(eco_emails.values()) == max(crm_emails.values()) == 1, "a duplicate contact"
    crm_titles = Counter(d["title"] for d in crm.records("deals"))
    assert crm_titles == Counter(f"Deal {i}" for i in range(DEALS)), "a deal missing or duplicated"
    quiet = await run_cli("sync", "--once", env=env)
    line = next(orjson.loads(x) for x in quiet.stderr.splitlines() if '"sync_pass"' in x)
    assert (line["status"], line["writes"], line["parked"]) == ("ok", 0, {})


def assert_json_logs(daemon: Daemon) -> None:
    """What the README promises the orchestrator's log collector, through the stop too: every
    line on stderr one JSON object with its event, level and timestamp; nothing on stdout."""
    assert daemon.stdout == b"", daemon.stdout[:2000]
    plain = [e["text"] for e in daemon.events if e["event"] == "(text)"]
    assert plain == [], plain[:20]
    assert all({"event", "level", "timestamp"} <= set(e) for e in daemon.events), daemon.tail()
    assert daemon.events[-1]["event"] == "daemon_stopped", daemon.tail()


def one_pass_env(env: dict[str, str], **overrides: str) -> dict[str, str]:
    """The daemon's pass at start and nothing else scheduled during the test."""
    return daemon_env(
        env,
        CRMSYNCD_SYNC_INTERVAL="3600",
        CRMSYNCD_RETRY_INTERVAL="3600",
        CRMSYNCD_RECONCILE_INTERVAL="0",
        **overrides,
    )


async def sigterm_once(daemon: Daemon, moment: asyncio.Event, stop_within: float) -> tuple[int, float]:
    """Start the daemon, send SIGTERM at `moment`; its exit code and how long it took to stop."""
    await daemon.start()
    try:
        await asyncio.wait_for(moment.wait(), 45)
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(daemon.proc.wait(), stop_within)
        return code, time.monotonic() - signalled
    finally:
        await daemon.stop()


async def test_sigterm_mid_pass_finishes_in_flight_writes_and_exits_0(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, database_url: str
) -> None:
    eco_seeded, crm_seeded = seed_world(eco, crm)
    eco.latency = crm.latency = 0.02  # every request takes a while: writes are in flight
    mid_pass = asyncio.Event()
    posted = count_writes(crm, "POST /contacts", 60, mid_pass)
    daemon = Daemon(one_pass_env(env), capture_stdout=True)
    code, stopped_in = await sigterm_once(daemon, mid_pass, stop_within=20)
    assert code == 0, daemon.tail()
    assert_json_logs(daemon)
    assert stopped_in < 10, f"took {stopped_in:.1f} s to stop"
    names = [e["event"] for e in daemon.events]
    assert names.index("stop_requested") < names.index("daemon_stopped"), daemon.tail()
    [summary] = daemon.named("sync_pass")
    assert summary["status"] == "stopped", summary
    assert daemon.named("daemon_stopped")[0]["cancelled"] is False
    # The pass really was cut short: not every ECOSIRE contact reached the CRM.
    assert posted() < ECO_CONTACTS and len(crm.records("contacts")) < ECO_CONTACTS + CRM_CONTACTS

    conn = await asyncpg.connect(database_url)
    try:
        # Every record the daemon created on either side is in the map: no write in flight was
        # answered and then forgotten; nothing is left claimed, so the next pass has no doubt to
        # look up.
        rows = await conn.fetch("SELECT ecosire_id, crm_id, claim_run FROM record_map")
        mapped_eco = {r["ecosire_id"] for r in rows}
        mapped_crm = {r["crm_id"] for r in rows}
        created_on_crm = {r["id"] for r in crm.records("contacts")} - crm_seeded
        created_on_eco = {r["id"] for r in eco.records("contacts")} - eco_seeded
        assert created_on_crm and created_on_crm <= mapped_crm
        assert created_on_eco <= mapped_eco
        assert [r for r in rows if r["claim_run"] is not None] == []
        # Cursors were saved with the pages staged before the stop.
        cursors = await conn.fetch("SELECT entity, side FROM sync_cursor WHERE entity = 'contacts'")
        assert sorted(r["side"] for r in cursors) == ["crm", "ecosire"]
        parked = await conn.fetch("SELECT reason FROM sync_error")
        assert parked == [], parked
    finally:
        await conn.close()

    eco.latency = crm.latency = 0.0
    await assert_complete_without_duplicates(eco, crm, env)


async def test_a_stop_is_bounded_even_when_workers_wait_out_a_long_rate_limit(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    """The CRM asks for 30 s of quiet (Retry-After) just before the signal: every worker that
    needs the CRM waits. The stop does not wait for them past one HTTP timeout plus a margin; the
    cancelled work is as safe as after a kill -9, and the next pass completes it, no duplicates."""
    seed_world(eco, crm)
    eco.latency = crm.latency = 0.01
    limited = asyncio.Event()
    creates = [0]

    def throttle(body: Any) -> bool:  # the 30th create is answered 429, Retry-After: 30
        creates[0] += 1
        if creates[0] < 30:
            return False
        limited.set()
        return True

    crm.faults.add("POST /contacts", status=429, headers={"Retry-After": "30"}, when=throttle)
    daemon = Daemon(one_pass_env(env, CRMSYNCD_HTTP_TIMEOUT="1"), capture_stdout=True)
    code, stopped_in = await sigterm_once(daemon, limited, stop_within=25)
    assert code == 0, daemon.tail()
    assert_json_logs(daemon)  # the cancelled jobs' unwinding included
    # One HTTP timeout (1 s) plus the margin (5 s), not the 30 s the server asked for.
    assert stopped_in < 12, f"took {stopped_in:.1f} s to stop"
    assert daemon.named("stop_grace_exceeded"), daemon.tail()
    assert daemon.named("daemon_stopped")[0]["cancelled"] is True

    eco.latency = crm.latency = 0.0
    await assert_complete_without_duplicates(eco, crm, env)


async def test_a_second_signal_stops_at_once(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    seed_world(eco, crm)
    crm.latency = 0.01
    limited = asyncio.Event()

    def throttle(body: Any) -> bool:
        limited.set()
        return True

    crm.faults.add("POST /contacts", status=429, headers={"Retry-After": "30"}, when=throttle)
    daemon = Daemon(one_pass_env(env))
    await daemon.start()
    try:
        await asyncio.wait_for(limited.wait(), 45)
        daemon.proc.send_signal(signal.SIGTERM)
        await daemon.next_named("stop_requested", 10)
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(daemon.proc.wait(), 15)
        stopped_in = time.monotonic() - signalled
    finally:
        await daemon.stop()
    assert code == 0, daemon.tail()
    assert stopped_in < 5, f"took {stopped_in:.1f} s to stop"  # the HTTP timeout is 5 s here
    assert [e["again"] for e in daemon.named("stop_requested")] == [False, True]
    crm.latency = 0.0
    await assert_complete_without_duplicates(eco, crm, env)
