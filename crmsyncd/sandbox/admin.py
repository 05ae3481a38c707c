"""Admin endpoints under /__sandbox/: drive a sandbox that runs in another process.

They sit outside /api: no auth, no rate limit, no faults, not counted in `requests`.

| call | effect |
|---|---|
| `POST /__sandbox/faults` | `FaultPlan.add_from_json` (the `add()` arguments as JSON) -> 201 |
| `GET /__sandbox/faults` | the rules and their hit counts |
| `DELETE /__sandbox/faults` | `FaultPlan.clear()` -> 204 |
| `GET /__sandbox/records/{resource}` | `{"data": [...]}` every stored record |
| `POST /__sandbox/records/{resource}` | `seed()` a JSON list of records -> 201 `{"data": stored}` |
| `PATCH /__sandbox/records/{resource}/{id}` | `edit()` with the JSON object's fields |
| `DELETE /__sandbox/records/{resource}/{id}` | `remove()` -> 204 |
| `GET /__sandbox/stats` | `{"requests": {"GET /contacts": 3, ...}}` |
| `DELETE /__sandbox/stats` | `reset_counts()` -> 204 |
| `PUT /__sandbox/clock` | `{"offset": seconds}` sets `clock_offset`; answers the server time |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from crmsyncd.domain.records import BadRecord, format_timestamp
from crmsyncd.sandbox.responses import ApiError, json_response

if TYPE_CHECKING:
    from crmsyncd.sandbox.base import SandboxServer

ADMIN_PREFIX = "/__sandbox"


def admin_routes(server: SandboxServer) -> list[web.RouteDef]:
    async def add_fault(request: web.Request) -> web.StreamResponse:
        spec = await _body(request)
        if not isinstance(spec, dict):
            raise ApiError(400, "a fault is a JSON object")
        try:
            server.faults.add_from_json(spec)
        except (ValueError, TypeError) as error:
            raise ApiError(400, str(error)) from None
        return json_response({"data": server.faults.describe()}, status=201)

    async def list_faults(request: web.Request) -> web.StreamResponse:
        return json_response({"data": server.faults.describe()})

    async def clear_faults(request: web.Request) -> web.StreamResponse:
        server.faults.clear()
        return web.Response(status=204)

    async def list_records(request: web.Request) -> web.StreamResponse:
        return json_response({"data": server.records(_resource(server, request))})

    async def seed_records(request: web.Request) -> web.StreamResponse:
        resource = _resource(server, request)
        records = await _body(request)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ApiError(400, "send a JSON list of record objects")
        try:
            stored = server.seed(resource, records)
        except (ValueError, BadRecord) as error:
            raise ApiError(400, str(error)) from None
        return json_response({"data": stored}, status=201)

    async def edit_record(request: web.Request) -> web.StreamResponse:
        resource = _resource(server, request)
        fields = await _body(request)
        if not isinstance(fields, dict):
            raise ApiError(400, "send a JSON object of fields")
        try:
            return json_response(server.edit(resource, request.match_info["id"], **fields))
        except KeyError:
            raise ApiError(404, "record not found") from None
        except (ValueError, BadRecord) as error:
            raise ApiError(400, str(error)) from None

    async def remove_record(request: web.Request) -> web.StreamResponse:
        try:
            server.remove(_resource(server, request), request.match_info["id"])
        except KeyError:
            raise ApiError(404, "record not found") from None
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.StreamResponse:
        return json_response({"requests": dict(server.requests)})

    async def reset_stats(request: web.Request) -> web.StreamResponse:
        server.reset_counts()
        return web.Response(status=204)

    async def set_clock(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        offset = body.get("offset") if isinstance(body, dict) else None
        if isinstance(offset, bool) or not isinstance(offset, int | float):
            raise ApiError(400, 'send {"offset": seconds}')
        server.clock_offset = float(offset)
        return json_response({"offset": server.clock_offset, "now": format_timestamp(server.now())})

    records = f"{ADMIN_PREFIX}/records/{{resource}}"
    return [
        web.post(f"{ADMIN_PREFIX}/faults", add_fault),
        web.get(f"{ADMIN_PREFIX}/faults", list_faults, allow_head=False),
        web.delete(f"{ADMIN_PREFIX}/faults", clear_faults),
        web.get(records, list_records, allow_head=False),
        web.post(records, seed_records),
        web.patch(f"{records}/{{id}}", edit_record),
        web.delete(f"{records}/{{id}}", remove_record),
        web.get(f"{ADMIN_PREFIX}/stats", stats, allow_head=False),
        web.delete(f"{ADMIN_PREFIX}/stats", reset_stats),
        web.put(f"{ADMIN_PREFIX}/clock", set_clock),
    ]


def _resource(server: SandboxServer, request: web.Request) -> str:
    resource = request.match_info["resource"]
    if resource not in server.resource_names():
        raise ApiError(404, f"unknown resource {resource!r}")
    return resource


async def _body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not valid JSON") from None
