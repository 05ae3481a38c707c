"""What every job of the engine shares: the database and its stores, both connectors, the
settings, and the stop signal. Each job (engine/sync.py, retry.py, reconcile.py) is a module of
functions over this context, so no job imports another's."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from crmsyncd.connectors.port import Connector
from crmsyncd.domain.records import Side
from crmsyncd.engine.live import LivePass
from crmsyncd.engine.stage import Stager
from crmsyncd.store.cursors import CursorStore
from crmsyncd.store.db import Pool
from crmsyncd.store.errors import Backoff, ErrorStore
from crmsyncd.store.links import LinkStore
from crmsyncd.store.pairs import PairStore
from crmsyncd.store.runs import RunStore
from crmsyncd.store.sweeps import SweepStore


@dataclass(frozen=True, slots=True)
class EngineSettings:
    workers: int = 32  # split evenly between the two target APIs
    queue_size: int = 200
    overlap: timedelta = timedelta(seconds=2)
    claim_batch: int = 100
    flush_size: int = 100
    flush_interval: float = 0.5
    delete_guard: float = 0.1  # the largest share of an entity one pass may delete
    reconcile_budget: int = 1000  # list requests per entity and side for one full listing
    progress_interval: float = 10.0  # seconds between a long pass's progress lines


class EngineContext:
    def __init__(
        self,
        pool: Pool,
        connectors: Mapping[Side, Connector],
        settings: EngineSettings,
        backoff: Backoff,
    ) -> None:
        self.pool = pool
        self.connectors = connectors
        self.settings = settings
        self.pairs = PairStore(pool)
        self.links = LinkStore(pool)
        self.sweeps = SweepStore(pool)
        self.cursors = CursorStore(pool)
        self.errors = ErrorStore(pool, backoff)
        self.runs = RunStore(pool)
        self.stager = Stager(pool, self.pairs, self.cursors, self.errors)
        # Set by a signal: pagers stop after their page, workers after their record.
        self.stopping = asyncio.Event()
        # The pass in flight (engine/live.py), read by the progress line, bar and status page.
        self.live: LivePass | None = None
