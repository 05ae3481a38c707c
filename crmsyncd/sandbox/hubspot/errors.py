"""HubSpot's error envelope, and the wording of the errors the sandbox answers.

HubSpot answers errors as
`{"status": "error", "message": ..., "correlationId": <uuid>, "category": ..., "errors": [...],
"context": {...}}` (developers.hubspot.com/docs/api-reference/error-handling: "the fields ...
should all be treated as optional"). Per-property problems of a write come both ways HubSpot gives
them: embedded in `message` ("Property values were not valid: [{...}]", as the live API words it)
and as `errors` items with `code` (PROPERTY_DOESNT_EXIST, INVALID_OPTION, ...) and `context`.

Errors inside a 207 batch answer carry `status`, `category`, `message`, `context`, `errors` and
`links`: the SDK's `StandardError` model refuses an error without any of them.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from crmsyncd.sandbox.responses import JSON_TYPE

_correlation = itertools.count(1)


def correlation_id() -> str:
    """A uuid-shaped id per error, deterministic across runs (a counter, not randomness)."""
    return str(uuid.UUID(int=(0x5A4D << 112) | next(_correlation), version=4))


def json_answer(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON_TYPE, headers=headers)


@dataclass(frozen=True, slots=True)
class PropertyProblem:
    """One property value HubSpot refuses: `code` is HubSpot's (PROPERTY_DOESNT_EXIST, ...)."""

    name: str
    code: str
    message: str

    def legacy(self) -> dict[str, Any]:
        """The item of the list HubSpot embeds in its "Property values were not valid" message."""
        return {
            "isValid": False,
            "message": self.message,
            "error": self.code,
            "name": self.name,
            "localizedErrorMessage": self.message,
        }

    def detail(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code, "context": {"propertyName": [self.name]}}


@dataclass(slots=True)
class HubSpotError(Exception):
    """Raised below a handler; the middleware answers it in HubSpot's envelope."""

    status: int
    category: str
    message: str
    context: dict[str, list[str]] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    sub_category: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Further top-level fields of the body (a 429's errorType, policyName, groupName).
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.category}: {self.message}"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "error",
            "message": self.message,
            "correlationId": correlation_id(),
            "category": self.category,
        }
        if self.sub_category is not None:
            body["subCategory"] = self.sub_category
        if self.context:
            body["context"] = self.context
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body

    def batch_item(self) -> dict[str, Any]:
        """This error as one item of a 207 answer's `errors` (every field the SDK requires)."""
        item: dict[str, Any] = {
            "status": "error",
            "category": self.category,
            "message": self.message,
            "context": self.context or {},
            "errors": self.errors,
            "links": {},
        }
        if self.sub_category is not None:
            item["subCategory"] = self.sub_category
        return item

    def response(self) -> web.Response:
        return json_answer(self.body(), self.status, dict(self.headers))


def invalid_properties(problems: list[PropertyProblem]) -> HubSpotError:
    legacy = orjson.dumps([p.legacy() for p in problems]).decode()
    return HubSpotError(
        400,
        "VALIDATION_ERROR",
        f"Property values were not valid: {legacy}",
        errors=[p.detail() for p in problems],
    )


def validation(message: str, **context: list[str]) -> HubSpotError:
    return HubSpotError(400, "VALIDATION_ERROR", message, context=context or None)


def not_found(object_type: str, record_id: str) -> HubSpotError:
    return HubSpotError(
        404,
        "OBJECT_NOT_FOUND",
        f"Object not found.  objectId are usually numeric. ({object_type} {record_id})",
        context={"id": [record_id]},
    )


def unauthenticated() -> HubSpotError:
    # The live API's wording for a missing or unknown token.
    return HubSpotError(
        401,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
        "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
    )


def expired(seconds_ago: float) -> HubSpotError:
    # HubSpot words it in the largest whole unit: "expired 5 minute(s) ago".
    ago = max(0, int(seconds_ago))
    amount, unit = (ago // 60, "minute") if ago >= 60 else (ago, "second")
    return HubSpotError(
        401,
        "EXPIRED_AUTHENTICATION",
        f"The OAuth token used to make this call expired {amount} {unit}(s) ago.",
    )


def server_error(status: int) -> HubSpotError:
    """What a fault-injected 5xx (or other status) answers."""
    category = "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR"
    return HubSpotError(
        status, category, "internal error" if status >= 500 else "There was a problem with the request."
    )
