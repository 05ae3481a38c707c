"""The portal's data: objects, property definitions, associations, and the lagging search index.

Nothing here knows HTTP, and nothing awaits: the handlers call it from synchronous code, so a
check-then-write (the email is free, then the insert) is atomic under asyncio.

The search index is a copy of each object as of a write that has had time to settle: a write is
queued with the instant it becomes searchable (`now + lag`) and applied when a search runs at or
after that instant. Until then a search sees the previous copy, or nothing for a new object: as
HubSpot's docs put it, created or updated objects take a few moments to appear in search.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crmsyncd.domain.records import JSON
from crmsyncd.sandbox.hubspot.properties import PropertyDef, default_properties

OBJECT_TYPES = ("contacts", "deals")
# Ids are numeric strings from one counter per object type, as a portal's are.
FIRST_IDS = {"contacts": 101, "deals": 5001}
# The properties an answer carries when the request names none (HubSpot's documented defaults).
DEFAULT_PROPERTIES = {
    "contacts": ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"),
    "deals": (
        "amount",
        "closedate",
        "createdate",
        "dealname",
        "dealstage",
        "hs_lastmodifieddate",
        "hs_object_id",
        "pipeline",
    ),
}
MODIFIED = {"contacts": "lastmodifieddate", "deals": "hs_lastmodifieddate"}
SINGULAR = {"contacts": "contact", "deals": "deal"}
# Associations v4 type ids of HubSpot's unlabelled default deal <-> contact association.
DEAL_TO_CONTACT = 3
CONTACT_TO_DEAL = 4
ASSOCIATION_TYPES = {("deals", "contacts"): DEAL_TO_CONTACT, ("contacts", "deals"): CONTACT_TO_DEAL}


@dataclass(slots=True)
class HubObject:
    id: str
    properties: dict[str, str]  # the stored (set) values only
    created_at: str
    updated_at: str
    archived: bool = False
    archived_at: str | None = None


@dataclass(order=True, slots=True)
class _Pending:
    visible_at: datetime
    seq: int
    object_type: str = field(compare=False)
    object_id: str = field(compare=False)
    snapshot: JSON | None = field(compare=False)  # None: drop from the index (archived, deleted)


class Portal:
    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, PropertyDef]] = {t: default_properties(t) for t in OBJECT_TYPES}
        self._objects: dict[str, dict[str, HubObject]] = {t: {} for t in OBJECT_TYPES}
        self._next_id = dict(FIRST_IDS)
        self._emails: dict[str, str] = {}  # live contacts' email -> id
        self._email_of: dict[str, str] = {}  # and back
        # Deal <-> contact associations, indexed both ways: {deal id: {contact ids}} and back.
        self._links: dict[str, dict[str, set[str]]] = {"deals": {}, "contacts": {}}
        self._index: dict[str, dict[str, JSON]] = {t: {} for t in OBJECT_TYPES}
        self._pending: list[_Pending] = []
        self._seq = itertools.count()

    # ----- objects ------------------------------------------------------------------------------

    def objects(self, object_type: str) -> Iterator[HubObject]:
        return iter(list(self._objects[object_type].values()))

    def get(self, object_type: str, object_id: str, *, archived: bool = False) -> HubObject | None:
        found = self._objects[object_type].get(object_id)
        if found is None or found.archived != archived:
            return None
        return found

    def find(self, object_type: str, id_property: str | None, value: str) -> HubObject | None:
        """The live object whose `id_property` (None or hs_object_id: its id) equals `value`."""
        if id_property in (None, "hs_object_id"):
            return self.get(object_type, value)
        if object_type == "contacts" and id_property == "email":
            found = self._emails.get(value.strip().lower())
            return None if found is None else self.get(object_type, found)
        for candidate in self._objects[object_type].values():
            if not candidate.archived and candidate.properties.get(id_property) == value:
                return candidate
        return None

    def email_holder(self, email: str | None) -> str | None:
        return None if email is None else self._emails.get(email.strip().lower())

    def new_id(self, object_type: str) -> str:
        while True:
            candidate = str(self._next_id[object_type])
            self._next_id[object_type] += 1
            if candidate not in self._objects[object_type]:
                return candidate

    def put(self, object_type: str, obj: HubObject, now: datetime, *, lag: float) -> None:
        """Store a new or changed object; the search index learns of it `lag` seconds later."""
        self._objects[object_type][obj.id] = obj
        if object_type == "contacts":
            self._unindex_email(obj.id)
            address = obj.properties.get("email")
            if address is not None and not obj.archived:
                self._emails[address] = obj.id
                self._email_of[obj.id] = address
        self._queue(object_type, obj.id, None if obj.archived else self.snapshot(object_type, obj), now, lag)

    def delete(self, object_type: str, object_id: str, now: datetime, *, lag: float) -> bool:
        obj = self._objects[object_type].pop(object_id, None)
        if obj is None:
            return False
        if object_type == "contacts":
            self._unindex_email(object_id)
        for other in self._links[object_type].pop(object_id, set()):
            self._links[_other(object_type)].get(other, set()).discard(object_id)
        self._queue(object_type, object_id, None, now, lag)
        return True

    def _unindex_email(self, object_id: str) -> None:
        address = self._email_of.pop(object_id, None)
        if address is not None and self._emails.get(address) == object_id:
            del self._emails[address]

    def all_properties(self, object_type: str, obj: HubObject) -> dict[str, str]:
        """The stored values plus the ones HubSpot derives: create and modify stamps, the id."""
        values = dict(obj.properties)
        values["createdate"] = obj.properties.get("createdate", obj.created_at)
        values[MODIFIED[object_type]] = obj.updated_at
        values["hs_object_id"] = obj.id
        return values

    def wire(self, object_type: str, obj: HubObject, names: list[str] | None) -> JSON:
        """An object as the API answers it, with the properties asked for (HubSpot's defaults if
        none; the create and modify stamps and the id always; null for a property not set)."""
        values = self.all_properties(object_type, obj)
        return self.wire_values(
            object_type, obj.id, values, obj.created_at, obj.updated_at, obj.archived, obj.archived_at, names
        )

    def wire_values(
        self,
        object_type: str,
        object_id: str,
        values: dict[str, str],
        created_at: str,
        updated_at: str,
        archived: bool,
        archived_at: str | None,
        names: list[str] | None,
    ) -> JSON:
        wanted = list(DEFAULT_PROPERTIES[object_type]) if not names else list(names)
        for always in ("createdate", MODIFIED[object_type], "hs_object_id"):
            if always not in wanted:
                wanted.append(always)
        known = self.definitions[object_type]
        properties: dict[str, Any] = {name: values.get(name) for name in wanted if name in known}
        body: JSON = {
            "id": object_id,
            "properties": properties,
            "createdAt": created_at,
            "updatedAt": updated_at,
            "archived": archived,
        }
        if archived_at is not None:
            body["archivedAt"] = archived_at
        return body

    def snapshot(self, object_type: str, obj: HubObject) -> JSON:
        return {
            "id": obj.id,
            "values": self.all_properties(object_type, obj),
            "createdAt": obj.created_at,
            "updatedAt": obj.updated_at,
        }

    # ----- the search index ---------------------------------------------------------------------

    def _queue(
        self, object_type: str, object_id: str, snapshot: JSON | None, now: datetime, lag: float
    ) -> None:
        visible = now + timedelta(seconds=max(0.0, lag))
        heapq.heappush(self._pending, _Pending(visible, next(self._seq), object_type, object_id, snapshot))

    def searchable(self, object_type: str, now: datetime) -> list[JSON]:
        """The index's copies of `object_type`, after applying every write settled by `now`."""
        while self._pending and self._pending[0].visible_at <= now:
            item = heapq.heappop(self._pending)
            if item.snapshot is None:
                self._index[item.object_type].pop(item.object_id, None)
            else:
                self._index[item.object_type][item.object_id] = item.snapshot
        return list(self._index[object_type].values())

    def settled_at(self) -> datetime | None:
        """When every write made so far is searchable; None when it is already."""
        return max((item.visible_at for item in self._pending), default=None)

    def index_now(self) -> None:
        """Settle every queued write at once (seeding: data that has been there a while)."""
        while self._pending:
            item = heapq.heappop(self._pending)
            if item.snapshot is None:
                self._index[item.object_type].pop(item.object_id, None)
            else:
                self._index[item.object_type][item.object_id] = item.snapshot

    # ----- associations -------------------------------------------------------------------------

    def associate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> None:
        self._links[from_type].setdefault(from_id, set()).add(to_id)
        self._links[to_type].setdefault(to_id, set()).add(from_id)

    def dissociate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> None:
        self._links[from_type].get(from_id, set()).discard(to_id)
        self._links[to_type].get(to_id, set()).discard(from_id)

    def associated(self, from_type: str, from_id: str, to_type: str) -> list[str]:
        """Ids of the live `to_type` objects associated with `from_id`, in id order."""
        if (from_type, to_type) not in ASSOCIATION_TYPES:
            return []
        found = self._links[from_type].get(from_id, set())
        return sorted((i for i in found if self.get(to_type, i) is not None), key=_numeric)


def _other(object_type: str) -> str:
    return "contacts" if object_type == "deals" else "deals"


def _numeric(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 62, value)


def numeric_key(value: str) -> tuple[int, str]:
    """Ids sort as numbers (a stray non-numeric id last)."""
    return _numeric(value)
