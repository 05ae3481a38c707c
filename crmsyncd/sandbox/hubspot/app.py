"""`HubSpotSandbox`: a fake HubSpot CRM v3 account (portal) served by aiohttp on a real TCP port.

A request goes: count it -> added latency -> auth (the private-app token, or an OAuth access token
that has not expired) -> the account's limits (429 with HubSpot's body) -> fault rules -> the
handler. The OAuth token endpoint needs no bearer token and is not limited. The fault injection and
the admin endpoints are the other sandboxes' (`SandboxServer`): 5xx, 429, connection resets and
answers lost after commit, by method and route template ("POST /crm/v3/objects/contacts/batch/create").

Time: `clock` (the server clock, `SandboxServer.now()`) stamps records, expires access tokens and
settles the search index; `limiter.monotonic` runs the rate-limit windows. Tests replace both and
step them instead of sleeping.

What it imitates and what not: docs/hubspot-sandbox.md.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import ClassVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from crmsyncd.domain.records import JSON, Side, format_timestamp, parse_timestamp
from crmsyncd.sandbox.admin import ADMIN_PREFIX, admin_routes
from crmsyncd.sandbox.base import SandboxServer, _path_template
from crmsyncd.sandbox.hubspot import objects
from crmsyncd.sandbox.hubspot.associations import association_routes
from crmsyncd.sandbox.hubspot.batch import BatchPolicy, batch_routes
from crmsyncd.sandbox.hubspot.errors import (
    HubSpotError,
    expired,
    json_answer,
    server_error,
    unauthenticated,
    validation,
)
from crmsyncd.sandbox.hubspot.oauth import OAuthApp, oauth_routes
from crmsyncd.sandbox.hubspot.properties import already_exists, definition_from_request
from crmsyncd.sandbox.hubspot.ratelimit import AccountLimiter, Limits, rate_limited
from crmsyncd.sandbox.hubspot.search import search_routes
from crmsyncd.sandbox.hubspot.store import OBJECT_TYPES, HubObject, Portal
from crmsyncd.sandbox.schema import Schema
from crmsyncd.sandbox.store import IdFactory

log = logging.getLogger(__name__)

# A private-app token's shape (pat-<region>-<uuid>); a fixed test value, not a secret.
DEFAULT_HUBSPOT_TOKEN = "pat-na1-5a4d0000-0000-4000-8000-000000000001"  # noqa: S105
DEFAULT_PORTAL_ID = 4455667
# Seconds until a write is searchable. HubSpot says "a few moments"; tests that want none set 0.
DEFAULT_SEARCH_LAG = 3.0


class HubSpotSandbox(SandboxServer):
    side: ClassVar[Side] = Side.CRM
    schemas: ClassVar[Mapping[str, Schema]] = {}
    api_prefix: ClassVar[str] = ""  # HubSpot serves from the root: https://api.hubapi.com/crm/v3/...

    def __init__(
        self,
        access_token: str = DEFAULT_HUBSPOT_TOKEN,
        *,
        portal_id: int = DEFAULT_PORTAL_ID,
        search_lag: float = DEFAULT_SEARCH_LAG,
        limits: Limits | None = None,
        oauth: OAuthApp | None = None,
        batch: BatchPolicy | None = None,
        latency: float = 0.0,
        clock_offset: float = 0.0,
    ) -> None:
        super().__init__(access_token, rate_limit_per_minute=None, latency=latency, clock_offset=clock_offset)
        self.portal_id = portal_id
        self.search_lag = search_lag
        self.portal = Portal()
        self.limiter = AccountLimiter(portal_id)
        if limits is not None:
            self.limiter.limits = limits
        self.oauth = oauth if oauth is not None else OAuthApp()
        self.batch = batch if batch is not None else BatchPolicy()

    @property
    def limits(self) -> Limits:
        """The account's limits; change any field at any time (the next request sees it)."""
        return self.limiter.limits

    def _id_factories(self, seed: int) -> dict[str, IdFactory]:
        return {}  # the portal numbers its own objects

    def resource_names(self) -> tuple[str, ...]:
        return OBJECT_TYPES

    # ----- direct access for tests and the demo (no HTTP, not counted, not limited) -------------

    def seed(self, resource: str, records: list[JSON]) -> list[JSON]:
        """Store objects given as `{"id"?, "properties": {...}, "createdAt"?, "updatedAt"?,
        "archived"?, "associations"?: {"contacts": [ids]}}`, searchable at once (data that has
        been there a while). Values are stored as strings, unchecked: a test may plant what the
        API would refuse. An id already present is a ValueError."""
        self._check_resource(resource)
        now = self.now()
        stamp = format_timestamp(now)
        planned: list[HubObject] = []
        taken = {obj.id for obj in self.portal.objects(resource)}
        for given in records:
            raw_id = given.get("id")
            object_id = None if raw_id is None else str(raw_id)
            if object_id is not None:
                if object_id in taken:
                    raise ValueError(f"{resource} {object_id} already exists")
                taken.add(object_id)
            properties = {
                str(k): _text(v) for k, v in (given.get("properties") or {}).items() if v is not None
            }
            if resource == "contacts" and "email" in properties:
                properties["email"] = properties["email"].strip().lower()
            created = _stamp(given.get("createdAt"), stamp, "createdAt")
            updated = _stamp(given.get("updatedAt"), created, "updatedAt")
            archived = bool(given.get("archived", False))
            planned.append(
                HubObject(
                    object_id or "", properties, created, updated, archived, updated if archived else None
                )
            )
        stored: list[JSON] = []
        for given, obj in zip(records, planned, strict=True):
            if not obj.id:
                obj.id = self.portal.new_id(resource)
            self.portal.put(resource, obj, now, lag=0.0)
            for to_type, ids in (given.get("associations") or {}).items():
                for to_id in ids:
                    self.portal.associate(resource, obj.id, str(to_type), str(to_id))
            stored.append(self._full(resource, obj))
        return stored

    def records(self, resource: str) -> list[JSON]:
        """Every object, archived ones included, with all its properties."""
        self._check_resource(resource)
        return [self._full(resource, obj) for obj in self.portal.objects(resource)]

    def get_record(self, resource: str, record_id: str) -> JSON | None:
        self._check_resource(resource)
        obj = self.portal.get(resource, record_id) or self.portal.get(resource, record_id, archived=True)
        return None if obj is None else self._full(resource, obj)

    def edit(self, resource: str, record_id: str, **fields: object) -> JSON:
        """Change properties as a user of HubSpot's UI would (unchecked; None clears); the object's
        stamp moves to now, or to an explicit `updatedAt=...`. Searchable after the index lag."""
        self._check_resource(resource)
        obj = self.portal.get(resource, record_id)
        if obj is None:
            raise KeyError(f"{resource} {record_id} not found")
        if "id" in fields:
            raise ValueError("an object's id cannot be edited")
        updated = fields.pop("updatedAt", None)
        for name, value in fields.items():
            if value is None:
                obj.properties.pop(name, None)
            else:
                obj.properties[name] = _text(value)
        now = self.now()
        obj.updated_at = format_timestamp(now) if updated is None else _stamp(updated, "", "updatedAt")
        self.portal.put(resource, obj, now, lag=self.search_lag)
        return self._full(resource, obj)

    def archive(self, resource: str, record_id: str) -> None:
        """Archive an object as a user would (to the recycle bin): `archived=true` lists it."""
        self._check_resource(resource)
        obj = self.portal.get(resource, record_id)
        if obj is None:
            raise KeyError(f"{resource} {record_id} not found")
        objects.archive(self, resource, obj)

    def remove(self, resource: str, record_id: str) -> None:
        """Delete for good (as a GDPR delete does); later calls for the id get 404."""
        self._check_resource(resource)
        if not self.portal.delete(resource, record_id, self.now(), lag=self.search_lag):
            raise KeyError(f"{resource} {record_id} not found")

    def _check_resource(self, resource: str) -> None:
        if resource not in OBJECT_TYPES:
            raise KeyError(f"unknown resource {resource!r}")

    def _full(self, resource: str, obj: HubObject) -> JSON:
        names = sorted(set(self.portal.definitions[resource]) | set(obj.properties))
        body = self.portal.wire(resource, obj, names)
        body["properties"] = {k: v for k, v in body["properties"].items() if v is not None}
        return objects.with_associations(
            self, resource, obj, body, [t for t in OBJECT_TYPES if t != resource]
        )

    # ----- the app ------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware()])
        app.on_response_prepare.append(self._set_date)
        routes: list[web.RouteDef] = [
            *oauth_routes(self),
            web.get("/account-info/v3/details", self._account, allow_head=False),
        ]
        for object_type in OBJECT_TYPES:
            routes += search_routes(self, object_type)  # before /{id}: "search" is no id
            routes += batch_routes(self, object_type)
            routes += objects.object_routes(self, object_type)
            routes += self._property_routes(object_type)
        routes += association_routes(self, "deals", "contacts")
        routes += association_routes(self, "contacts", "deals")
        app.router.add_routes([_answering(route) for route in routes])
        app.router.add_routes(admin_routes(self))
        app.router.add_routes(
            [
                web.get(f"{ADMIN_PREFIX}/hubspot", self._admin_settings, allow_head=False),
                web.put(f"{ADMIN_PREFIX}/hubspot", self._admin_settings),
            ]
        )
        return app

    async def _admin_settings(self, request: web.Request) -> web.StreamResponse:
        """`GET|PUT /__sandbox/hubspot`: the knobs a test in another process turns. PUT takes any of
        `search_lag` (seconds), `limits` ({field of Limits: value or null}), `expires_in`,
        `rotate_refresh_tokens`, `expire_tokens` (true: every access token expires now)."""
        if request.method == "PUT":
            try:
                self._apply_settings(await objects.json_body(request))
            except HubSpotError as error:
                return error.response()
        limits = self.limits
        return json_answer(
            {
                "search_lag": self.search_lag,
                "limits": {name: getattr(limits, name) for name in Limits.__slots__},
                "expires_in": self.oauth.expires_in,
                "rotate_refresh_tokens": self.oauth.rotate_refresh_tokens,
                "portal_id": self.portal_id,
            }
        )

    def _apply_settings(self, body: JSON) -> None:
        unknown = sorted(
            set(body) - {"search_lag", "limits", "expires_in", "rotate_refresh_tokens", "expire_tokens"}
        )
        if unknown:
            raise validation(f"unknown settings: {', '.join(unknown)}")
        if "search_lag" in body:
            self.search_lag = float(_number(body["search_lag"], "search_lag"))
        for name, value in (body.get("limits") or {}).items():
            if name not in Limits.__slots__:
                raise validation(f"unknown limit {name!r}: one of {', '.join(Limits.__slots__)}")
            if name == "search_headers":
                setattr(self.limits, name, bool(value))
            else:
                setattr(self.limits, name, None if value is None else int(_number(value, name)))
        if "expires_in" in body:
            self.oauth.expires_in = int(_number(body["expires_in"], "expires_in"))
        if "rotate_refresh_tokens" in body:
            self.oauth.rotate_refresh_tokens = bool(body["rotate_refresh_tokens"])
        if body.get("expire_tokens"):
            self.oauth.expire_all(self.now())

    def _property_routes(self, object_type: str) -> list[web.RouteDef]:
        base = f"/crm/v3/properties/{object_type}"
        definitions = self.portal.definitions[object_type]

        async def list_properties(request: web.Request) -> web.StreamResponse:
            return json_answer({"results": [d.wire() for d in definitions.values()]})

        async def read_property(request: web.Request) -> web.StreamResponse:
            found = definitions.get(request.match_info["name"])
            if found is None:
                raise HubSpotError(
                    404,
                    "OBJECT_NOT_FOUND",
                    f"Unable to find property {request.match_info['name']}",
                    context={"name": [request.match_info["name"]]},
                )
            return json_answer(found.wire())

        async def create_property(request: web.Request) -> web.StreamResponse:
            definition = definition_from_request(
                await objects.json_body(request), format_timestamp(self.now())
            )
            if definition.name in definitions:
                raise already_exists(definition.name)
            definitions[definition.name] = definition
            return json_answer(definition.wire(), 201)

        return [
            web.get(base, list_properties, allow_head=False),
            web.post(base, create_property),
            web.get(f"{base}/{{name}}", read_property, allow_head=False),
        ]

    async def _account(self, request: web.Request) -> web.StreamResponse:
        return json_answer(
            {
                "portalId": self.portal_id,
                "accountType": "STANDARD",
                "timeZone": "Etc/UTC",
                "companyCurrency": "EUR",
                "additionalCurrencies": [],
                "utcOffset": "+00:00",
                "utcOffsetMilliseconds": 0,
                "uiDomain": "app.hubspot.com",
                "dataHostingLocation": "na1",
            }
        )

    def _middleware(self) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith(ADMIN_PREFIX + "/"):
                return await handler(request)  # no auth, no limit, no faults, not counted
            return await self._api_request(request, handler)

        return middleware

    async def _api_request(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = _path_template(request)
        self.requests[f"{request.method} {path}"] += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        headers: dict[str, str] = {}
        try:
            if not path.startswith("/oauth/"):
                oauth = self._authenticate_hubspot(request)
                verdict = self.limiter.check(
                    search=path.endswith("/search"), oauth=oauth, today=self.now().date()
                )
                headers = verdict.headers
                if verdict.refusal is not None:
                    raise verdict.refusal
            response = await self._apply_faults(request, handler, path)
        except HubSpotError as error:
            response = error.response()
        except web.HTTPException as error:  # the router's own 404 / 405
            response = HubSpotError(
                error.status,
                "OBJECT_NOT_FOUND" if error.status == 404 else "VALIDATION_ERROR",
                f"Cannot {request.method} {request.path}",
            ).response()
        except Exception:
            log.exception("hubspot sandbox handler failed")
            response = server_error(500).response()
        if response.status == 429:
            self.requests["rate_limited"] += 1
        for name, value in headers.items():
            response.headers.setdefault(name, value)  # a fault's own headers win
        return response

    def _authenticate_hubspot(self, request: web.Request) -> bool:
        """True for an OAuth access token, False for the private-app token; else a 401."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated()
        if _same(token, self.api_key):
            return False
        access = self.oauth.access_token(token)
        if access is None:
            raise unauthenticated()
        left = (access.expires_at - self.now()).total_seconds()
        if left <= 0:
            raise expired(-left)
        return True

    def _fault_response(self, status: int) -> web.Response:
        if status == 429:
            headers = self.limiter.fault_headers(oauth=False)
            return rate_limited(
                "TEN_SECONDLY_ROLLING", "ten_secondly_rolling", self.portal_id, headers
            ).response()
        return server_error(status).response()


def _answering(route: web.RouteDef) -> web.RouteDef:
    """The route with HubSpot's errors answered by the handler itself, so that a fault rule that
    lets the write happen first (after_commit) sees the real answer, refusals included."""
    handler = route.handler

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HubSpotError as error:
            return error.response()

    return web.RouteDef(route.method, route.path, answer, route.kwargs)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise validation(f"{name} must be a number of at least 0, got {value!r}")
    return float(value)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _stamp(value: object, default: str, field: str) -> str:
    return default if value is None else format_timestamp(parse_timestamp(value, field))


async def run_hubspot_sandbox(
    host: str,
    port: int,
    *,
    seed_demo: bool = False,
    on_ready: Callable[[HubSpotSandbox], object] | None = None,
) -> None:
    """Serve a HubSpot sandbox until cancelled, after printing how to reach it; `seed_demo`
    loads the demo data set (sandbox/hubspot/seed.py), its custom properties created first.

    The token and OAuth client values are printed on purpose: they are the sandbox's fixed test
    values, not secrets."""
    from crmsyncd.sandbox.server import serve

    async with serve(HubSpotSandbox(), host, port) as hub:
        if seed_demo:
            from crmsyncd.sandbox.hubspot.seed import hubspot_demo_dataset, prepare_demo_portal

            for line in await prepare_demo_portal(hub, hubspot_demo_dataset()[1]):
                print(f"demo data set: {line}")
            counts = ", ".join(f"{len(hub.records(t))} {t}" for t in OBJECT_TYPES)
            print(f"demo data set: {counts} loaded")
        app = hub.oauth
        print(f"HubSpot sandbox  HUBSPOT_API_URL={hub.url}  HUBSPOT_ACCESS_TOKEN={hub.api_key}")
        print(
            f"OAuth            HUBSPOT_CLIENT_ID={app.client_id}  HUBSPOT_CLIENT_SECRET={app.client_secret}"
            f"  HUBSPOT_REFRESH_TOKEN={app.refresh_tokens[0]}"
        )
        print(f"admin endpoints  {hub.admin_url}", flush=True)
        if on_ready is not None:
            on_ready(hub)
        await asyncio.Event().wait()  # until the caller cancels us (Ctrl-C in the CLI)
