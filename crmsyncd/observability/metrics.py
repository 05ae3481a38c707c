"""Prometheus metrics, in a registry of our own (not the library's global one).

Two kinds. What passes did is counted in this process as each pass ends (`record_pass`): passes
by kind and status, records by entity, side and outcome, writes, conflicts by rule, the pass
duration histogram; counters start at zero with the process, as Prometheus expects. What the
state is (open error rows, queue depth, cursor lag, lock holders) and the connectors' request
counters are read at each scrape from where they live (the stores, RequestStats), never kept
in a second copy here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crmsyncd.domain.records import Side
from crmsyncd.engine.passes import PassReport
from crmsyncd.store.db import DATABASE_ERRORS
from crmsyncd.store.locks import lock_holders

if TYPE_CHECKING:
    from crmsyncd.app import App

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds a scrape waits for the database: Prometheus' own scrape timeout is 10 s by default.
SCRAPE_TIMEOUT = 3.0
_PREFIX = "crmsyncd"
# Seconds: a quiet pass takes well under a second, a first sync of a large account an hour.
_DURATION_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Outcomes counted per side (the side read, or the side written).
_SIDED = ("seen", "created", "updated", "reverted", "deleted", "deleted_seen")
_REQUEST_KINDS = ("lists", "reads", "creates", "updates", "deletes", "lookups")


@dataclass(slots=True)
class _State:
    """What one scrape read: None where the database did not answer."""

    database_up: bool = False
    error_rows: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    pending_pairs: list[tuple[str, int]] = field(default_factory=list)
    lags: list[tuple[str, str, float]] = field(default_factory=list)
    locks: dict[str, int] = field(default_factory=dict)


class _Scraped(Collector):
    """The families read at scrape time: set `state` and `app`, then generate at once."""

    def __init__(self) -> None:
        self.state = _State()
        self.app: App | None = None

    def collect(self) -> Iterable[Metric]:
        yield from self._requests()
        state = self.state
        up = GaugeMetricFamily(f"{_PREFIX}_database_up", "1 if the state database answered this scrape")
        up.add_metric([], 1.0 if state.database_up else 0.0)
        yield up
        if not state.database_up:
            return
        rows = GaugeMetricFamily(
            f"{_PREFIX}_error_rows",
            "Open rows of the retry queue (pending: parked for a retry; dead: given up)",
            labels=["entity", "side", "status", "error_class"],
        )
        for entity, side, status, error_class, n in state.error_rows:
            rows.add_metric([entity, side, status, error_class], n)
        yield rows
        depth = GaugeMetricFamily(
            f"{_PREFIX}_queue_depth",
            "Work waiting: pairs with a pending write, and retry-queue rows pending",
            labels=["entity", "queue"],
        )
        retry: dict[str, int] = {}
        for entity, _, status, _, n in state.error_rows:
            if status == "pending":
                retry[entity] = retry.get(entity, 0) + n
        for entity, n in state.pending_pairs:
            depth.add_metric([entity, "pending_pairs"], n)
        for entity, n in retry.items():
            depth.add_metric([entity, "retry"], n)
        yield depth
        lag = GaugeMetricFamily(
            f"{_PREFIX}_cursor_lag_seconds",
            "Seconds from the newest change read (the cursor's stamp) to now, per entity and side",
            labels=["entity", "side"],
        )
        for entity, side, seconds in state.lags:
            lag.add_metric([entity, side], seconds)
        yield lag
        held = GaugeMetricFamily(
            f"{_PREFIX}_entity_lock_held",
            "1 while a crmsyncd session holds the entity's lock",
            labels=["entity"],
        )
        assert self.app is not None
        for spec in self.app.entities:
            held.add_metric([spec.name], 1.0 if spec.name in state.locks else 0.0)
        yield held
        holders = GaugeMetricFamily(
            f"{_PREFIX}_lock_holders", "Database sessions (replicas) holding an entity lock now"
        )
        holders.add_metric([], len(set(state.locks.values())))
        yield holders

    def _requests(self) -> Iterator[Metric]:
        if self.app is None:
            return
        requests = CounterMetricFamily(
            f"{_PREFIX}_requests", "Requests made to each API, by kind", labels=["api", "kind"]
        )
        responses = CounterMetricFamily(
            f"{_PREFIX}_responses", "Answers from each API, by HTTP status", labels=["api", "status"]
        )
        waits = CounterMetricFamily(
            f"{_PREFIX}_rate_limit_waits", "Rate-limited answers (429) waited out, per API", labels=["api"]
        )
        retries = CounterMetricFamily(f"{_PREFIX}_request_retries", "Requests tried again", labels=["api"])
        for side, connector in self.app.connectors.items():
            stats = connector.stats
            for kind in _REQUEST_KINDS:
                requests.add_metric([side.value, kind], getattr(stats, kind))
            for status, n in sorted(stats.by_status.items()):
                responses.add_metric([side.value, str(status)], n)
            waits.add_metric([side.value], stats.rate_limited)
            retries.add_metric([side.value], stats.retried)
        yield from (requests, responses, waits, retries)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.passes = Counter(f"{_PREFIX}_passes", "Passes ended", ["kind", "status"], registry=reg)
        self.records = Counter(
            f"{_PREFIX}_records",
            "Records by outcome: seen (read from side), created/updated/reverted/deleted (written to"
            " side), deleted_seen (deletions noticed on side)",
            ["entity", "side", "outcome"],
            registry=reg,
        )
        self.merged = Counter(
            f"{_PREFIX}_records_merged",
            "Records by merge outcome: echoes, staged, linked, unchanged, retried_ok",
            ["entity", "outcome"],
            registry=reg,
        )
        self.parked = Counter(
            f"{_PREFIX}_records_parked",
            "Records parked, by error class",
            ["entity", "error_class"],
            registry=reg,
        )
        self.writes = Counter(
            f"{_PREFIX}_writes",
            "Writes (creates, updates, deletes) to each side",
            ["entity", "side"],
            registry=reg,
        )
        self.conflicts = Counter(
            f"{_PREFIX}_conflicts",
            "Fields changed on both sides, settled by their rule",
            ["entity", "field", "rule", "winner"],
            registry=reg,
        )
        self.duration = Histogram(
            f"{_PREFIX}_pass_duration_seconds",
            "Pass duration",
            ["kind"],
            buckets=_DURATION_BUCKETS,
            registry=reg,
        )
        self.last_end = Gauge(
            f"{_PREFIX}_last_pass_end_time_seconds",
            "Unix time the last pass of a kind ended",
            ["kind"],
            registry=reg,
        )
        self._scraped = _Scraped()
        reg.register(self._scraped)

    def record_pass(self, report: PassReport, ended_at: float) -> None:
        kind = report.kind.value
        self.passes.labels(kind, report.status.value).inc()
        self.duration.labels(kind).observe(report.seconds)
        self.last_end.labels(kind).set(ended_at)
        for entity, counts in report.entities.items():
            for outcome in _SIDED:
                for side, n in getattr(counts, outcome).items():
                    self.records.labels(entity, side, outcome).inc(n)
            for side in Side:
                n = counts.created[side.value] + counts.updated[side.value] + counts.deleted[side.value]
                self.writes.labels(entity, side.value).inc(n)
            for outcome in ("echoes", "staged", "linked", "unchanged", "retried_ok"):
                self.merged.labels(entity, outcome).inc(getattr(counts, outcome))
            for error_class, n in counts.parked.items():
                self.parked.labels(entity, str(error_class)).inc(n)
            for key, n in counts.conflicts.items():
                name, rule, winner = [*key.split(":", 2), "", ""][:3]
                self.conflicts.labels(entity, name, rule, winner).inc(n)

    async def render(self, app: App) -> bytes:
        """The exposition; the state's families are left out (and database_up is 0) when the
        database does not answer within SCRAPE_TIMEOUT."""
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                state = await _read_state(app)
        except DATABASE_ERRORS:  # TimeoutError included
            state = _State()
        # No await from here on: this scrape's state is the one generated.
        self._scraped.state, self._scraped.app = state, app
        return generate_latest(self.registry)


async def _read_state(app: App) -> _State:
    engine = app.engine
    return _State(
        database_up=True,
        error_rows=[
            (r["entity"], r["side"], r["status"], r["error_class"], r["n"])
            for r in await engine.errors.open_counts()
        ],
        pending_pairs=[(r["entity"], r["pending"]) for r in await engine.pairs.counts()],
        lags=[(r["entity"], r["side"], r["lag"]) for r in await engine.cursors.lags()],
        locks=await lock_holders(app.pool, [e.name for e in app.entities]),
    )
