"""In-memory collections, deterministic id generators and the sandbox clock.

Nothing here knows HTTP: the servers in `base.py` call these from synchronous code only, so a
check-then-write (unique email, then insert) is atomic under asyncio without any lock.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import orjson

from crmsyncd.domain.records import JSON, format_timestamp, parse_timestamp

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime, offset: float = 0.0) -> datetime:
    """`moment` shifted by `offset` seconds, as aware UTC truncated to the millisecond.

    Truncation matters: the wire form carries milliseconds only, so two writes in the same
    millisecond get equal `updatedAt` values, exactly as a real database-backed server gives.
    A naive `moment` (a test's `lambda: datetime(2026, 1, 1)`) is taken to be UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    shifted = moment.astimezone(UTC) + timedelta(seconds=offset)
    return shifted.replace(microsecond=shifted.microsecond // 1000 * 1000)


def normalise_timestamp(value: object, field: str) -> str:
    """Any accepted ISO 8601 form (Z or offset) rewritten to the one wire form.

    Stored stamps all share one fixed-width form, so they order correctly as plain strings.
    """
    return format_timestamp(parse_timestamp(value, field))


def deep_copy(value: T) -> T:
    """A detached copy of JSON data; callers can mutate it without touching the store."""
    copied: T = orjson.loads(orjson.dumps(value))
    return copied


IdFactory = Callable[[], str]


class UuidV7Ids:
    """UUID v7-shaped ids (`018e...-7...-8...`), reproducible from `seed`.

    The 48-bit time prefix is a fixed base plus a counter rather than the wall clock, so ids sort
    in creation order (like real v7 ids) and the same run always produces the same ids.
    """

    BASE_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z

    def __init__(self, seed: int = 0, base_ms: int = BASE_MS) -> None:
        self._rng = random.Random(seed)
        self._counter = 0
        self._base_ms = base_ms

    def __call__(self) -> str:
        self._counter += 1
        ts = self._base_ms + self._counter
        value = (
            (ts << 80)
            | (0x7 << 76)
            | (self._rng.getrandbits(12) << 64)
            | (0b10 << 62)
            | self._rng.getrandbits(62)
        )
        return str(uuid.UUID(int=value))


class CounterIds:
    """Opaque ids like `c_000123`: a prefix and a zero-padded counter."""

    def __init__(self, prefix: str, width: int = 6, start: int = 0) -> None:
        self._prefix = prefix
        self._width = width
        self._counter = start

    def __call__(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter:0{self._width}d}"


class Collection:
    """The records of one resource, keyed by id, in insertion order."""

    def __init__(self, name: str, new_id: IdFactory) -> None:
        self.name = name
        self._new_id = new_id
        self._rows: dict[str, JSON] = {}

    def next_id(self) -> str:
        # Seeded records may carry ids in the server's own format; never hand one out twice.
        while True:
            candidate = self._new_id()
            if candidate not in self._rows:
                return candidate

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[JSON]:
        """The live records (not copies): for read-only scans inside the server."""
        return iter(list(self._rows.values()))

    def get(self, record_id: str) -> JSON | None:
        return self._rows.get(record_id)

    def put(self, record: JSON) -> None:
        self._rows[str(record["id"])] = record

    def delete(self, record_id: str) -> bool:
        return self._rows.pop(record_id, None) is not None
