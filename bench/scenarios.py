"""The measured scenarios. Each returns plain data (dicts of numbers) for the report."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.dataset import ContactSets, changed_name, contact_sets, one_sided
from bench.harness import (
    ApiUse,
    BenchCrm,
    BenchEcosire,
    Postgres,
    ProcessResult,
    SourceSnapshot,
    api_use,
    clean_env,
    daemon_argv,
    daemon_env,
    reset_counts,
    run_measured,
    sandboxes,
)
from crmsyncd.sandbox import SandboxServer

# "No rate limit" for the daemon's own pacer against a server that sends no rate-limit headers
# (unset, ECOSIRE_RATE_LIMIT would fall back to the documented 60 a minute).
UNLIMITED = 1_000_000_000
TIMELINE_BUCKET = 10.0

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Plan:
    """The scale of one bench run."""

    mode: str
    initial_per_side: int
    initial_shared: int
    latency: float
    crmsyncd_runs: int  # initial-sync runs with the first worker setting (the default)
    baseline_runs: int
    workers: tuple[int, ...]  # CRMSYNCD_WORKERS settings measured in the initial sync
    other_worker_runs: int  # runs with each further worker setting
    quiet_runs: int
    changed_per_side: int
    limited_per_side: int
    limited_shared: int
    rate_limit: int  # requests per minute on each server
    scale_counts: tuple[int, ...]
    # The HubSpot part (bench/hubspot.py): contacts per side, and how many of them on both.
    hubspot_per_side: int = 10_000
    hubspot_shared: int = 2_000


QUICK = Plan(
    mode="quick",
    initial_per_side=400,
    initial_shared=80,
    latency=0.020,
    crmsyncd_runs=1,
    baseline_runs=1,
    workers=(32, 8),
    other_worker_runs=1,
    quiet_runs=3,
    changed_per_side=100,
    limited_per_side=100,
    limited_shared=20,
    rate_limit=600,
    scale_counts=(5_000, 20_000),
    hubspot_per_side=1_000,
    hubspot_shared=200,
)

FULL = Plan(
    mode="full",
    initial_per_side=10_000,
    initial_shared=2_000,
    latency=0.020,
    crmsyncd_runs=3,
    baseline_runs=1,
    workers=(32, 8),
    other_worker_runs=1,
    quiet_runs=5,
    changed_per_side=100,
    limited_per_side=600,
    limited_shared=120,
    rate_limit=600,
    scale_counts=(10_000, 100_000, 1_000_000),
)


class Bench:
    def __init__(
        self, plan: Plan, pg: Postgres, logs: Path, say: Say, source: SourceSnapshot | None = None
    ) -> None:
        self.plan = plan
        self.pg = pg
        self.logs = logs
        self.say = say
        self.source = source
        self.ended = time.monotonic()  # when the last measured pass ended

    # ----- one crmsyncd pass / one baseline run, measured ----------------------------------

    async def daemon_pass(
        self,
        label: str,
        database: str,
        eco: BenchEcosire,
        crm: SandboxServer,
        *,
        proxied: bool = True,
        rate_limit: int | None = None,
        workers: int | None = None,
        crm_kind: str = "rest",
    ) -> dict[str, Any]:
        dsn = self.pg.proxied_dsn(database) if proxied else self.pg.direct_dsn(database)
        env = daemon_env(
            dsn,
            eco,
            crm,
            # A limited server advertises its limit in its headers, which set the pace: both
            # variables are left unset, as a user would. An unlimited one sends no headers.
            ecosire_rate_limit=None if rate_limit else UNLIMITED,
            crm_rate_limit=None,
            workers=workers,
            data_dir=self.logs / "unused-data-dir",
            source=self.source,
            crm_kind=crm_kind,
        )
        assert self.pg.proxy is not None
        before = await self.pg.table_writes(database)
        self.pg.proxy.reset()
        reset_counts(eco, crm)
        result = await run_measured(
            daemon_argv(),
            env,
            self.logs / f"{label}.log",
            postgres_pid=self.pg.pid,
            cwd=self.source.root if self.source else None,
        )
        wire = self.pg.proxy.counts.snapshot()
        written = _delta(before, await self.pg.table_writes(database))
        if result.exit_code != 0:
            raise RuntimeError(f"crmsyncd exited {result.exit_code}; see {result.log}")
        run = (await self.pg.query(database, "SELECT * FROM sync_run ORDER BY id DESC LIMIT 1"))[0]
        state = (
            await self.pg.query(
                database,
                "SELECT count(*) FILTER (WHERE ecosire_id IS NOT NULL AND crm_id IS NOT NULL) AS linked,"
                " count(*) FILTER (WHERE state = 'parked') AS parked FROM record_map",
            )
        )[0]
        counts = dict(run["counts"])
        return {
            "label": label,
            **_process(result),
            "pass_seconds": (run["finished_at"] - run["started_at"]).total_seconds(),
            "status": run["status"],
            "counts": counts,
            "writes": int(counts.get("writes", 0)),
            "linked_total": int(state["linked"]),
            "parked_total": int(state["parked"]),
            **_apis(api_use(eco), api_use(crm)),
            "db": {
                **(_wire(wire) if proxied else {}),
                "rows_written": sum(written.values()),
                "written": written,
            },
        }

    async def baseline_run(
        self, label: str, database: str, eco: BenchEcosire, crm: BenchCrm
    ) -> dict[str, Any]:
        env = clean_env(
            {
                "DATABASE_URL": self.pg.proxied_dsn(database),
                "ECOSIRE_API_URL": eco.url,
                "ECOSIRE_API_KEY": eco.api_key,
                "CRM_API_URL": crm.url,
                "CRM_API_KEY": crm.api_key,
            }
        )
        assert self.pg.proxy is not None
        before = await self.pg.table_writes(database)
        self.pg.proxy.reset()
        reset_counts(eco, crm)
        result = await run_measured(
            [sys.executable, "-m", "bench.baseline"],
            env,
            self.logs / f"{label}.log",
            postgres_pid=self.pg.pid,
        )
        wire = self.pg.proxy.counts.snapshot()
        written = _delta(before, await self.pg.table_writes(database))
        if result.exit_code != 0:
            raise RuntimeError(f"baseline exited {result.exit_code}; see {result.log}")
        state = (
            await self.pg.query(
                database,
                "SELECT (SELECT count(*) FROM crm_sync_map) AS linked,"
                " (SELECT count(*) FROM crm_sync_errors) AS errors",
            )
        )[0]
        return {
            "label": label,
            **_process(result),
            "linked_total": int(state["linked"]),
            "errors_total": int(state["errors"]),
            **_apis(api_use(eco), api_use(crm)),
            "db": {**_wire(wire), "rows_written": sum(written.values()), "written": written},
        }

    # ----- 2. initial sync, and 4. quiet pass on its result ---------------------------------

    @contextlib.asynccontextmanager
    async def _initial_rig(
        self, label: str, sets: ContactSets
    ) -> AsyncIterator[tuple[str, BenchEcosire, BenchCrm]]:
        database = await self.pg.new_database(label)
        async with sandboxes(
            latency=self.plan.latency, rate_limit=None, ecosire=[sets.ecosire], crm=[sets.crm]
        ) as (eco, crm):
            yield database, eco, crm

    async def initial_and_quiet(self) -> dict[str, Any]:
        plan = self.plan
        sets = contact_sets(plan.initial_per_side, plan.initial_shared)
        out: dict[str, Any] = {
            "per_side": plan.initial_per_side,
            "shared": plan.initial_shared,
            "distinct": sets.distinct,
            "latency_ms": plan.latency * 1000,
            "baseline": [],
            "crmsyncd": {},
        }
        for i in range(plan.baseline_runs):
            label = f"initial-baseline-{i + 1}"
            self.say(f"  {label}: the guide's loop over {sets.distinct} people ...")
            async with self._initial_rig(label, sets) as (database, eco, crm):
                run = await self.baseline_run(label, database, eco, crm)
                run["end_state"] = _end_state(eco, crm)
            out["baseline"].append(run)
            self.say(f"    {run['wall_seconds']:.1f} s, {run['linked_total']} linked")
        quiet: dict[str, Any] = {}
        for workers in plan.workers:
            runs: list[dict[str, Any]] = []
            repeats = plan.crmsyncd_runs if workers == plan.workers[0] else plan.other_worker_runs
            for i in range(repeats):
                label = f"initial-crmsyncd-w{workers}-{i + 1}"
                self.say(f"  {label} ...")
                async with self._initial_rig(label, sets) as (database, eco, crm):
                    run = await self.daemon_pass(label, database, eco, crm, workers=workers)
                    run["end_state"] = _end_state(eco, crm)
                    runs.append(run)
                    self.say(f"    {run['wall_seconds']:.1f} s, {run['linked_total']} linked")
                    if workers == plan.workers[0] and i == repeats - 1:
                        quiet = await self._quiet_and_changed(database, eco, crm)
            out["crmsyncd"][str(workers)] = runs
        out["quiet"] = quiet
        return out

    async def _quiet_and_changed(self, database: str, eco: BenchEcosire, crm: BenchCrm) -> dict[str, Any]:
        plan = self.plan
        out: dict[str, Any] = {"echo_passes": [], "quiet": [], "changed": None, "after_changed": []}
        # Passes until one writes nothing: the read-back of our own writes (echoes).
        for n in range(1, 4):
            self.say(f"  echo pass {n} (reads back the initial sync's writes) ...")
            run = await self.daemon_pass(f"echo-{n}", database, eco, crm)
            self.ended = time.monotonic()
            out["echo_passes"].append(run)
            if run["writes"] == 0:
                break
        # The daemon's passes are CRMSYNCD_SYNC_INTERVAL apart (300 s by default), never
        # back to back as these processes would otherwise be. That matters once: the first pass
        # to start more than CRMSYNCD_OVERLAP after a burst re-reads the burst's last overlap
        # seconds (a late commit could still have landed there) and settles that window; every
        # later pass reads one page. The bench leaves the overlap between passes, not 300 s.
        await _after_overlap(self.ended)
        settle = await self.daemon_pass("window", database, eco, crm)
        out["window_pass"] = settle
        self.ended = time.monotonic()
        for n in range(1, plan.quiet_runs + 1):
            await _after_overlap(self.ended)
            run = await self.daemon_pass(f"quiet-{n}", database, eco, crm)
            self.ended = time.monotonic()
            out["quiet"].append(run)
        self.say(f"  {plan.quiet_runs} quiet passes: {[r['requests'] for r in out['quiet']]} requests")
        # 100 records changed on each side, as users would: different records on the two sides.
        changed = plan.changed_per_side
        eco_ids = sorted(r["id"] for r in eco.records("contacts"))[:changed]
        crm_ids = sorted(r["id"] for r in crm.records("contacts"))[-changed:]
        for rid in eco_ids:
            record = eco.get_record("contacts", rid)
            assert record is not None
            eco.edit("contacts", rid, name=changed_name(str(record["name"])))
        for rid in crm_ids:
            record = crm.get_record("contacts", rid)
            assert record is not None
            crm.edit("contacts", rid, fullName=changed_name(str(record["fullName"])))
        self.say(f"  pass after {changed} changes on each side ...")
        run = await self.daemon_pass("changed", database, eco, crm)
        run["changed_records"] = 2 * changed
        out["changed"] = run
        for n in range(1, 3):
            after = await self.daemon_pass(f"after-changed-{n}", database, eco, crm)
            out["after_changed"].append(after)
            if after["writes"] == 0:
                break
        return out

    # ----- 3. rate-limited sync -------------------------------------------------------------

    async def rate_limited(self) -> dict[str, Any]:
        plan = self.plan
        sets = contact_sets(plan.limited_per_side, plan.limited_shared, seed=7)
        label = "rate-limited"
        database = await self.pg.new_database(label)
        self.say(
            f"  {label}: {plan.limited_per_side} per side, {plan.limited_shared} shared, "
            f"{plan.rate_limit}/min on each server ..."
        )
        async with sandboxes(
            latency=plan.latency,
            rate_limit=plan.rate_limit,
            ecosire=[sets.ecosire],
            crm=[sets.crm],
            timeline=True,
        ) as (eco, crm):
            run = await self.daemon_pass(label, database, eco, crm, rate_limit=plan.rate_limit)
            run["end_state"] = _end_state(eco, crm)
            run["timeline"] = _timeline(eco, crm, TIMELINE_BUCKET)
        self.say(f"    {run['pass_seconds']:.1f} s pass, 429s: {run['rate_limited']}")
        return {
            "per_side": plan.limited_per_side,
            "shared": plan.limited_shared,
            "distinct": sets.distinct,
            "rate_limit": plan.rate_limit,
            "latency_ms": plan.latency * 1000,
            "run": run,
        }

    # ----- 3b. pace set by the server's rate-limit headers ----------------------------------

    async def paced_by_headers(self) -> dict[str, Any]:
        """ECOSIRE advertising 600 requests a minute, ECOSIRE_RATE_LIMIT unset: how much of the
        advertised limit the daemon spends on useful requests, and how many answers are 429.

        Only CRM contacts (unlimited CRM, no headers), so every one costs an ECOSIRE create and
        ECOSIRE is the bottleneck, with work for two whole windows and a little more. The share is
        counted by the sandbox's own limiter over its whole windows (the last, where the work ran
        out, is left out). The quick run shortens the window to 30 s, the limit scaled with it."""
        window = 60.0 if self.plan.mode == "full" else 30.0
        limit = round(600 * window / 60)
        records = 2 * limit + limit // 10
        sets = contact_sets(records, 0, seed=11)
        label = "paced-by-headers"
        database = await self.pg.new_database(label)
        self.say(
            f"  {label}: {records} CRM contacts to create on an ECOSIRE allowing {limit} per "
            f"{window:.0f} s, ECOSIRE_RATE_LIMIT unset ..."
        )
        eco = BenchEcosire(rate_limit_per_minute=limit, rate_window=window, latency=self.plan.latency)
        crm = BenchCrm(rate_limit_per_minute=None, latency=self.plan.latency)
        crm.seed("contacts", sets.crm)
        async with eco, crm:
            env = daemon_env(
                self.pg.direct_dsn(database),
                eco,
                crm,
                ecosire_rate_limit=None,
                crm_rate_limit=None,
                data_dir=self.logs / "unused-data-dir",
                source=self.source,
            )
            result = await run_measured(
                daemon_argv(),
                env,
                self.logs / f"{label}.log",
                postgres_pid=self.pg.pid,
                cwd=self.source.root if self.source else None,
            )
            if result.exit_code != 0:
                raise RuntimeError(f"crmsyncd exited {result.exit_code}; see {result.log}")
            use = api_use(eco)
            windows = eco.window_counts()
            created = len(eco.records("contacts"))
        complete = windows[:-1]
        # Useful: answered 2xx. Every failure is charged to the whole windows, wherever it fell.
        useful = sum(complete) - use.rate_limited - use.errors
        out: dict[str, Any] = {
            "limit": limit,
            "window_seconds": window,
            "records": records,
            "created": created,
            "windows": windows,
            "useful_share": useful / (limit * len(complete)) if complete else float("nan"),
            "requests": use.requests,
            "rate_limited": use.rate_limited,
            "limited_share": use.rate_limited / use.requests if use.requests else float("nan"),
            "errors": use.errors,
            "wall_seconds": result.wall_seconds,
        }
        self.say(
            f"    windows {windows}: {100 * out['useful_share']:.1f}% of the limit useful, "
            f"{use.rate_limited} 429s of {use.requests}"
        )
        return out

    # ----- 5. scale and memory --------------------------------------------------------------

    async def scale(self) -> list[dict[str, Any]]:
        points = []
        for count in self.plan.scale_counts:
            label = f"scale-{count}"
            database = await self.pg.new_database(label)
            self.say(f"  {label}: seeding {count:,} ECOSIRE contacts ...")
            seeded = time.monotonic()
            async with sandboxes(latency=0.0, rate_limit=None, ecosire=one_sided(count)) as (eco, crm):
                seed_seconds = time.monotonic() - seeded
                self.say(f"    seeded in {seed_seconds:.1f} s; syncing ...")
                run = await self.daemon_pass(label, database, eco, crm, proxied=False)
                run["records"] = count
                run["seed_seconds"] = seed_seconds
                run["end_state"] = _end_state(eco, crm, full=False)
            points.append(run)
            self.say(
                f"    {run['wall_seconds']:.1f} s, {count / run['wall_seconds']:.0f} records/s, "
                f"peak RSS {run['peak_rss_bytes'] / 2**20:.0f} MiB"
            )
        return points


# ----- helpers ----------------------------------------------------------------------------------


def _process(result: ProcessResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "wall_seconds": result.wall_seconds,
        "cpu_seconds": result.cpu_seconds,
        "bench_cpu_seconds": result.bench_cpu_seconds,
        "postgres_cpu_seconds": result.postgres_cpu_seconds,
        "peak_rss_bytes": result.peak_rss_bytes,
        "rss_samples": [
            (round(t, 1), m) for t, m in result.rss_samples[:: max(1, len(result.rss_samples) // 200)]
        ],
    }


def _apis(eco: ApiUse, crm: ApiUse) -> dict[str, Any]:
    return {
        "api": {"ecosire": eco.as_dict(), "crm": crm.as_dict()},
        "requests": eco.requests + crm.requests,
        "rate_limited": eco.rate_limited + crm.rate_limited,
    }


def _wire(wire: Any) -> dict[str, Any]:
    return {
        "round_trips": wire.round_trips,
        "connections": wire.connections,
        "by_statement": dict(sorted(wire.by_statement.items(), key=lambda kv: -kv[1])),
        "seconds_by_statement": {
            k: round(v, 3) for k, v in sorted(wire.seconds_by_statement.items(), key=lambda kv: -kv[1])
        },
    }


def _timeline(eco: BenchEcosire, crm: BenchCrm, bucket: float) -> dict[str, Any]:
    """Answers per server per `bucket` seconds, from the first request of the run."""
    times = [t for server in (eco, crm) for t, _ in server.timeline or []]
    if not times:
        return {}
    start = min(times)
    out: dict[str, Any] = {"bucket_seconds": bucket}
    size = int((max(times) - start) // bucket) + 1
    for name, server in (("ecosire", eco), ("crm", crm)):
        answered, limited = [0] * size, [0] * size
        for t, status in server.timeline or []:
            i = int((t - start) // bucket)
            answered[i] += 1
            if status == 429:
                limited[i] += 1
        out[name] = answered
        out[f"{name}_429"] = limited
    return out


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: n - before.get(t, 0) for t, n in sorted(after.items()) if n - before.get(t, 0)}


def _end_state(eco: BenchEcosire, crm: BenchCrm, *, full: bool = True) -> dict[str, int]:
    from crmsyncd.sandbox.schema import unique_key

    state = {"ecosire_contacts": len(eco.records("contacts")), "crm_contacts": len(crm.records("contacts"))}
    if full:
        eco_keys = {unique_key(r.get("email")) for r in eco.records("contacts")}
        crm_keys = {unique_key(r.get("emailAddress")) for r in crm.records("contacts")}
        state["emails_on_both"] = len(eco_keys & crm_keys)
    return state


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# crmsyncd's default CRMSYNCD_OVERLAP, in seconds; the bench does not change it.
OVERLAP = 2.0


async def _after_overlap(ended: float) -> None:
    """Wait until the overlap has passed since `ended`, as the daemon's interval would."""
    await asyncio.sleep(max(0.0, OVERLAP - (time.monotonic() - ended)))
