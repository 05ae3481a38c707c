"""`crmsyncd run`: the sync job at start and every interval, the retry job on its own interval,
and a clean stop on SIGTERM/SIGINT that lets in-flight writes finish and saves cursors."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from crmsyncd.app import App, open_app
from crmsyncd.config import Settings
from crmsyncd.engine.sync import PassReport
from crmsyncd.observability.logging import get_logger

log = get_logger()


async def run_daemon(settings: Settings) -> int:
    async with open_app(settings) as app:
        stop = asyncio.Event()
        fatal: list[str] = []
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _request_stop, app, stop, signum)

        async def guarded(job: str) -> None:
            try:
                report = await _job(app, job)
            except Exception as exc:  # a job must never take the scheduler down with it
                log.exception("job_crashed", job=job, error=str(exc))
                return
            if report.status == "failed":
                # Refused credentials will not fix themselves: stop and say so.
                log.error("job_failed", job=job, error=report.error)
                fatal.append(report.error or job)
                stop.set()

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
        scheduler.start()
        log.info(
            "daemon_started",
            entities=[e.name for e in app.entities],
            sync_interval=settings.sync_interval,
            retry_interval=settings.retry_interval,
        )
        await stop.wait()
        scheduler.shutdown(wait=False)
        # Jobs already running finish their in-flight records (the engine's stopping flag is set).
        async with app.engine._busy:
            pass
        log.info("daemon_stopped", reason="fatal error" if fatal else "signal")
        return 1 if fatal else 0


def _request_stop(app: App, stop: asyncio.Event, signum: int) -> None:
    log.info("stop_requested", signal=signal.Signals(signum).name)
    app.engine.stopping.set()
    stop.set()


async def _job(app: App, job: str) -> PassReport:
    if job == "sync":
        return await app.engine.sync_pass(app.entities)
    return await app.engine.retry_pass(app.entities)
