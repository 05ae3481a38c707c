"""The pass in flight, readable while it runs: its counts per entity (the same PassCounts objects
the pass is adding to, never a copy) and the figures every view of progress shows (the periodic
log line, the terminal bar of `sync --once`, the status page): records read and written per
entity and side, the total where the feed gives one, the rate and an ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from crmsyncd.domain.records import Side
from crmsyncd.engine.counts import PassCounts


@dataclass(frozen=True, slots=True)
class SideFigures:
    entity: str
    side: str
    read: int  # records this side's feed yielded so far
    total: int | None  # what the feed said it held when the read began, where it says
    written: int  # records created, updated or deleted on this side


@dataclass(frozen=True, slots=True)
class Progress:
    run_id: int
    kind: str
    entity: str | None  # the entity being worked on; None between entities
    started_at: datetime
    seconds: float
    sides: tuple[SideFigures, ...]
    read: int
    written: int
    rate: float  # records read and written a second, over the pass so far
    # Seconds until the entity in flight is read to the end of what its feeds announced, at the
    # pass's read rate; None while a side of it gives no total or nothing has been read yet.
    eta: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "run": self.run_id,
            "kind": self.kind,
            "entity": self.entity,
            "seconds": round(self.seconds, 1),
            "read": self.read,
            "written": self.written,
            "rate": round(self.rate, 1),
            "eta": None if self.eta is None else round(self.eta, 1),
            "sides": [
                {"entity": s.entity, "side": s.side, "read": s.read, "total": s.total, "written": s.written}
                for s in self.sides
            ],
        }


@dataclass(slots=True)
class LivePass:
    run_id: int
    kind: str
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Per entity, in the order begun; the pass adds each to its total when the entity ends.
    entities: dict[str, PassCounts] = field(default_factory=dict)
    current: str | None = None

    def begin(self, entity: str) -> PassCounts:
        counts = self.entities.setdefault(entity, PassCounts())
        self.current = entity
        return counts

    def end(self) -> None:
        self.current = None

    def progress(self, now: float | None = None) -> Progress:
        seconds = max((time.monotonic() if now is None else now) - self.started, 1e-9)
        sides = tuple(
            SideFigures(
                entity=name,
                side=side.value,
                read=counts.seen[side.value],
                total=counts.listed.get(side.value),
                written=counts.created[side.value] + counts.updated[side.value] + counts.deleted[side.value],
            )
            for name, counts in self.entities.items()
            for side in Side
        )
        read = sum(s.read for s in sides)
        written = sum(s.written for s in sides)
        return Progress(
            run_id=self.run_id,
            kind=self.kind,
            entity=self.current,
            started_at=self.started_at,
            seconds=seconds,
            sides=sides,
            read=read,
            written=written,
            rate=(read + written) / seconds,
            eta=self._eta(sides, read / seconds),
        )

    def _eta(self, sides: tuple[SideFigures, ...], read_rate: float) -> float | None:
        current = [s for s in sides if s.entity == self.current]
        if not current or read_rate <= 0 or any(s.total is None for s in current):
            return None
        left = sum(max((s.total or 0) - s.read, 0) for s in current)
        return left / read_rate
