"""HubSpot objects as the engine sees records, and back.

HubSpot answers `{"id", "properties": {...}, "createdAt", "updatedAt", "archived"}` with every
property a string. The engine gets one flat record:

    {"id": "101", **properties, "updatedAt": <lastmodifieddate>, "createdAt": <createdate>}

(`updatedAt` is `lastmodifieddate` for contacts and `hs_lastmodifieddate` for deals, the stamps
search filters and sorts on; the object's own stamps where a property is absent). A deal's
associated contact is the flat field `contactId` (its first associated contact, in id order), so
the mapping's `ref:contacts` works as for any CRM. Writes go the other way: the flat fields
become `properties`, except the id, the stamps and `contactId` (an association, not a property).
"""

from __future__ import annotations

from typing import Any

from crmsyncd.domain.records import JSON

ID_FIELD = "id"
UPDATED_FIELD = "updatedAt"
CREATED_FIELD = "createdAt"
CONTACT_FIELD = "contactId"
OBJECT_TYPES = ("contacts", "deals")
MODIFIED = {"contacts": "lastmodifieddate", "deals": "hs_lastmodifieddate"}
# Set by HubSpot, never written: left out of a write's properties.
_NOT_WRITTEN = {ID_FIELD, UPDATED_FIELD, CREATED_FIELD, CONTACT_FIELD, "hs_object_id", "createdate"}


def object_type(resource: str) -> str:
    if resource not in OBJECT_TYPES:
        raise ValueError(f"not a HubSpot object type this connector syncs: {resource!r} (contacts, deals)")
    return resource


def flatten(resource: str, obj: JSON) -> JSON:
    """The engine's record of one HubSpot object, without a deal's contact (`with_contact`)."""
    properties: dict[str, Any] = dict(obj.get("properties") or {})
    flat: JSON = {**properties, ID_FIELD: obj.get("id")}
    flat[UPDATED_FIELD] = properties.get(MODIFIED[resource]) or obj.get("updatedAt")
    flat[CREATED_FIELD] = properties.get("createdate") or obj.get("createdAt")
    return flat


def with_contact(resource: str, flat: JSON, contact_ids: list[str] | None) -> JSON:
    """A deal's record with its contact: the first of its associated contacts, None for none."""
    if resource == "deals":
        flat[CONTACT_FIELD] = contact_ids[0] if contact_ids else None
    return flat


def properties_of(resource: str, body: JSON) -> JSON:
    """A flat record's writable properties; lists (a multiple-checkbox value the mapping did
    not join) are sent `;`-joined, as HubSpot stores them."""
    out: JSON = {}
    for name, value in body.items():
        if name in _NOT_WRITTEN or name == MODIFIED[resource]:
            continue
        if isinstance(value, list):
            value = ";".join(str(v) for v in value)
        out[name] = value
    return out


def contact_of(body: JSON) -> tuple[bool, str | None]:
    """(whether the body names the deal's contact, the contact id or None to clear)."""
    if CONTACT_FIELD not in body:
        return False, None
    value = body[CONTACT_FIELD]
    return True, None if value in (None, "") else str(value)
