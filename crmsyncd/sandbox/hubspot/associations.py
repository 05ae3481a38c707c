"""Associations v4 between deals and contacts: HubSpot's unlabelled default type (deal to contact
3, contact to deal 4; making one makes both).

- `PUT /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}`: 200, the two directions made;
- `POST /crm/v4/associations/{from}/{to}/batch/associate/default`: `inputs` of `{from: {id}, to:
  {id}}`, at most 100; 200 (the SDK's model of this answer carries `errors` for inputs naming an
  object that does not exist, and the sandbox answers them there);
- `GET /crm/v4/objects/{from}/{id}/associations/{to}`: `results` of `{toObjectId, associationTypes}`
  (toObjectId a number, as HubSpot answers it), `limit` (500 by default) and `after` paging;
- `POST /crm/v4/associations/{from}/{to}/batch/read`: 200, or 207 naming ids with none;
- `DELETE /crm/v4/objects/{from}/{id}/associations/{to}/{toId}` and `.../batch/archive`: 204.
An association with an object that does not exist (or is archived) is a 400 naming it (chosen:
the docs do not say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from crmsyncd.domain.records import JSON, format_timestamp
from crmsyncd.sandbox.hubspot.batch import batch_inputs
from crmsyncd.sandbox.hubspot.errors import HubSpotError, json_answer, validation
from crmsyncd.sandbox.hubspot.objects import json_body
from crmsyncd.sandbox.hubspot.store import ASSOCIATION_TYPES, SINGULAR, numeric_key

if TYPE_CHECKING:
    from crmsyncd.sandbox.hubspot.app import HubSpotSandbox

READ_LIMIT = 500


def _spec(from_type: str, to_type: str) -> JSON:
    return {
        "associationCategory": "HUBSPOT_DEFINED",
        "associationTypeId": ASSOCIATION_TYPES[(from_type, to_type)],
    }


def association_routes(server: HubSpotSandbox, from_type: str, to_type: str) -> list[web.RouteDef]:
    portal = server.portal
    objects_base = f"/crm/v4/objects/{from_type}/{{id}}/associations"
    batch_base = f"/crm/v4/associations/{from_type}/{to_type}/batch"

    def missing(from_id: str, to_id: str) -> HubSpotError | None:
        gone = [
            f"{SINGULAR[t]} {i}"
            for t, i in ((from_type, from_id), (to_type, to_id))
            if portal.get(t, i) is None
        ]
        if not gone:
            return None
        return validation(f"No such object: {', '.join(gone)}", ids=[from_id, to_id])

    def made(from_id: str, to_id: str) -> list[JSON]:
        portal.associate(from_type, from_id, to_type, to_id)
        return [
            {"from": {"id": from_id}, "to": {"id": to_id}, "associationSpec": _spec(from_type, to_type)},
            {"from": {"id": to_id}, "to": {"id": from_id}, "associationSpec": _spec(to_type, from_type)},
        ]

    def envelope(results: list[JSON], errors: list[JSON], started: str) -> JSON:
        body: JSON = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": format_timestamp(server.now()),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        return body

    def linked(from_id: str) -> list[JSON]:
        return [
            {
                "toObjectId": int(i) if i.isdigit() else i,
                "associationTypes": [
                    {
                        "category": "HUBSPOT_DEFINED",
                        "typeId": ASSOCIATION_TYPES[(from_type, to_type)],
                        "label": None,
                    }
                ],
            }
            for i in portal.associated(from_type, from_id, to_type)
        ]

    async def put_default(request: web.Request) -> web.StreamResponse:
        from_id, to_id = request.match_info["id"], request.match_info["toId"]
        started = format_timestamp(server.now())
        error = missing(from_id, to_id)
        if error is not None:
            raise error
        return json_answer(envelope(made(from_id, to_id), [], started))

    async def batch_default(request: web.Request) -> web.StreamResponse:
        inputs = batch_inputs(await json_body(request))
        started = format_timestamp(server.now())
        results: list[JSON] = []
        errors: list[JSON] = []
        for item in inputs:
            from_id, to_id = _id_of(item.get("from")), _id_of(item.get("to"))
            error = missing(from_id, to_id)
            if error is not None:
                errors.append(error.batch_item())
            else:
                results.extend(made(from_id, to_id))
        return json_answer(envelope(results, errors, started))

    async def read(request: web.Request) -> web.StreamResponse:
        from_id = request.match_info["id"]
        if portal.get(from_type, from_id) is None:
            raise HubSpotError(
                404,
                "OBJECT_NOT_FOUND",
                f"{SINGULAR[from_type]} {from_id} does not exist",
                context={"ids": [from_id]},
            )
        try:
            limit = int(request.query.get("limit", READ_LIMIT))
        except ValueError:
            raise validation("limit must be an integer") from None
        after = request.query.get("after")
        rows = linked(from_id)
        if after:
            rows = [r for r in rows if numeric_key(str(r["toObjectId"])) > numeric_key(after)]
        page: JSON = {"results": rows[:limit]}
        if len(rows) > limit:
            page["paging"] = {"next": {"after": str(rows[limit - 1]["toObjectId"])}}
        return json_answer(page)

    async def batch_read(request: web.Request) -> web.StreamResponse:
        inputs = batch_inputs(await json_body(request))
        started = format_timestamp(server.now())
        results: list[JSON] = []
        empty: list[str] = []
        for item in inputs:
            from_id = str(item.get("id", ""))
            rows = linked(from_id) if portal.get(from_type, from_id) is not None else []
            if rows:
                results.append({"from": {"id": from_id}, "to": rows})
            else:
                empty.append(from_id)
        body = envelope(results, [], started)
        if not empty:
            return json_answer(body)
        error = HubSpotError(
            404,
            "NO_ASSOCIATIONS_FOUND",
            f"No {SINGULAR[to_type]} is associated with {SINGULAR[from_type]} {', '.join(empty)}",
            context={"fromIds": empty},
        )
        body.update(numErrors=1, errors=[error.batch_item()])
        return json_answer(body, 207)

    async def remove(request: web.Request) -> web.StreamResponse:
        portal.dissociate(from_type, request.match_info["id"], to_type, request.match_info["toId"])
        return web.Response(status=204)

    async def batch_remove(request: web.Request) -> web.StreamResponse:
        for item in batch_inputs(await json_body(request)):
            from_id = _id_of(item.get("from"))
            for to in item.get("to") or []:
                portal.dissociate(from_type, from_id, to_type, _id_of(to))
        return web.Response(status=204)

    return [
        web.put(f"{objects_base}/default/{to_type}/{{toId}}", put_default),
        web.get(f"{objects_base}/{to_type}", read, allow_head=False),
        web.delete(f"{objects_base}/{to_type}/{{toId}}", remove),
        web.post(f"{batch_base}/associate/default", batch_default),
        web.post(f"{batch_base}/read", batch_read),
        web.post(f"{batch_base}/archive", batch_remove),
    ]


def _id_of(value: object) -> str:
    if isinstance(value, dict) and value.get("id") is not None:
        return str(value["id"])
    raise validation("each side of an association is an object with an id")
