"""`crmsyncd run`: the sync job at start and every interval, the retry job on its own interval,
the history older than CRMSYNCD_HISTORY_DAYS pruned at start and daily, and a clean stop on
SIGTERM/SIGINT.

A stop lets the work in flight end well: pagers stop after the page they are staging (its cursor
is saved with it), workers take no new record and finish the one they hold (a remote write is
answered, or parked), the buffered bookkeeping is flushed, and the process exits 0. It is bounded:
a job still running `CRMSYNCD_HTTP_TIMEOUT + STOP_MARGIN` seconds after the signal (a worker
waiting out a long rate-limit block, say) is cancelled, which is no worse than a kill -9 and as
safe (a claimed record is looked up before it is created again); cancelled jobs get STOP_MARGIN
more to unwind, and the HTTP server SHUTDOWN_TIMEOUT: the process exits within
`CRMSYNCD_HTTP_TIMEOUT + 2 * STOP_MARGIN + SHUTDOWN_TIMEOUT` seconds (41 at the defaults), the
bound the README gives beside Kubernetes' terminationGracePeriodSeconds (60 in deploy/). A
replica merely waiting to retry an entity another holds has nothing in flight and stops at once.
A second signal cancels at once.
Refused credentials stop the daemon with exit code 1; any other failed pass is logged and the
next interval tries again.

Replicas sharing the database share the work through each entity's advisory lock. A pass that
finds an entity locked by another replica skips it and tries that entity again after a short
jittered delay (`busy_retry_delay`), and again while it stays locked (only a look at pg_locks
then, no pass), rather than one interval later: when the holder ends its pass, or dies (its lock
ends with its database session), another replica takes the entity within seconds."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from crmsyncd.app import App, open_app
from crmsyncd.config import Settings
from crmsyncd.engine.passes import PassReport
from crmsyncd.observability.http import DaemonState, serve_http
from crmsyncd.observability.logging import get_logger
from crmsyncd.observability.metrics import Metrics
from crmsyncd.store.db import DATABASE_ERRORS, describe_database_error
from crmsyncd.store.locks import lock_holders
from crmsyncd.store.runs import prune_history

log = get_logger()

# Seconds a stop waits beyond one HTTP timeout for jobs to finish, and then for cancelled jobs to
# unwind (their bookkeeping flush included).
STOP_MARGIN = 5.0
# Seconds between prunings of the history (passes, resolved error rows): daily is plenty for a
# retention counted in days, and each costs one index-backed statement per table.
PRUNE_INTERVAL = 86400.0
# The longest derived wait before an entity found locked by another replica is tried again: a
# quarter of the job's interval, at most this (CRMSYNCD_BUSY_RETRY sets it instead).
BUSY_RETRY_CAP = 5.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stopper:
    """The stop request, the jobs running, and what a signal does to them."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.signals = 0
        self.fatal: list[str] = []
        self.app: App | None = None
        self.jobs: set[asyncio.Task[Any]] = set()
        self.at = 0.0
        self.health = DaemonState()  # what the HTTP server's probes read

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        first = self.signals == 1
        log.info("stop_requested", signal=signal.Signals(signum).name, again=not first)
        if first:
            self.at = time.monotonic()
        self.stop()
        if not first:
            for task in self.jobs:  # asked twice: do not wait for the work in flight
                task.cancel()

    def stop(self) -> None:
        self.health.stopping = True  # not ready from now on
        if self.app is not None:
            self.app.engine.stopping.set()
        self.requested.set()

    async def drain(self, grace: float) -> bool:
        """Wait for running jobs; cancel those still running after `grace`. True if any was."""
        await asyncio.sleep(0)  # a job the scheduler has just launched registers, or returns
        pending = {task for task in self.jobs if not task.done()}
        if not pending:
            return False
        _, pending = await asyncio.wait(pending, timeout=grace)
        if not pending:
            return False
        log.warning(
            "stop_grace_exceeded",
            seconds=grace,
            jobs=len(pending),
            detail="cancelling: claimed records are looked up before they are created again",
        )
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=STOP_MARGIN)
        return True


async def run_daemon(settings: Settings) -> int:
    stopper = _Stopper()
    loop = asyncio.get_running_loop()
    # Handlers first: a signal during start-up (the embedded database, migrations) is honoured
    # as soon as the app is open, instead of killing the process half-way.
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stopper.on_signal, signum)
    metrics = Metrics()
    try:
        # The HTTP server first: a port in use stops the start before the database is opened,
        # and the probes answer (alive, not ready) while it opens and migrates.
        async with serve_http(settings, stopper.health, metrics), open_app(settings) as app:
            stopper.app = stopper.health.app = app
            if stopper.requested.is_set():
                stopper.stop()
                log.info("daemon_stopped", reason="signal", seconds=0.0, cancelled=False)
                return 0
            return await _serve(app, settings, stopper, metrics)
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


def busy_retry_delay(settings: Settings, interval: float) -> float:
    """Seconds until an entity found locked is tried again: CRMSYNCD_BUSY_RETRY, or a quarter of
    the job's interval up to BUSY_RETRY_CAP; each wait drawn between half and all of it, so that
    replicas waiting for the same entity do not try it in step."""
    base = settings.busy_retry if settings.busy_retry is not None else min(BUSY_RETRY_CAP, interval / 4)
    return base * random.uniform(0.5, 1.0)


async def _serve(app: App, settings: Settings, stopper: _Stopper, metrics: Metrics) -> int:
    intervals = {
        "sync": settings.sync_interval,
        "retry": settings.retry_interval,
        "reconcile": settings.reconcile_interval,
    }

    def retry_busy(job: str, busy: list[str]) -> None:
        """The job again, for these entities only, soon (see the module's docstring)."""
        if stopper.requested.is_set():
            return
        delay = busy_retry_delay(settings, intervals[job])
        scheduler.add_job(
            guarded,
            "date",
            run_date=datetime.now(UTC) + timedelta(seconds=delay),
            args=[job, busy],
            id=f"{job}-busy",
            replace_existing=True,
            misfire_grace_time=None,
        )
        log.info("entity_busy_retry", job=job, entities=busy, seconds=round(delay, 3))

    async def guarded(job: str, only: list[str] | None = None) -> None:
        if stopper.requested.is_set():
            return
        task = asyncio.current_task()
        assert task is not None
        stopper.jobs.add(task)
        try:
            if only is not None:
                # Still all held? Then only wait again: no pass, no history row, no log line.
                held = await lock_holders(app.pool, only)
                if all(name in held for name in only):
                    retry_busy(job, only)
                    return
            report = await _job(app, job, only)
        except asyncio.CancelledError:
            log.warning("job_cancelled", job=job)
            return
        except DATABASE_ERRORS as exc:
            # The state database is away (restarting, unreachable): say so plainly; the next
            # interval tries again and the pool reconnects by itself.
            log.error(
                "database_unavailable",
                job=job,
                error=describe_database_error(exc),
            )
            return
        except Exception as exc:  # a job must never take the scheduler down with it
            log.exception("job_crashed", job=job, error=str(exc))
            return
        finally:
            stopper.jobs.discard(task)
        if report is not None:
            metrics.record_pass(report, time.time())
            if report.busy:
                retry_busy(job, report.busy)
        if report is not None and report.status == "failed":
            # Refused credentials will not fix themselves: stop and say so. Any other trouble
            # (an API down past its retries, the database away) waits for the next interval.
            log.error("job_failed", job=job, error=report.error)
            stopper.fatal.append(report.error or job)
            stopper.stop()

    scheduler = AsyncIOScheduler(timezone=UTC)
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(
        guarded,
        "interval",
        args=["sync"],
        seconds=settings.sync_interval,
        next_run_time=datetime.now(UTC),
        id="sync",
        **common,
    )
    scheduler.add_job(
        guarded, "interval", args=["retry"], seconds=settings.retry_interval, id="retry", **common
    )
    # At start as well, so that a daemon restarted more often than daily still prunes.
    scheduler.add_job(
        guarded,
        "interval",
        args=["prune"],
        seconds=PRUNE_INTERVAL,
        next_run_time=datetime.now(UTC),
        id="prune",
        **common,
    )
    if settings.reconcile_interval > 0:  # 0 turns the full listings off
        scheduler.add_job(
            guarded,
            "interval",
            args=["reconcile"],
            seconds=settings.reconcile_interval,
            id="reconcile",
            **common,
        )
    scheduler.start()
    stopper.health.scheduler = scheduler
    log.info(
        "daemon_started",
        entities=[e.name for e in app.entities],
        sync_interval=settings.sync_interval,
        retry_interval=settings.retry_interval,
        prune_interval=PRUNE_INTERVAL,
        history_days=settings.history_days,
    )
    await stopper.requested.wait()
    # Paused, not shut down: APScheduler's shutdown cancels the coroutine jobs still running,
    # which would cut the pass short in the middle of its writes. It goes once they are done.
    scheduler.pause()
    started = stopper.at or time.monotonic()
    cancelled = await stopper.drain(settings.http_timeout + STOP_MARGIN)
    scheduler.shutdown(wait=False)
    log.info(
        "daemon_stopped",
        reason="fatal error" if stopper.fatal else "signal",
        seconds=round(time.monotonic() - started, 3),
        cancelled=cancelled,
    )
    return 1 if stopper.fatal else 0


async def _job(app: App, job: str, only: list[str] | None = None) -> PassReport | None:
    if job == "prune":  # housekeeping, not a pass: no report
        pruned = await prune_history(app.pool, app.settings.history_days)
        log.info("history_pruned", days=pruned.days, runs=pruned.runs, errors=pruned.errors)
        return None
    # All the entities, or (a busy retry) those another replica held, in their order.
    entities = [e for e in app.entities if only is None or e.name in only]
    if job == "sync":
        return await app.engine.sync_pass(entities)
    if job == "reconcile":
        return await app.engine.reconcile_pass(entities)
    return await app.engine.retry_pass(entities)
