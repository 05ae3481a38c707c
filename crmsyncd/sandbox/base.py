"""`SandboxServer`: the HTTP machinery both fake APIs share.

One request goes: count it -> added latency -> bearer auth (401) -> rate limit (429) -> fault
rules -> the resource handler. Handlers validate and write synchronously (no await between the
unique-email check and the insert), so concurrent requests cannot race into duplicates.
Subclasses (`EcosireSandbox`, `CrmSandbox`) declare their resources' `Schema`s, id formats and the
few wording/header differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import ClassVar, Self

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from crmsyncd.domain.records import JSON, Side, format_timestamp
from crmsyncd.sandbox.admin import ADMIN_PREFIX, admin_routes
from crmsyncd.sandbox.faults import FaultPlan, FaultRule
from crmsyncd.sandbox.listing import list_collection, parse_list_query
from crmsyncd.sandbox.ratelimit import FixedWindowLimiter, Quota
from crmsyncd.sandbox.responses import (
    JSON_TYPE,
    ApiError,
    error_response,
    json_response,
    reason,
)
from crmsyncd.sandbox.schema import Schema, unique_key
from crmsyncd.sandbox.store import (
    Collection,
    IdFactory,
    deep_copy,
    normalise_timestamp,
    stamp,
    utc_now,
)

log = logging.getLogger(__name__)

API_PREFIX = "/api"
# How long stop() lets in-flight requests (say, a long fault delay) finish before cancelling them.
SHUTDOWN_TIMEOUT = 0.25
# A fault-injected 429 tells the client to come back after this many seconds.
FAULT_RETRY_SECONDS = 1.0
# A seed of more records than this drops the sorted orders and lets the next listing rebuild them.
BULK_SEED = 1000

ResourceHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


class SandboxServer:
    """An in-process fake of one REST API, served by aiohttp on a real TCP port."""

    side: ClassVar[Side]
    schemas: ClassVar[Mapping[str, Schema]]
    sends_retry_after: ClassVar[bool] = False
    # Where the API's routes start: `url` ends with it ("" for an API served from the root).
    api_prefix: ClassVar[str] = API_PREFIX

    def __init__(
        self,
        api_key: str,
        *,
        rate_limit_per_minute: int | None,
        rate_window: float = 60.0,
        latency: float = 0.0,
        clock_offset: float = 0.0,
        date_offset: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.api_key = api_key
        # Requests allowed per window; None means unlimited (and no rate-limit headers).
        self.rate_limit_per_minute = rate_limit_per_minute
        # Window length in seconds: 60 as documented, shorter in tests.
        self.rate_window = rate_window
        self.latency = latency
        self.clock_offset = clock_offset
        # Seconds the front end's clock (the Date header, rate-limit resets) runs ahead of the
        # database's (the records' stamps): often two machines that disagree.
        self.date_offset = date_offset
        # Replace to freeze or steer time: `server.clock = lambda: datetime(2026, 1, 1, tzinfo=UTC)`.
        self.clock: Callable[[], datetime] = utc_now
        self.faults = FaultPlan()
        # "GET /contacts", "PATCH /contacts/{id}", ... plus "rate_limited" for every 429 answered.
        self.requests: Counter[str] = Counter()
        self.url = ""
        self._limiter = FixedWindowLimiter()
        self._collections = {
            name: Collection(name, factory, unique=self.schemas[name].unique)
            for name, factory in self._id_factories(seed).items()
        }
        self._runner: web.AppRunner | None = None

    # ----- what subclasses decide ---------------------------------------------------------------

    def _id_factories(self, seed: int) -> dict[str, IdFactory]:
        """One id generator per resource (they may share one)."""
        raise NotImplementedError

    def _invalid(self, messages: list[str]) -> ApiError:
        """The answer to a write that failed field validation."""
        return ApiError(422, messages)

    def _fault_quota(self) -> Quota | None:
        """The quota a fault-injected 429 reports: used up, back in FAULT_RETRY_SECONDS."""
        if self.rate_limit_per_minute is None:
            return None
        return Quota(self.rate_limit_per_minute, 0, FAULT_RETRY_SECONDS, allowed=False)

    # ----- clock --------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The server's time: `clock()` plus `clock_offset`, UTC, whole milliseconds."""
        return stamp(self.clock(), self.clock_offset)

    def front_now(self) -> datetime:
        """The front end's time, which its Date headers give: `now()` plus `date_offset`."""
        return self.now() + timedelta(seconds=self.date_offset)

    # ----- direct access for tests and the demo (no HTTP, no validation, not counted) ----------

    def seed(self, resource: str, records: list[JSON]) -> list[JSON]:
        """Insert records as given, filling `id`, `createdAt`, `updatedAt` and absent fields.

        No validation: a test may plant data the API itself would refuse. Timestamps given in any
        ISO 8601 form are stored in the wire form. A given id already present is a ValueError.
        """
        collection = self._collection(resource)
        schema = self.schemas[resource]
        now = format_timestamp(self.now())
        # Everything is checked before anything is stored, so a bad batch leaves no half of itself.
        bodies = [_seed_body(given, now) for given in records]
        seen: set[str] = set()
        for body in bodies:
            if body["id"] is not None:
                if body["id"] in collection or body["id"] in seen:
                    raise ValueError(f"{resource} {body['id']} already exists")
                seen.add(body["id"])
        stored: list[JSON] = []
        if len(bodies) > BULK_SEED:
            collection.forget_orders()
        for body in bodies:
            record_id = body.pop("id")
            while record_id is None:
                candidate = collection.next_id()
                if candidate not in seen:  # else a later record of the batch brings this id
                    record_id = candidate
            created, updated = body.pop("createdAt"), body.pop("updatedAt")
            record = {"id": record_id, **schema.blank(), **body, "createdAt": created, "updatedAt": updated}
            collection.put(record)
            stored.append(deep_copy(record))
        return stored

    def records(self, resource: str) -> list[JSON]:
        return [deep_copy(record) for record in self._collection(resource)]

    def get_record(self, resource: str, record_id: str) -> JSON | None:
        record = self._collection(resource).get(record_id)
        return None if record is None else deep_copy(record)

    def edit(self, resource: str, record_id: str, **fields: object) -> JSON:
        """Change fields as a user of the API's own UI would: updatedAt moves to now.

        Not validated. An explicit `updatedAt=...` is stored instead of now (to plant skew).
        """
        record = self._collection(resource).get(record_id)
        if record is None:
            raise KeyError(f"{resource} {record_id} not found")
        if "id" in fields:
            raise ValueError("a record's id cannot be edited")
        updated = fields.pop("updatedAt", None)
        if fields.get("createdAt") is not None:
            fields["createdAt"] = normalise_timestamp(fields["createdAt"], "createdAt")
        record.update(deep_copy(fields))
        record["updatedAt"] = (
            format_timestamp(self.now()) if updated is None else normalise_timestamp(updated, "updatedAt")
        )
        self._collection(resource).put(record)  # re-index the changed record
        return deep_copy(record)

    def remove(self, resource: str, record_id: str) -> None:
        """Hard delete, as a user would; later API calls for the id get 404."""
        if not self._collection(resource).delete(record_id):
            raise KeyError(f"{resource} {record_id} not found")

    def reset_counts(self) -> None:
        self.requests.clear()

    def window_counts(self) -> list[int]:
        """Requests the rate limiter counted in each of its windows so far, oldest first (the last
        may still be open). `rate_limit_per_minute` may be changed at any time: the next request
        is counted against the new limit, and its answer advertises it."""
        return self._limiter.counts(self.api_key)

    def resource_names(self) -> tuple[str, ...]:
        """The resources the admin endpoints can seed, list, edit and remove."""
        return tuple(self.schemas)

    def _collection(self, resource: str) -> Collection:
        try:
            return self._collections[resource]
        except KeyError:
            raise KeyError(f"unknown resource {resource!r}") from None

    # ----- lifecycle ----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = a free port) and return the base URL ending in /api."""
        if self._runner is not None:
            raise RuntimeError("sandbox server already started")
        runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            # A client that gives up (timeout) cancels its handler, so a delayed fault without
            # after_commit really writes nothing.
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port = int(runner.addresses[0][1])
        url_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
        self.url = str(URL.build(scheme="http", host=url_host, port=bound_port, path=self.api_prefix))
        self._runner = runner
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def admin_url(self) -> str:
        """Base of the admin endpoints, e.g. http://127.0.0.1:54321/__sandbox."""
        return self.url.removesuffix(self.api_prefix) + ADMIN_PREFIX

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware()])
        app.on_response_prepare.append(self._set_date)
        for name in self.schemas:
            collection_path = f"{API_PREFIX}/{name}"
            item_path = f"{collection_path}/{{id}}"
            app.router.add_get(collection_path, self._bind(self._list, name), allow_head=False)
            app.router.add_post(collection_path, self._bind(self._create, name))
            app.router.add_get(item_path, self._bind(self._read, name), allow_head=False)
            app.router.add_patch(item_path, self._bind(self._update, name))
            app.router.add_delete(item_path, self._bind(self._delete, name))
        app.router.add_routes(admin_routes(self))
        return app

    @staticmethod
    def _bind(method: ResourceHandler, resource: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await method(request, resource)

        return handler

    # ----- the request pipeline -----------------------------------------------------------------

    def _middleware(self) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith(ADMIN_PREFIX + "/"):
                # Admin endpoints: no auth, no limit, no faults, not counted.
                return await _answer_errors(request, handler)
            return await self._api_request(request, handler)

        return middleware

    async def _api_request(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = _path_template(request)
        self.requests[f"{request.method} {path}"] += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        quota: Quota | None = None
        try:
            self._authenticate(request)
            if self.rate_limit_per_minute is not None:
                quota = self._limiter.hit(self.api_key, self.rate_limit_per_minute, self.rate_window)
                if not quota.allowed:
                    raise ApiError(429, "Too Many Requests", self._throttle_headers(quota))
            response = await self._apply_faults(request, handler, path)
        except ApiError as error:
            response = error.response()
        except web.HTTPException as error:  # the router's own 404 / 405
            response = error_response(error.status, f"Cannot {request.method} {request.path}")
        except Exception:
            log.exception("sandbox handler failed")
            response = error_response(500, "Internal server error")
        if response.status == 429:
            self.requests["rate_limited"] += 1
        if quota is not None:
            for name, value in self._quota_headers(quota).items():
                response.headers.setdefault(name, value)  # a fault's own headers win
        return response

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )
        if not valid:
            raise ApiError(401, "Unauthorized")

    def _quota_headers(self, quota: Quota) -> dict[str, str]:
        # The reset instant is given in the server's clock, like the Date header, so a client can
        # compute the wait as Reset - Date whatever the skew between the two machines.
        reset_at = math.ceil(self.front_now().timestamp() + quota.resets_in)
        return {
            "X-RateLimit-Limit": str(quota.limit),
            "X-RateLimit-Remaining": str(quota.remaining),
            "X-RateLimit-Reset": str(reset_at),
        }

    def _throttle_headers(self, quota: Quota | None) -> dict[str, str]:
        """Headers of a 429: X-RateLimit-* when limited, plus Retry-After where the API sends it."""
        headers = {} if quota is None else self._quota_headers(quota)
        if self.sends_retry_after:
            wait = FAULT_RETRY_SECONDS if quota is None else quota.resets_in
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return headers

    async def _set_date(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Date"] = format_datetime(self.front_now(), usegmt=True)

    # ----- faults -------------------------------------------------------------------------------

    async def _apply_faults(self, request: web.Request, handler: Handler, path: str) -> web.StreamResponse:
        body = await _peek_json(request) if self.faults.needs_body else None
        rule = self.faults.take(request.method, path, request.match_info.get("id"), body)
        if rule is None:
            return await handler(request)
        return await self._answer_fault(request, handler, rule)

    async def _answer_fault(
        self, request: web.Request, handler: Handler, rule: FaultRule
    ) -> web.StreamResponse:
        real: web.StreamResponse | None = None
        if rule.after_commit:
            try:
                real = await handler(request)  # the write happens; its answer may be lost
            except ApiError as error:
                real = error.response()
        if rule.delay > 0:
            await asyncio.sleep(rule.delay)
        response: web.StreamResponse
        if rule.reset:
            _reset_connection(request)
            return web.Response(status=500)  # never reaches the client: the socket is gone
        if rule.body is not None:
            response = web.Response(
                body=rule.body,
                status=rule.status or 200,
                headers={"Content-Type": rule.content_type or JSON_TYPE},
            )
        elif rule.status is not None:
            response = self._fault_response(rule.status)
        else:
            response = real if real is not None else await handler(request)
        if rule.headers:
            response.headers.update(rule.headers)
        return response

    def _fault_response(self, status: int) -> web.Response:
        """What a fault rule's `status` answers: the API's error envelope; a 429 carries the API's
        throttle headers."""
        if status == 429:
            throttle = self._throttle_headers(self._fault_quota())
            return ApiError(429, "Too Many Requests", throttle).response()
        return error_response(status, reason(status))

    # ----- resource handlers --------------------------------------------------------------------

    async def _list(self, request: web.Request, resource: str) -> web.StreamResponse:
        schema = self.schemas[resource]
        query = parse_list_query(request.query, schema)
        return json_response(list_collection(self._collections[resource], query, schema))

    async def _read(self, request: web.Request, resource: str) -> web.StreamResponse:
        return json_response(self._existing(resource, request.match_info["id"]))

    async def _create(self, request: web.Request, resource: str) -> web.StreamResponse:
        body = await _json_body(request)
        return json_response(self._write(resource, body, None), status=201)

    async def _update(self, request: web.Request, resource: str) -> web.StreamResponse:
        body = await _json_body(request)
        existing = self._existing(resource, request.match_info["id"])
        return json_response(self._write(resource, body, existing))

    async def _delete(self, request: web.Request, resource: str) -> web.StreamResponse:
        if not self._collections[resource].delete(request.match_info["id"]):
            raise self._not_found(resource)
        return web.Response(status=204)

    def _existing(self, resource: str, record_id: str) -> JSON:
        record = self._collections[resource].get(record_id)
        if record is None:
            raise self._not_found(resource)
        return record

    def _not_found(self, resource: str) -> ApiError:
        return ApiError(404, f"{self.schemas[resource].singular.capitalize()} not found")

    def _write(self, resource: str, body: JSON, existing: JSON | None) -> JSON:
        """Validate, check uniqueness and store, all without yielding to the event loop.

        A PATCH replaces only the fields it sends and always moves updatedAt, even when nothing
        changed, as real servers do.
        """
        schema = self.schemas[resource]
        collection = self._collections[resource]
        changes, errors = schema.clean(body, create=existing is None)
        for name, (target, message) in schema.references.items():
            value = changes.get(name)
            if isinstance(value, str) and value not in self._collections[target]:
                errors.append(message)
        if errors:
            raise self._invalid(errors)
        self._check_unique(schema, collection, changes, existing)
        now = format_timestamp(self.now())
        if existing is None:
            record = {"id": collection.next_id(), **schema.blank(), **deep_copy(changes)}
            record.update(createdAt=now, updatedAt=now)
        else:
            record = existing
            record.update(deep_copy(changes))
            record["updatedAt"] = now
        collection.put(record)
        return record

    @staticmethod
    def _check_unique(schema: Schema, collection: Collection, changes: JSON, existing: JSON | None) -> None:
        name = schema.unique
        if name is None or name not in changes:
            return
        key = unique_key(changes[name])
        if key is None:
            return
        own_id = None if existing is None else str(existing["id"])
        if any(holder != own_id for holder in collection.holders(name, key)):
            raise ApiError(409, schema.unique_message.format(name=name))


def _seed_body(given: JSON, now: str) -> JSON:
    """A copy of a seeded record with its id as a string (or None) and stamps in wire form."""
    body = deep_copy(given)
    record_id = body.get("id")
    body["id"] = None if record_id is None else str(record_id)
    created = body.get("createdAt")
    body["createdAt"] = now if created is None else normalise_timestamp(created, "createdAt")
    updated = body.get("updatedAt")
    body["updatedAt"] = body["createdAt"] if updated is None else normalise_timestamp(updated, "updatedAt")
    return body


def _path_template(request: web.Request) -> str:
    """The route's template without /api ("/contacts/{id}"), or the raw path when unrouted."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return path.removeprefix(API_PREFIX) or "/"


async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        return error_response(error.status, f"Cannot {request.method} {request.path}")


async def _json_body(request: web.Request) -> JSON:
    if request.content_type != JSON_TYPE:
        raise ApiError(400, "Content-Type must be application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


async def _peek_json(request: web.Request) -> JSON | None:
    """The JSON object body for fault predicates, or None; aiohttp caches it for the handler."""
    if request.method not in ("POST", "PATCH", "PUT") or not request.can_read_body:
        return None
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP RST, so the client sees a reset rather than an answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into an abortive close (RST).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
