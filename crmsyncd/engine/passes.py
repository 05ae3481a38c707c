"""A pass's frame, shared by the sync, retry and reconcile jobs: run history, one lock per entity
across every daemon sharing the database, the outcome, and the summary line. The pass's run id and
job (and, inside, the entity) are bound to every log line written meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from structlog.contextvars import bound_contextvars

from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import Side
from crmsyncd.engine.apply import AuthFailure, DeleteGuardTripped, PassStopped, pass_stopper
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.live import LivePass
from crmsyncd.observability.logging import get_logger
from crmsyncd.observability.progress import progress_lines
from crmsyncd.store.db import DATABASE_ERRORS, describe_database_error
from crmsyncd.store.locks import entity_lock

log = get_logger()


class PassKind(StrEnum):
    SYNC = "sync"
    RETRY = "retry"
    RECONCILE = "reconcile"
    RESYNC = "resync"  # both sides re-read in full and merged anew (engine/backfill.py)


class PassStatus(StrEnum):
    OK = "ok"
    PARTIAL = "partial"  # an entity could not be read or written now; the others went on
    BLOCKED = "blocked"  # the delete guard stopped an entity
    FAILED = "failed"  # credentials were refused: retrying will not help
    ERROR = "error"  # the database went away, or a bug
    STOPPED = "stopped"  # a signal ended the pass early


@dataclass(slots=True)
class PassReport:
    run_id: int
    kind: PassKind
    status: PassStatus
    counts: PassCounts
    requests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    # The counts of each entity worked on, whose sum is `counts` (metrics by entity).
    entities: dict[str, PassCounts] = field(default_factory=dict)
    # Entities skipped because another replica held their lock: the daemon tries them again soon.
    busy: list[str] = field(default_factory=list)


# One job's work on one entity within a pass.
EntityJob = Callable[[EntitySpec, int, PassCounts], Awaitable[None]]


async def run_pass(
    ctx: EngineContext, kind: PassKind, entities: Sequence[EntitySpec], body: EntityJob
) -> PassReport:
    """Run `body` for each entity under its lock, and record and log what the pass did."""
    run_id = await ctx.runs.start(kind)
    with bound_contextvars(run=run_id, job=kind.value):
        live = ctx.live = LivePass(run_id, kind.value)
        # A pass longer than the interval logs a progress line at every interval.
        ticker = asyncio.create_task(progress_lines(live, ctx.settings.progress_interval))
        try:
            return await _run_entities(ctx, run_id, kind, entities, body, live)
        finally:
            ticker.cancel()
            ctx.live = None


async def _run_entities(
    ctx: EngineContext,
    run_id: int,
    kind: PassKind,
    entities: Sequence[EntitySpec],
    body: EntityJob,
    live: LivePass,
) -> PassReport:
    counts = PassCounts()
    before = {side: ctx.connectors[side].stats.total for side in Side}
    started = time.monotonic()
    report = PassReport(run_id, kind, PassStatus.OK, counts, entities=live.entities)
    problems: list[str] = []
    try:
        for entity in entities:
            if ctx.stopping.is_set():
                break
            try:
                async with entity_lock(ctx.pool, entity.name) as held:
                    if not held:
                        # Routine with several replicas (the daemon retries it soon): not a warning.
                        log.info(
                            "entity_busy",
                            entity=entity.name,
                            run=run_id,
                            detail="another crmsyncd holds this entity's lock; skipped",
                        )
                        report.busy.append(entity.name)
                        continue
                    with bound_contextvars(entity=entity.name):
                        # Its own counts, readable while it runs (engine/live.py).
                        entity_counts = live.begin(entity.name)
                        try:
                            await body(entity, run_id, entity_counts)
                        finally:
                            counts.add(entity_counts)
                            live.end()
            except DeleteGuardTripped as exc:
                report.status = PassStatus.BLOCKED
                problems.append(f"{entity.name}: {exc}")
                log.error("delete_guard_tripped", entity=entity.name, run=run_id, error=str(exc))
            except ConnectorError as exc:
                stop = pass_stopper(exc)
                if stop is not None:
                    raise stop from None
                # A side that cannot be read now (5xx beyond the retries, a garbled listing):
                # this entity waits for the next pass, its cursor untouched; the others go on.
                if report.status is PassStatus.OK:
                    report.status = PassStatus.PARTIAL
                problems.append(f"{entity.name}: {exc}")
                log.error("entity_failed", entity=entity.name, run=run_id, error=str(exc))
        if ctx.stopping.is_set():
            report.status = PassStatus.STOPPED
    except PassStopped as exc:
        report.status = PassStatus.FAILED
        problems.append(str(exc))
    except DATABASE_ERRORS as exc:  # the database went away: say so, keep the daemon up
        report.status = PassStatus.ERROR
        problems.append(describe_database_error(exc))
        log.error(f"{kind}_pass_error", run=run_id, error=problems[-1])
    except Exception as exc:  # a bug: say so with its traceback, keep the daemon up
        report.status = PassStatus.ERROR
        problems.append(f"{type(exc).__name__}: {exc}")
        log.exception(f"{kind}_pass_error", run=run_id, error=str(exc))
    finally:
        report.error = "; ".join(problems) or None
        report.seconds = time.monotonic() - started
        report.requests = {side.value: ctx.connectors[side].stats.total - before[side] for side in Side}
        try:
            await ctx.runs.finish(run_id, report.status, counts.as_dict(), report.requests, report.error)
        except DATABASE_ERRORS as exc:
            log.error("run_history_unsaved", run=run_id, error=describe_database_error(exc))
        log.info(
            f"{kind}_pass",
            run=run_id,
            status=report.status,
            seconds=round(report.seconds, 3),
            requests=report.requests,
            error=report.error,
            **counts.as_dict(),
        )
    return report


def is_auth_failure(exc: BaseException) -> bool:
    return isinstance(exc, AuthFailure) or (
        isinstance(exc, ConnectorError) and exc.outcome is Outcome.AUTH_FAILED
    )
