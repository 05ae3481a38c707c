"""`crmsyncd demo`: the whole product on a laptop in a minute. An embedded PostgreSQL in a
temporary directory and both sandbox APIs in process, seeded with overlapping data; passes run
until nothing is left to write; then a report of what happened and what it cost.

`--crm hubspot`: the HubSpot sandbox is the CRM, at HubSpot's own limits (190 requests a rolling
10 seconds, 5 searches a second, a search index 3 seconds behind writes), holding the same data
set in HubSpot's shape (sandbox/hubspot/seed.py) with the custom properties that `crmsyncd
hubspot setup` creates, created by its code. The connector gets the sandbox's settings from here:
the user's HUBSPOT_* variables are not read. Between passes the demo waits until HubSpot's index
holds the previous pass's writes, as the daemon's interval would: so the next pass reads them
back (and recognises them as its own), and two runs with the same seed tell the same story.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

from crmsyncd.app import open_app
from crmsyncd.config import Settings
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.passes import PassReport
from crmsyncd.observability.logging import configure_logging
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox, SandboxServer, demo_dataset, load_dataset, serve
from crmsyncd.sandbox.hubspot import HubSpotSandbox
from crmsyncd.sandbox.hubspot.seed import hubspot_demo_dataset, prepare_demo_portal, sandbox_settings
from crmsyncd.sandbox.hubspot.usage import describe, request_kinds

MAX_PASSES = 6


async def run_demo(
    settings: Settings,
    *,
    contacts: int,
    seed: int,
    rate_limit: int,
    crm_kind: str = "rest",
    out: TextIO = sys.stdout,
) -> int:
    if "CRMSYNCD_LOG_LEVEL" not in os.environ:
        configure_logging("warning", settings.log_format)  # the report below is the output
    eco = EcosireSandbox(rate_limit_per_minute=rate_limit)
    crm: CrmSandbox | HubSpotSandbox
    if crm_kind == "hubspot":
        crm = HubSpotSandbox()  # HubSpot's limits and index lag, as the class defaults them
        eco_data, crm_data = hubspot_demo_dataset(seed=seed, contacts=contacts)
    else:
        crm = CrmSandbox()
        eco_data, crm_data = demo_dataset(seed=seed, contacts=contacts)
        load_dataset(crm, crm_data)
    load_dataset(eco, eco_data)
    name = "HubSpot" if isinstance(crm, HubSpotSandbox) else "CRM"

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"crmsyncd demo: embedded PostgreSQL + sandbox ECOSIRE and {name} APIs, in process")
    say(f"  seeded ECOSIRE: {_sizes(eco_data)}; {name}: {_sizes(crm_data)} (seed {seed})")
    say(f"  ECOSIRE sandbox limit: {rate_limit} requests/minute (the real API allows 60)")
    with tempfile.TemporaryDirectory(prefix="crmsyncd-demo-") as tmp:
        async with serve(eco) as eco_server, serve(crm) as crm_server:
            hubspot = None
            update: dict[str, object] = {"crm": "rest", "crm_api_url": crm_server.url}
            if isinstance(crm_server, HubSpotSandbox):
                limits = crm_server.limits
                say(
                    f"  HubSpot sandbox limits: {limits.ten_second} requests per 10 s, "
                    f"{limits.search_per_second} searches/s, search index {crm_server.search_lag:g} s "
                    "behind writes (HubSpot's own)"
                )
                for line in await prepare_demo_portal(
                    crm_server, crm_data, http_timeout=settings.http_timeout
                ):
                    say(f"  crmsyncd hubspot setup: {line}")
                hubspot = sandbox_settings(crm_server, timeout=settings.http_timeout)
                update = {"crm": "hubspot", "crm_api_url": None}
            demo_settings = settings.model_copy(
                update={
                    "database_url": None,
                    "data_dir": Path(tmp),
                    "ecosire_api_url": eco_server.url,
                    "ecosire_api_key": SecretStr(eco_server.api_key),
                    "ecosire_rate_limit": rate_limit,
                    "crm_api_key": SecretStr(crm_server.api_key),
                    "mapping": None,
                    "entities_text": "contacts,deals",
                    **update,
                }
            )
            say("  state: embedded PostgreSQL in a temporary directory\n")
            waited = 0.0
            async with open_app(demo_settings, stop_embedded=True, hubspot=hubspot) as app:
                reports: list[PassReport] = []
                for number in range(1, MAX_PASSES + 1):
                    if isinstance(crm_server, HubSpotSandbox):
                        waited += await _index_settled(crm_server)
                    report = await app.engine.sync_pass(app.entities)
                    reports.append(report)
                    say(_pass_line(number, report))
                    if report.status != "ok":
                        say(f"\npass failed: {report.error}")
                        return 1
                    if report.counts.writes == 0:
                        break
                errors = await app.engine.errors.list()
                pairs = await app.engine.pairs.counts()
            _summary(say, reports, errors, pairs, eco, crm)
            if waited:
                say(f"  between passes, {waited:.1f} s waiting for HubSpot's search index to hold the writes")
    return 0


async def _index_settled(hub: HubSpotSandbox) -> float:
    """Wait until every write made so far is searchable; the seconds waited."""
    settled = hub.portal.settled_at()
    wait = 0.0 if settled is None else (settled - hub.now()).total_seconds()
    if wait > 0:
        await asyncio.sleep(wait)
    return max(0.0, wait)


def _sizes(data: dict[str, list[Any]]) -> str:
    return ", ".join(f"{len(rows)} {name}" for name, rows in sorted(data.items()))


def _pass_line(number: int, report: PassReport) -> str:
    c = report.counts
    return (
        f"pass {number}: seen {sum(c.seen.values()):>4}  echoes {c.echoes:>4}  linked {c.linked:>4}  "
        f"created {_sides(c.created)}  updated {_sides(c.updated)}  parked {sum(c.parked.values()):>2}  "
        f"requests {sum(report.requests.values()):>4}  {report.seconds:.2f}s"
    )


def _sides(counter: Counter[str]) -> str:
    return f"E{counter.get('ecosire', 0):>4}/C{counter.get('crm', 0):>4}"


def _summary(
    say: Any,
    reports: list[PassReport],
    errors: list[Any],
    pairs: list[Any],
    eco: EcosireSandbox,
    crm: SandboxServer,
) -> None:
    hubspot = isinstance(crm, HubSpotSandbox)
    where, name = ("HubSpot", "HubSpot") if hubspot else ("the CRM", "CRM")
    total = PassCounts()
    for report in reports:
        total.add(report.counts)
    converged = reports[-1].counts.writes == 0
    say()
    say(
        f"{'converged' if converged else 'NOT converged'} after {len(reports)} passes"
        + (" (the last wrote nothing)" if converged else "")
    )
    say("what happened:")
    say(f"  linked by email, not duplicated: {total.linked}")
    say(f"  created: {total.created.get('ecosire', 0)} in ECOSIRE, {total.created.get('crm', 0)} in {where}")
    say(f"  updated: {total.updated.get('ecosire', 0)} in ECOSIRE, {total.updated.get('crm', 0)} in {where}")
    say(f"  echoes of our own writes recognised at no cost: {total.echoes}")
    if total.conflicts:
        say("  conflicts settled:")
        for key, n in sorted(total.conflicts.items()):
            field, rule, winner = key.split(":")
            say(f"    {field:<10} {rule:<18} -> {winner:<8} x{n}")
    for row in pairs:
        say(f"  {row['entity']}: {row['linked']} pairs in step, {row['unlinked']} without counterpart")
    if errors:
        say(f"  parked in the retry queue ({len(errors)}):")
        for row in errors:
            say(f"    #{row['id']} {row['entity']} {row['side']} {row['record_id']}: {row['reason']}")
    else:
        say("  parked in the retry queue: none")
    requests = {"ecosire": sum(eco.requests.values()), "crm": sum(crm.requests.values())}
    requests["ecosire"] -= eco.requests.get("rate_limited", 0)
    requests["crm"] -= crm.requests.get("rate_limited", 0)
    spent = sum(requests.values())
    synced = total.linked + sum(total.created.values()) + sum(total.updated.values())
    say("requests spent (counted by the sandbox servers):")
    say(
        f"  ECOSIRE {requests['ecosire']}, {name} {requests['crm']}, total {spent}; "
        f"429 answers: {eco.requests.get('rate_limited', 0) + crm.requests.get('rate_limited', 0)}"
    )
    if hubspot:
        say(f"  HubSpot by kind: {describe(request_kinds(crm.requests))}")
    if synced:
        say(
            f"  {spent / synced:.2f} requests per synced record ({synced} records created, linked or updated)"
        )
