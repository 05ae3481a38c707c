"""The daemon's HTTP server (issue 10, part 4): probes, Prometheus metrics and the status page of a
real `crmsyncd run` against the sandboxes, and readiness after a pass refused for credentials
(the app in process: such a daemon stops by design, so its server is gone soon after)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crmsyncd.app import open_app
from crmsyncd.config import Settings, load_settings
from crmsyncd.observability.http import DaemonState, serve_http
from crmsyncd.observability.metrics import Metrics
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import run_cli
from tests.crash_daemon import Daemon, WriteSpy, daemon_env

TOKEN = "status-page-token-7f3a"
SCRIPT_NAME = "Eve <script>alert(1)</script>"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def seed(eco: EcosireSandbox, crm: CrmSandbox) -> None:
    eco.seed("contacts", [{"name": f"Eco {i}", "email": f"eco{i}@mail.example"} for i in range(5)])
    crm.seed("contacts", [{"fullName": f"Crm {i}", "emailAddress": f"crm{i}@mail.example"} for i in range(3)])


def refuse_script_names(crm: CrmSandbox) -> None:
    """The CRM refuses any contact whose name holds a script tag, quoting the name back."""
    crm.faults.add(
        "POST /contacts",
        status=422,
        times=100,
        body=orjson.dumps(
            {"statusCode": 422, "message": f"fullName {SCRIPT_NAME} is not allowed", "error": "Unprocessable"}
        ),
        content_type="application/json",
        when=lambda body: "<script>" in str(body.get("fullName")),
    )


@pytest.fixture
async def daemon(env: dict[str, str]) -> AsyncIterator[Daemon]:
    proc = Daemon(daemon_env(env, CRMSYNCD_SYNC_INTERVAL="3600", CRMSYNCD_RETRY_INTERVAL="3600"))
    yield proc
    if proc.running:
        await proc.stop()


async def started(daemon: Daemon) -> str:
    await daemon.start()
    event = await daemon.next_named("http_started", 60)
    await daemon.next_named("sync_pass", 60)
    return str(event["url"])


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers or {}) as resp:
        return resp.status, await resp.text()


async def test_probes_and_metrics_after_a_pass_hold_what_the_sandboxes_hold(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, daemon: Daemon
) -> None:
    seed(eco, crm)
    eco.seed("contacts", [{"name": SCRIPT_NAME, "email": "eve@mail.example"}])
    refuse_script_names(crm)
    url = await started(daemon)

    status, body = await get(f"{url}/healthz")
    assert (status, orjson.loads(body)["status"]) == (200, "ok")
    status, body = await get(f"{url}/readyz")
    assert (status, orjson.loads(body)) == (200, {"ready": True, "reason": "ok"})

    status, text = await get(f"{url}/metrics")
    assert status == 200
    found = samples(text)
    # Created on each side: what that sandbox holds beyond its own seed.
    assert value(found, "crmsyncd_records_total", entity="contacts", side="crm", outcome="created") == 5
    assert len(crm.records("contacts")) == 3 + 5
    assert value(found, "crmsyncd_records_total", entity="contacts", side="ecosire", outcome="created") == 3
    assert len(eco.records("contacts")) == 6 + 3
    assert value(found, "crmsyncd_records_total", entity="contacts", side="ecosire", outcome="seen") == 6
    # Writes: the creates, and the CRM's own three completed with what ECOSIRE sets on create.
    updated = value(found, "crmsyncd_records_total", entity="contacts", side="crm", outcome="updated")
    assert value(found, "crmsyncd_writes_total", entity="contacts", side="crm") == 5 + updated
    assert value(found, "crmsyncd_records_parked_total", entity="contacts", error_class="rejected") == 1
    assert value(found, "crmsyncd_passes_total", kind="sync", status="ok") == 1
    assert value(found, "crmsyncd_pass_duration_seconds_count", kind="sync") == 1
    assert value(found, "crmsyncd_requests_total", api="ecosire", kind="creates") == 3
    assert value(found, "crmsyncd_responses_total", api="crm", status="422") == 1
    assert value(found, "crmsyncd_rate_limit_waits_total", api="crm") == 0
    assert value(found, "crmsyncd_database_up") == 1
    # The parked record is an open error row and the retry queue's depth.
    open_rows = {k: v for k, v in found.items() if k[0] == "crmsyncd_error_rows"}
    assert sum(open_rows.values()) == 1
    assert dict(next(iter(open_rows))[1])["status"] == "pending"
    assert value(found, "crmsyncd_queue_depth", entity="contacts", queue="retry") == 1
    for side in ("ecosire", "crm"):
        assert value(found, "crmsyncd_cursor_lag_seconds", entity="contacts", side=side) >= 0
    # No pass in flight: no replica holds a lock.
    assert value(found, "crmsyncd_lock_holders") == 0
    assert value(found, "crmsyncd_entity_lock_held", entity="contacts") == 0

    # The server stops with the daemon.
    assert await daemon.stop() == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"{url}/healthz")


async def test_the_token_guards_the_page_and_metrics_not_the_probes_and_the_page_escapes(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, daemon: Daemon
) -> None:
    seed(eco, crm)
    eco.seed("contacts", [{"name": SCRIPT_NAME, "email": "eve@mail.example"}])
    refuse_script_names(crm)
    daemon.env["CRMSYNCD_HTTP_TOKEN"] = TOKEN
    url = await started(daemon)

    for path in ("/healthz", "/readyz"):
        assert (await get(f"{url}{path}"))[0] == 200, path
    for path in ("/", "/metrics"):
        assert (await get(f"{url}{path}"))[0] == 401, path
        assert (await get(f"{url}{path}", {"Authorization": "Bearer wrong"}))[0] == 401, path
        assert (await get(f"{url}{path}", {"Authorization": TOKEN}))[0] == 401, path
    assert (await get(f"{url}/metrics", {"Authorization": f"Bearer {TOKEN}"}))[0] == 200

    status, page = await get(f"{url}/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    # The parked record's reason, escaped: the name shows as text, never as a script.
    assert "fullName Eve &lt;script&gt;alert(1)&lt;/script&gt; is not allowed" in page
    assert "<script" not in page
    assert 'id="retry-queue"' in page and 'id="passes"' in page and 'id="cursors"' in page
    assert "no pass running" in page
    assert all(TOKEN not in str(e) for e in daemon.events)  # the token never reaches the log


async def test_readyz_names_the_database_when_it_is_gone(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, daemon: Daemon, server_dsn: str
) -> None:
    seed(eco, crm)
    url = await started(daemon)
    assert (await get(f"{url}/readyz"))[0] == 200
    name = urlsplit(env["CRMSYNCD_DATABASE_URL"]).path.lstrip("/")
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()

    status, body = await get(f"{url}/readyz")
    answer = orjson.loads(body)
    assert (status, answer["ready"]) == (503, False)
    assert answer["reason"].startswith("database: ") and "state database" in answer["reason"]
    # Alive all the same: restarting the process would not bring the database back.
    assert (await get(f"{url}/healthz"))[0] == 200
    status, text = await get(f"{url}/metrics")
    assert status == 200 and value(samples(text), "crmsyncd_database_up") == 0


async def test_readyz_is_503_after_a_pass_refused_for_credentials(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(eco, crm)
    monkeypatch.setenv("CRM_API_KEY", "wrong-key")
    settings = load_settings()
    state = DaemonState()
    async with serve_http(settings, state, Metrics()) as url, open_app(settings) as app:
        state.app = app
        assert (await get(f"{url}/readyz"))[0] == 200  # nothing has failed yet
        report = await app.engine.sync_pass(app.entities)
        assert report.status == "failed"
        status, body = await get(f"{url}/readyz")
        answer = orjson.loads(body)
        assert (status, answer["ready"]) == (503, False)
        assert answer["reason"].startswith(f"the last sync pass (#{report.run_id}) failed: ")
        assert "CRM_API_KEY" in answer["reason"] and "wrong-key" not in answer["reason"]


async def test_a_port_in_use_stops_the_start_naming_the_variable(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_cli("run", env={**env, "CRMSYNCD_HTTP_PORT": str(port)}, limit=60)
    assert result.code == 2, result.stderr
    assert f"CRMSYNCD_HTTP_PORT: port {port} on 127.0.0.1 is in use" in result.stderr


async def test_the_page_and_metrics_show_the_pass_in_flight(
    settings: Settings, eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    seed(eco, crm)
    spy = WriteSpy()
    spy.watch(crm, "POST /contacts")
    # The first create is answered late: the pass is in flight, the contacts' lock held, meanwhile.
    crm.faults.add("POST /contacts", delay=2.0, times=1)
    state = DaemonState()
    async with serve_http(settings, state, Metrics()) as url, open_app(settings) as app:
        state.app = app
        running = asyncio.create_task(app.engine.sync_pass(app.entities))
        await asyncio.wait_for(spy.hit.wait(), 30)

        status, page = await get(f"{url}/")
        assert status == 200
        assert "no pass running" not in page and 'id="progress-sides"' in page
        # Read in full before the first write: both sides' figures against their feeds' totals.
        assert "<td>contacts</td><td>ecosire</td><td>5</td><td>5</td>" in page
        assert "<td>contacts</td><td>crm</td><td>3</td><td>3</td>" in page
        found = samples((await get(f"{url}/metrics"))[1])
        assert value(found, "crmsyncd_lock_holders") == 1
        assert value(found, "crmsyncd_entity_lock_held", entity="contacts") == 1
        status, body = await get(f"{url}/healthz")
        assert orjson.loads(body)["pass"] == "sync"

        assert (await running).status == "ok"
        status, page = await get(f"{url}/")
        assert "no pass running" in page and "<td>ok</td>" in page
