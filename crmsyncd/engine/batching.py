"""Workers write one pair at a time; APIs take batches. A `WriteBatcher` per target API gathers
the writes its workers make at about the same moment into that API's batch calls and hands each
worker its own record's result.

An API that writes one record a request (`max_batch` 1: ECOSIRE, the REST CRM) gets each write at
once, as its own call. For a batch API a batch leaves when it is full or when it has waited
`linger` seconds, whichever comes first, but a batch that is not full also waits while a call of
its kind (operation and resource) is in flight, and a `linger` more once it has returned. The
workers are what fills batches, and a worker waits for its batch's answer: without that wait,
while a paced API holds a call, the few workers its last answer freed send their writes as one
small batch of their own, which waits in turn, and so on: a convoy of small batches that spends
the API's limit several times over (the bench's HubSpot part saw batches of 8 on average). With
it, the writers of a returned call join the batch that waited for it, and batches fill.

A failure of a whole call (a timeout, a 5xx, refused credentials) reaches every worker whose
record was in it, each deciding for its own pair as it would for a single write; a refused record
reaches only its own worker (the connector splits batches the API refuses whole).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from crmsyncd.connectors.port import BatchWriter, WriteResult
from crmsyncd.domain.records import JSON

# Seconds a batch that is not full waits for more writes before it is sent.
LINGER = 0.05


class _Op(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(slots=True)
class _Batch:
    items: list[tuple[Any, asyncio.Future[WriteResult]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class WriteBatcher:
    def __init__(self, writer: BatchWriter, *, linger: float = LINGER) -> None:
        self._writer = writer
        self._linger = linger
        self._open: dict[tuple[_Op, str], _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()  # held so that they are not collected
        self._in_flight: Counter[tuple[_Op, str]] = Counter()  # calls sent, not answered, by kind
        self._held: set[tuple[_Op, str]] = set()  # open batches waiting for a call of theirs

    async def create(self, resource: str, body: JSON) -> JSON:
        """The created record (at least its id); ConnectorError when refused or not known."""
        return _record(await self._submit(_Op.CREATE, resource, body))

    async def update(self, resource: str, record_id: str, body: JSON) -> JSON:
        return _record(await self._submit(_Op.UPDATE, resource, (record_id, body)))

    async def delete(self, resource: str, record_id: str) -> None:
        _record(await self._submit(_Op.DELETE, resource, record_id))

    async def _submit(self, op: _Op, resource: str, item: Any) -> WriteResult:
        if self._writer.max_batch <= 1:
            (result,) = await self._send(op, resource, [item])
            return result
        key = (op, resource)
        batch = self._open.get(key)
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = self._open[key] = _Batch()
            batch.timer = loop.call_later(self._linger, self._lingered, key)
        future: asyncio.Future[WriteResult] = loop.create_future()
        batch.items.append((item, future))
        if len(batch.items) >= self._writer.max_batch:
            self._flush(key)
        # Shielded: a worker told to stop still lets its batch's answer land for the others.
        return await asyncio.shield(future)

    def _lingered(self, key: tuple[_Op, str]) -> None:
        if self._in_flight[key]:
            self._held.add(key)  # sent after the call in flight returns (_answered)
            return
        self._flush(key)

    def _flush(self, key: tuple[_Op, str]) -> None:
        batch = self._open.pop(key, None)
        self._held.discard(key)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._deliver(key, batch))
        self._in_flight[key] += 1
        self._sending.add(task)
        task.add_done_callback(lambda done: self._answered(key, done))

    def _answered(self, key: tuple[_Op, str], task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._in_flight[key] -= 1
        if key in self._held and not self._in_flight[key]:
            self._held.discard(key)
            batch = self._open.get(key)
            if batch is not None:
                # A linger more: the workers this answer freed join the batch before it leaves.
                batch.timer = asyncio.get_running_loop().call_later(self._linger, self._lingered, key)

    async def _deliver(self, key: tuple[_Op, str], batch: _Batch) -> None:
        op, resource = key
        futures = [future for _, future in batch.items]
        try:
            results = await self._send(op, resource, [item for item, _ in batch.items])
            if len(results) != len(futures):
                raise RuntimeError(
                    f"{resource} batch {op.value}: {len(results)} results for {len(futures)} inputs"
                )
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _send(self, op: _Op, resource: str, items: Sequence[Any]) -> list[WriteResult]:
        if op is _Op.CREATE:
            return await self._writer.create_many(resource, items)
        if op is _Op.UPDATE:
            return await self._writer.update_many(resource, items)
        return await self._writer.delete_many(resource, items)


def _record(result: WriteResult) -> JSON:
    if result.error is not None:
        raise result.error
    assert result.record is not None  # WriteResult holds one or the other
    return result.record
