"""Batch writes: `/crm/v3/objects/{type}/batch/{create,update,upsert,archive}`, 100 inputs a call.

One result per input, found by what identifies it, never by position (HubSpot does not promise
the inputs' order, and the sandbox answers sorted by id): the `objectWriteTraceId` every input
carries, then the id (updates), the key value (upserts, a contact's email).

Refusals:
- per input: every input carries an `objectWriteTraceId`, which is HubSpot's switch to multi-status
  (207): each refused input's error names its trace id (or its id) and becomes that input's
  result, classified by its category (CONFLICT, OBJECT_NOT_FOUND, VALIDATION_ERROR naming the
  property and HubSpot's code: PROPERTY_DOESNT_EXIST, INVALID_OPTION, ...); its neighbours are
  written;
- whole batch: HubSpot refuses a batch outright for one bad input where it does not apply
  multi-status (a duplicate in the batch, a create it checks all-or-nothing). A refused batch
  (400, 404, 409) is split in halves, recursively, until the bad input is alone: its error is
  its own, the others are written;
- transient (5xx, reset, timeout, a lost answer): raised for the whole batch, `committed_maybe`
  set, since the batch may have been written: the engine looks before it creates again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.connectors.http import RequestKind
from crmsyncd.connectors.hubspot.associations import contacts_of, create_association, move_contact
from crmsyncd.connectors.hubspot.client import HubSpotClient, body_of, describe_error, nothing
from crmsyncd.connectors.hubspot.records import (
    contact_of,
    flatten,
    object_type,
    properties_of,
    with_contact,
)
from crmsyncd.connectors.port import WriteResult
from crmsyncd.domain.canonical import normalise_key
from crmsyncd.domain.records import JSON, Side

# A batch error's category, as the engine's outcome (and the status HubSpot gives it alone).
CATEGORIES: dict[str, tuple[Outcome, int]] = {
    "CONFLICT": (Outcome.CONFLICT, 409),
    "OBJECT_ALREADY_EXISTS": (Outcome.CONFLICT, 409),
    "OBJECT_NOT_FOUND": (Outcome.NOT_FOUND, 404),
    "VALIDATION_ERROR": (Outcome.PERMANENT, 400),
    "RATE_LIMITS": (Outcome.RATE_LIMITED, 429),
}
_SPLIT = (Outcome.PERMANENT, Outcome.CONFLICT, Outcome.NOT_FOUND)
_KIND: dict[str, RequestKind] = {"create": "creates", "update": "updates", "upsert": "updates"}


@dataclass(slots=True)
class _Input:
    index: int  # position in the caller's list
    payload: JSON  # what is sent
    keys: set[str] = field(default_factory=set)  # "trace:..", "id:..", "key:.." that name it
    contact: tuple[bool, str | None] = (False, None)  # a deal's contact, when the body names one
    result: WriteResult | None = None


class Writer:
    def __init__(self, client: HubSpotClient, max_batch: int) -> None:
        self.client = client
        self.max_batch = max_batch

    # ----- the port's writes ------------------------------------------------------------------

    async def create_many(self, resource: str, bodies: Sequence[JSON]) -> list[WriteResult]:
        resource = object_type(resource)
        inputs: list[_Input] = []
        for index, body in enumerate(bodies):
            payload: JSON = {"properties": properties_of(resource, body), "objectWriteTraceId": str(index)}
            contact = contact_of(body)
            if resource == "deals" and contact[1] is not None:
                payload["associations"] = create_association(contact[1])
            item = _Input(index, payload, {f"trace:{index}"}, contact)
            email = normalise_key(body.get("email")) if resource == "contacts" else None
            if email:
                item.keys.add(f"key:{email}")
            inputs.append(item)
        await self._chunks(resource, "create", inputs)
        return _results(inputs)

    async def update_many(self, resource: str, changes: Sequence[tuple[str, JSON]]) -> list[WriteResult]:
        resource = object_type(resource)
        inputs = [
            _Input(
                index,
                {
                    "id": record_id,
                    "properties": properties_of(resource, body),
                    "objectWriteTraceId": str(index),
                },
                {f"trace:{index}", f"id:{record_id}"},
                contact_of(body),
            )
            for index, (record_id, body) in enumerate(changes)
        ]
        await self._chunks(resource, "update", inputs)
        await self._move_contacts(resource, inputs)
        return _results(inputs)

    async def upsert_many(self, resource: str, key_field: str, bodies: Sequence[JSON]) -> list[WriteResult]:
        """Create or update by a unique property (`email` for contacts: HubSpot's `idProperty`)."""
        resource = object_type(resource)
        inputs: list[_Input] = []
        refused: list[_Input] = []
        for index, body in enumerate(bodies):
            key = normalise_key(body.get(key_field))
            item = _Input(index, {}, {f"trace:{index}"}, contact_of(body))
            if key is None:
                item.result = WriteResult(
                    error=self._refusal(
                        Outcome.PERMANENT, f"no {key_field!r} to upsert by", "upsert", resource, 400
                    )
                )
                refused.append(item)
                continue
            item.keys.add(f"key:{key}")
            item.payload = {
                "idProperty": key_field,
                "id": str(body[key_field]).strip(),
                "properties": properties_of(resource, body),
                "objectWriteTraceId": str(index),
            }
            inputs.append(item)
        await self._chunks(resource, "upsert", inputs, key_field=key_field)
        await self._move_contacts(resource, inputs)
        return _results(sorted([*inputs, *refused], key=lambda i: i.index))

    async def delete_many(self, resource: str, record_ids: Sequence[str]) -> list[WriteResult]:
        """Archive (HubSpot's delete, to its recycle bin); an id already gone is archived too."""
        resource = object_type(resource)
        unique = list(dict.fromkeys(record_ids))
        for start in range(0, len(unique), self.max_batch):
            chunk = unique[start : start + self.max_batch]
            await self.client.call(
                "POST",
                f"/crm/v3/objects/{resource}/batch/archive",
                kind="deletes",
                body={"inputs": [{"id": record_id} for record_id in chunk]},
                read=True,  # idempotent: archiving twice archives once
                parse=nothing,
                expect_json=False,
            )
        return [WriteResult(record={"id": record_id}) for record_id in record_ids]

    # ----- batches, split when refused whole --------------------------------------------------

    async def _chunks(self, resource: str, action: str, inputs: list[_Input], key_field: str = "") -> None:
        for start in range(0, len(inputs), self.max_batch):
            await self._batch(resource, action, inputs[start : start + self.max_batch], key_field)

    async def _batch(self, resource: str, action: str, items: list[_Input], key_field: str) -> None:
        if not items:
            return
        try:
            answer = await self.client.call(
                "POST",
                f"/crm/v3/objects/{resource}/batch/{action}",
                kind=_KIND[action],
                body={"inputs": [item.payload for item in items]},
                parse=body_of,
            )
        except ConnectorError as exc:
            if exc.outcome not in _SPLIT:
                raise
            if len(items) == 1:
                items[0].result = WriteResult(error=exc)
                return
            middle = len(items) // 2
            await self._batch(resource, action, items[:middle], key_field)
            await self._batch(resource, action, items[middle:], key_field)
            return
        self._match(resource, action, items, answer, key_field)

    def _match(self, resource: str, action: str, items: list[_Input], answer: JSON, key_field: str) -> None:
        by_key = {key: item for item in items for key in item.keys}
        unmatched: list[JSON] = []
        for result in answer.get("results") or []:
            if not isinstance(result, dict):
                continue
            item = by_key.get(f"trace:{result.get('objectWriteTraceId')}") or by_key.get(
                f"id:{result.get('id')}"
            )
            if item is None and key_field:
                key = normalise_key((result.get("properties") or {}).get(key_field))
                item = by_key.get(f"key:{key}")
            if item is None and action == "create" and resource == "contacts":
                key = normalise_key((result.get("properties") or {}).get("email"))
                item = by_key.get(f"key:{key}")
            if item is None or item.result is not None:
                unmatched.append(result)
                continue
            item.result = WriteResult(record=self._record(resource, result, item))
        for error in answer.get("errors") or []:
            if not isinstance(error, dict):
                continue
            context = error.get("context")
            if not isinstance(context, dict):
                context = {}
            named = [f"trace:{t}" for t in context.get("objectWriteTraceId") or []]
            named += [f"id:{i}" for i in context.get("ids") or []]
            refusal = self._batch_error(error, action, resource)
            for key in named:
                item = by_key.get(key)
                if item is not None and item.result is None:
                    item.result = WriteResult(error=refusal)
        left = [item for item in items if item.result is None]
        if len(left) == 1 and len(unmatched) == 1:
            # One input and one result that named nothing we sent: each other's.
            left[0].result = WriteResult(record=self._record(resource, unmatched[0], left[0]))
            return
        for item in left:
            # Written or not, the answer does not say: for a create, the engine must look first.
            item.result = WriteResult(
                error=self._refusal(
                    Outcome.RETRY,
                    "HubSpot's answer holds no result for this input",
                    action,
                    resource,
                    None,
                    committed_maybe=action in ("create", "upsert"),
                )
            )

    def _record(self, resource: str, result: JSON, item: _Input) -> JSON:
        flat = flatten(resource, result)
        named, contact = item.contact
        if named:
            with_contact(resource, flat, [contact] if contact else None)
        return flat

    def _batch_error(self, error: JSON, action: str, resource: str) -> ConnectorError:
        outcome, status = CATEGORIES.get(str(error.get("category")), (Outcome.PERMANENT, 400))
        return self._refusal(outcome, describe_error(error), action, resource, status)

    def _refusal(
        self,
        outcome: Outcome,
        message: str,
        action: str,
        resource: str,
        status: int | None,
        *,
        committed_maybe: bool = False,
    ) -> ConnectorError:
        return ConnectorError(
            outcome,
            self.client.api.scrub(message),
            side=Side.CRM,
            status=status,
            method="POST",
            path=f"/crm/v3/objects/{resource}/batch/{action}",
            committed_maybe=committed_maybe,
        )

    async def _move_contacts(self, resource: str, inputs: list[_Input]) -> None:
        """An update or upsert that names a deal's contact makes it the deal's one contact."""
        if resource != "deals":
            return
        moving = [
            item
            for item in inputs
            if item.contact[0] and item.result is not None and item.result.record is not None
        ]
        if not moving:
            return
        current = await contacts_of(self.client, [str(_id(item)) for item in moving])
        for item in moving:
            deal_id = str(_id(item))
            try:
                await move_contact(self.client, deal_id, item.contact[1], current.get(deal_id, []))
            except ConnectorError as exc:
                if exc.outcome not in (*_SPLIT, Outcome.RETRY):
                    raise
                item.result = WriteResult(error=exc)


def _id(item: _Input) -> Any:
    assert item.result is not None and item.result.record is not None
    return item.result.record.get("id")


def _results(inputs: list[_Input]) -> list[WriteResult]:
    out: list[WriteResult] = []
    for item in inputs:
        assert item.result is not None  # _match gives every input one
        out.append(item.result)
    return out
