"""In-memory collections, deterministic id generators and the sandbox clock.

Nothing here knows HTTP: the servers in `base.py` call these from synchronous code only, so a
check-then-write (unique email, then insert) is atomic under asyncio without any lock.
"""

from __future__ import annotations

import random
import uuid
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson

from crmsyncd.domain.records import JSON, format_timestamp, parse_timestamp
from crmsyncd.sandbox.schema import unique_key

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


SortKey = tuple[Any, ...]


def sort_key(record: JSON, field: str) -> SortKey:
    """Where a record sorts by `field`: typed buckets keep a stray value from breaking the sort,
    and the id settles ties, so that records with equal values keep one stable order across
    requests (and no two records ever share a key)."""
    value = record.get(field)
    if isinstance(value, bool) or value is None:
        bucket: tuple[Any, ...] = (2, "")
    elif isinstance(value, int | float):
        bucket = (0, value)
    else:
        bucket = (1, str(value).casefold())
    return (*bucket, str(record.get("id", "")))


class _Order:
    """The sort keys of every record by one field, kept sorted as records are written.

    Built on first use; after that a write costs a binary search and a list insertion, so a page
    of a large collection is a slice instead of a sort of everything."""

    def __init__(self, field: str, rows: dict[str, JSON]) -> None:
        self.field = field
        self.key_of = {rid: sort_key(record, field) for rid, record in rows.items()}
        self.keys = sorted(self.key_of.values())

    def update(self, rid: str, record: JSON) -> None:
        key = sort_key(record, self.field)
        old = self.key_of.get(rid)
        if old == key:
            return
        if old is not None:
            self._drop(old)
        self.key_of[rid] = key
        insort(self.keys, key)

    def remove(self, rid: str) -> None:
        old = self.key_of.pop(rid, None)
        if old is not None:
            self._drop(old)

    def _drop(self, key: SortKey) -> None:
        del self.keys[bisect_left(self.keys, key)]


class Collection:
    """The records of one resource, keyed by id, in insertion order.

    Writes go through `put` (also after changing a stored record in place) and `delete`, which
    keep two indexes current: the holders of each value of the `unique` field (compared with
    `unique_key`), and a sorted order per field that has been listed by."""

    def __init__(self, name: str, new_id: IdFactory, *, unique: str | None = None) -> None:
        self.name = name
        self._new_id = new_id
        self._rows: dict[str, JSON] = {}
        self._unique = unique
        self._unique_of: dict[str, str] = {}  # record id -> its unique key, for ids having one
        self._holders: dict[str, set[str]] = {}  # unique key -> record ids
        self._orders: dict[str, _Order] = {}

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
        """Store a record, or re-index one changed in place."""
        rid = str(record["id"])
        self._rows[rid] = record
        if self._unique is not None:
            self._unindex_unique(rid)
            key = unique_key(record.get(self._unique))
            if key is not None:
                self._unique_of[rid] = key
                self._holders.setdefault(key, set()).add(rid)
        for order in self._orders.values():
            order.update(rid, record)

    def delete(self, record_id: str) -> bool:
        if self._rows.pop(record_id, None) is None:
            return False
        self._unindex_unique(record_id)
        for order in self._orders.values():
            order.remove(record_id)
        return True

    def _unindex_unique(self, rid: str) -> None:
        old = self._unique_of.pop(rid, None)
        if old is not None:
            holders = self._holders[old]
            holders.discard(rid)
            if not holders:
                del self._holders[old]

    def holders(self, field: str, key: str) -> set[str]:
        """Ids of the records whose `field` has unique key `key` (trimmed, case-folded)."""
        if field == self._unique:
            return set(self._holders.get(key, ()))
        return {rid for rid, record in self._rows.items() if unique_key(record.get(field)) == key}

    def ordered(self, field: str) -> list[SortKey]:
        """Every record's `sort_key` by `field`, ascending (live: do not modify). The last item of
        a key is the record's id."""
        order = self._orders.get(field)
        if order is None:
            order = self._orders[field] = _Order(field, self._rows)
        return order.keys

    def forget_orders(self) -> None:
        """Drop the sorted orders (rebuilt on the next listing): cheaper than keeping them
        sorted through a large bulk insert in no particular order."""
        self._orders.clear()
