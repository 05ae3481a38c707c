"""Lookups by id and by field value.

- `get_many`: `POST /crm/v3/objects/{type}/batch/read`, 100 ids a call, live objects only; the ids
  HubSpot does not find (a 207's OBJECT_NOT_FOUND) are gone. A deal's contact from one
  association batch read per call.
- `find_by_field`: a contact's email by batch read with `idProperty=email` (exact, and free of the
  search index's lag: a contact created a moment ago is found, which a lost create's lookup
  needs); any other field by search, EQ, then compared again trimmed and case-insensitively.
"""

from __future__ import annotations

from collections.abc import Sequence

from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.connectors.hubspot.associations import contacts_of
from crmsyncd.connectors.hubspot.client import HubSpotClient, body_of, next_after
from crmsyncd.connectors.hubspot.records import ID_FIELD, flatten, object_type, with_contact
from crmsyncd.domain.canonical import normalise_key
from crmsyncd.domain.records import JSON, Side

BATCH = 100
SEARCH_PAGE = 200
# A lookup that needs more pages than this is too broad to trust: refused rather than guessed.
LOOKUP_MAX_PAGES = 10


class Lookups:
    def __init__(self, client: HubSpotClient, properties: dict[str, list[str]]) -> None:
        self.client = client
        self.properties = properties

    async def get_many(self, resource: str, record_ids: Sequence[str]) -> dict[str, JSON]:
        resource = object_type(resource)
        found: dict[str, JSON] = {}
        unique = list(dict.fromkeys(str(i) for i in record_ids))
        for start in range(0, len(unique), BATCH):
            chunk = unique[start : start + BATCH]
            found.update(await self._read(resource, [{"id": i} for i in chunk], None))
        return found

    async def find_by_field(self, resource: str, field: str, value: str) -> list[JSON]:
        resource = object_type(resource)
        needle = normalise_key(value)
        if not needle:
            return []
        if field == ID_FIELD:
            return list((await self.get_many(resource, [value.strip()])).values())
        if resource == "contacts" and field == "email":
            records = list((await self._read(resource, [{"id": value.strip()}], "email")).values())
        else:
            records = await self._search(resource, field, value.strip())
        return [record for record in records if normalise_key(record.get(field)) == needle]

    async def _read(self, resource: str, inputs: list[JSON], id_property: str | None) -> dict[str, JSON]:
        body: JSON = {"inputs": inputs, "properties": self.properties[resource]}
        if id_property is not None:
            body["idProperty"] = id_property
        answer = await self.client.call(
            "POST",
            f"/crm/v3/objects/{resource}/batch/read",
            kind="reads" if id_property is None else "lookups",
            params={"archived": "false"},
            body=body,
            read=True,
            parse=body_of,
        )
        for error in answer.get("errors") or []:
            if isinstance(error, dict) and error.get("category") != "OBJECT_NOT_FOUND":
                raise ConnectorError(
                    Outcome.RETRY,
                    f"batch read: {error.get('message')}",
                    side=Side.CRM,
                    method="POST",
                    path=f"/crm/v3/objects/{resource}/batch/read",
                )
        objects = [r for r in answer.get("results") or [] if isinstance(r, dict) and r.get("id")]
        # Read by id, only the ids asked for count (an answer naming others is not theirs).
        only = {str(i["id"]) for i in inputs} if id_property is None else None
        return await self._flat(resource, objects, only)

    async def _flat(
        self, resource: str, objects: list[JSON], only: set[str] | None = None
    ) -> dict[str, JSON]:
        objects = [o for o in objects if only is None or str(o["id"]) in only]
        links = await contacts_of(self.client, [str(o["id"]) for o in objects]) if resource == "deals" else {}
        return {
            str(o["id"]): with_contact(resource, flatten(resource, o), links.get(str(o["id"])))
            for o in objects
        }

    async def _search(self, resource: str, field: str, value: str) -> list[JSON]:
        found: dict[str, JSON] = {}
        after: str | None = None
        for _ in range(LOOKUP_MAX_PAGES):
            body: JSON = {
                "filterGroups": [{"filters": [{"propertyName": field, "operator": "EQ", "value": value}]}],
                "properties": list(dict.fromkeys([*self.properties[resource], field])),
                "limit": SEARCH_PAGE,
            }
            if after is not None:
                body["after"] = after
            answer = await self.client.search(resource, body, kind="lookups")
            objects = [r for r in answer.get("results") or [] if isinstance(r, dict) and r.get("id")]
            found.update(await self._flat(resource, objects))
            after = next_after(answer)
            if after is None:
                return list(found.values())
        raise ConnectorError(
            Outcome.PERMANENT,
            f"lookup by {field!r} matched more than {LOOKUP_MAX_PAGES} pages",
            side=Side.CRM,
            method="POST",
            path=f"/crm/v3/objects/{resource}/search",
        )
