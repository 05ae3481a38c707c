"""`crmsyncd demo`: the whole product on a laptop in a minute. An embedded PostgreSQL in a
temporary directory and both sandbox APIs in process, seeded with overlapping data; passes run
until nothing is left to write; then a report of what happened and what it cost."""

from __future__ import annotations

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
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox, demo_dataset, load_dataset, serve

MAX_PASSES = 6


async def run_demo(
    settings: Settings, *, contacts: int, seed: int, rate_limit: int, out: TextIO = sys.stdout
) -> int:
    if "CRMSYNCD_LOG_LEVEL" not in os.environ:
        configure_logging("warning", settings.log_format)  # the report below is the output
    eco = EcosireSandbox(rate_limit_per_minute=rate_limit)
    crm = CrmSandbox()
    eco_data, crm_data = demo_dataset(seed=seed, contacts=contacts)
    load_dataset(eco, eco_data)
    load_dataset(crm, crm_data)

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("crmsyncd demo: embedded PostgreSQL + sandbox ECOSIRE and CRM APIs, in process")
    say(f"  seeded ECOSIRE: {_sizes(eco_data)}; CRM: {_sizes(crm_data)} (seed {seed})")
    say(f"  ECOSIRE sandbox limit: {rate_limit} requests/minute (the real API allows 60)")
    with tempfile.TemporaryDirectory(prefix="crmsyncd-demo-") as tmp:
        async with serve(eco) as eco_server, serve(crm) as crm_server:
            demo_settings = settings.model_copy(
                update={
                    "database_url": None,
                    "data_dir": Path(tmp),
                    "ecosire_api_url": eco_server.url,
                    "ecosire_api_key": SecretStr(eco_server.api_key),
                    "ecosire_rate_limit": rate_limit,
                    "crm": "rest",
                    "crm_api_url": crm_server.url,
                    "crm_api_key": SecretStr(crm_server.api_key),
                    "mapping": None,
                    "entities_text": "contacts,deals",
                }
            )
            say("  state: embedded PostgreSQL in a temporary directory\n")
            async with open_app(demo_settings, stop_embedded=True) as app:
                reports: list[PassReport] = []
                for number in range(1, MAX_PASSES + 1):
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
    return 0


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
    crm: CrmSandbox,
) -> None:
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
    say(f"  created: {total.created.get('ecosire', 0)} in ECOSIRE, {total.created.get('crm', 0)} in the CRM")
    say(f"  updated: {total.updated.get('ecosire', 0)} in ECOSIRE, {total.updated.get('crm', 0)} in the CRM")
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
    requests = {"ecosire": sum(eco.requests.values()), "crm": sum(crm.requests.values())}
    requests["ecosire"] -= eco.requests.get("rate_limited", 0)
    requests["crm"] -= crm.requests.get("rate_limited", 0)
    spent = sum(requests.values())
    synced = total.linked + sum(total.created.values()) + sum(total.updated.values())
    say("requests spent (counted by the sandbox servers):")
    say(
        f"  ECOSIRE {requests['ecosire']}, CRM {requests['crm']}, total {spent}; "
        f"429 answers: {eco.requests.get('rate_limited', 0) + crm.requests.get('rate_limited', 0)}"
    )
    if synced:
        say(
            f"  {spent / synced:.2f} requests per synced record ({synced} records created, linked or updated)"
        )
