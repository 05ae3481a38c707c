"""The HubSpot part (`--only hubspot`): an initial sync against the HubSpot sandbox at HubSpot's
real limits, and how close its request count comes to what HubSpot's batch and page sizes allow.

The rig: the ECOSIRE sandbox as in the initial-sync part (20 ms a request, no rate limit: the
subject is the HubSpot side, and ECOSIRE's documented 60 a minute would make 10,000 creates take
hours), and the HubSpot sandbox with its defaults, HubSpot's own limits: 190 requests per rolling
10 s, 5 searches a second, the daily limit, a search index 3 s behind writes, the same 20 ms a
request. Contacts as in the initial sync (bench/dataset.py: `per_side` each side, `shared` by
email), the CRM side converted into HubSpot objects by the demo's conversion
(sandbox/hubspot/seed.py), with the custom properties `crmsyncd hubspot setup` creates.
`python -m crmsyncd sync --once` runs as its own process with CRMSYNCD_CRM=hubspot.

The minimum: what the run had to read and write, in HubSpot's largest pages and batches:
- read: the contacts HubSpot held at the start, ceil(n / 200) searches, and one archived list
  (there is none archived, but the feed has to ask);
- written: the records crmsyncd created and updated in HubSpot (its own per-record counts),
  ceil(created / 100) batch creates and ceil(updated / 100) batch updates;
- one account-details call, which tells crmsyncd which portal its state belongs to.
Everything else the run sent (searches past that, re-reads at the 10,000-result cap, batch reads,
upserts, batches less than full, 429s) is what the ratio measures.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from bench.dataset import contact_sets
from bench.harness import BenchEcosire, reset_counts
from crmsyncd.connectors.hubspot.settings import BATCH_LIMIT, SEARCH_LIMIT
from crmsyncd.sandbox.admin import ADMIN_PREFIX
from crmsyncd.sandbox.hubspot import HubSpotSandbox
from crmsyncd.sandbox.hubspot.seed import as_hubspot, prepare_demo_portal
from crmsyncd.sandbox.hubspot.usage import request_kind, request_kinds

if TYPE_CHECKING:
    from bench.scenarios import Bench

LIST_LIMIT = 100  # the archived list's largest page


class BenchHubSpot(HubSpotSandbox):
    """The HubSpot sandbox, also counting its answers by status and the inputs of each batch call
    it answered (2xx or 207), by kind: the batch sizes crmsyncd achieved."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statuses: Counter[int] = Counter()
        self.batches: dict[str, list[int]] = {}

    def reset_counts(self) -> None:
        super().reset_counts()
        self.statuses.clear()
        self.batches.clear()

    def build_app(self) -> web.Application:
        app = super().build_app()

        async def count(request: web.Request, response: web.StreamResponse) -> None:
            if request.path.startswith(ADMIN_PREFIX):
                return
            self.statuses[response.status] += 1
            route = f"{request.method} {request.path}"
            kind = request_kind(route)
            if kind.startswith("batch ") and response.status < 300:
                # The handler has read the body already (aiohttp keeps it): count its inputs.
                try:
                    inputs = orjson.loads(await request.read()).get("inputs") or []
                except (orjson.JSONDecodeError, AttributeError):
                    return
                self.batches.setdefault(kind, []).append(len(inputs))

        app.on_response_prepare.append(count)
        return app


def minimum(read: int, created: int, updated: int) -> dict[str, int]:
    """The fewest HubSpot requests that read `read` records and write these (module docstring)."""
    return {
        "search": math.ceil(read / SEARCH_LIMIT),
        "archived list": 1,
        "batch create": math.ceil(created / BATCH_LIMIT),
        "batch update": math.ceil(updated / BATCH_LIMIT),
        "account": 1,
    }


async def hubspot_initial(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    sets = contact_sets(plan.hubspot_per_side, plan.hubspot_shared, seed=20260501)
    objects = as_hubspot({"contacts": sets.crm})["contacts"]
    label = "hubspot-initial"
    database = await bench.pg.new_database(label)
    bench.say(
        f"  {label}: {plan.hubspot_per_side:,} contacts per side, {plan.hubspot_shared:,} shared, "
        "HubSpot sandbox at HubSpot's limits ..."
    )
    eco = BenchEcosire(rate_limit_per_minute=None, latency=plan.latency)
    eco.seed("contacts", sets.ecosire)
    hub = BenchHubSpot(latency=plan.latency)  # its defaults: HubSpot's own limits and index lag
    async with eco, hub:
        await prepare_demo_portal(hub, {"contacts": objects})
        reset_counts(eco, hub)
        started = time.monotonic()
        run = await bench.daemon_pass(label, database, eco, hub, crm_kind="hubspot")
        seconds = time.monotonic() - started
        live = [r for r in hub.records("contacts") if not r.get("archived")]
        emails = {str(r["properties"].get("email")).casefold() for r in live}
        eco_emails = {str(r.get("email")).casefold() for r in eco.records("contacts")}
        refused = {str(policy): n for policy, n in hub.limiter.refused.items()}
        batches = {kind: list(sizes) for kind, sizes in hub.batches.items()}
        limits = hub.limits
    counts = run["counts"]
    created = int(counts.get("created", {}).get("crm", 0))
    updated = int(counts.get("updated", {}).get("crm", 0))
    kinds = request_kinds(run["api"]["crm"]["by_route"])
    least = minimum(len(objects), created, updated)
    spent = sum(kinds.values())
    floor = sum(least.values())
    synced = run["linked_total"]
    out: dict[str, Any] = {
        "per_side": plan.hubspot_per_side,
        "shared": plan.hubspot_shared,
        "distinct": sets.distinct,
        "latency_ms": plan.latency * 1000,
        "limits": {
            "ten_second": limits.ten_second,
            "search_per_second": limits.search_per_second,
            "daily": limits.daily,
        },
        "search_lag": hub.search_lag,
        "hubspot_at_start": len(objects),
        "created": created,
        "updated": updated,
        "kinds": dict(kinds),
        "minimum": least,
        "requests": spent,
        "minimum_requests": floor,
        "ratio": spent / floor if floor else float("nan"),
        "synced": synced,
        "per_synced": spent / synced if synced else float("nan"),
        "minimum_per_synced": floor / synced if synced else float("nan"),
        "records_per_minute": 60 * synced / run["wall_seconds"] if run["wall_seconds"] else float("nan"),
        "rate_limited": run["api"]["crm"]["rate_limited"],
        # How much of the 10-second limit the run used, over its whole wall time.
        "limit_share": (spent - kinds.get("search", 0)) / (limits.ten_second * run["wall_seconds"] / 10)
        if limits.ten_second and run["wall_seconds"]
        else float("nan"),
        "refused_by_policy": refused,
        "batches": {kind: _sizes(sizes) for kind, sizes in batches.items()},
        "end_state": {
            "hubspot_contacts": len(live),
            "ecosire_contacts": len(eco_emails),
            "emails_on_both": len(emails & eco_emails),
        },
        "bench_seconds": seconds,
        "run": run,
    }
    bench.say(
        f"    {run['wall_seconds']:.1f} s, {synced:,} synced ({out['records_per_minute']:,.0f}/min); "
        f"HubSpot {spent} requests vs minimum {floor} ({out['ratio']:.3f}x), 429s {out['rate_limited']}"
    )
    return out


def _sizes(sizes: list[int]) -> dict[str, Any]:
    full = sum(1 for n in sizes if n >= BATCH_LIMIT)
    return {
        "calls": len(sizes),
        "inputs": sum(sizes),
        "full": full,
        "mean": sum(sizes) / len(sizes) if sizes else 0.0,
        "smallest": min(sizes, default=0),
        "histogram": _histogram(sizes),
    }


def _histogram(sizes: list[int]) -> dict[str, int]:
    """Calls by size bucket: 1-9, 10-49, 50-99, 100."""
    buckets = {"1-9": 0, "10-49": 0, "50-99": 0, "100": 0}
    for n in sizes:
        key = "1-9" if n < 10 else "10-49" if n < 50 else "50-99" if n < BATCH_LIMIT else "100"
        buckets[key] += 1
    return buckets
