"""HubSpot's HTTP side: its error envelope, what its answers mean, its two limits, its auth.

Errors come as `{"status", "message", "correlationId", "category", "errors": [{"message",
"code", "context": {"propertyName": [...]}}], "context"}` (developers.hubspot.com, error
handling; every field optional). The message kept for the error queue is the per-property
details where there are some (naming the property and HubSpot's code), else `message`, followed
by the category and the correlation id HubSpot's support asks for.

Beyond the status code:
- 401 EXPIRED_AUTHENTICATION: the OAuth access token expired: renew and repeat (REFRESH_AUTH);
- 429 with `policyName` DAILY: the day's requests are spent: QUOTA_EXHAUSTED, which stops the pass
  (waiting would take hours); TEN_SECONDLY_ROLLING and SECONDLY wait and retry as every 429 does.

Pacing: the 10-second rolling window from the X-HubSpot-RateLimit-* headers (`RollingWindowPacer`,
shared by every worker of the connector), and search apart, at its documented 5 a second per
account (its answers carry no headers), with a pacer of its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson

from crmsyncd.connectors.auth import AuthStrategy, OAuthClient, OAuthRefresh, StaticToken
from crmsyncd.connectors.base import Outcome, RequestStats
from crmsyncd.connectors.http import (
    ApiClient,
    ApiResponse,
    MalformedResponse,
    Method,
    RawAnswer,
    RequestKind,
    RetryPolicy,
    clip,
)
from crmsyncd.connectors.hubspot.settings import (
    OAUTH_VARIABLES,
    TOKEN_VARIABLE,
    URL_VARIABLE,
    HubSpotSettings,
)
from crmsyncd.connectors.pacing import Clock, HubSpotHeaders, Pacer, RollingWindowPacer, SystemClock
from crmsyncd.domain.records import JSON, Side

T = TypeVar("T")


def _document(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def describe_error(doc: Mapping[str, Any]) -> str:
    """One HubSpot error object (a whole answer, or an item of a 207's `errors`) as text."""
    details: list[str] = []
    for item in doc.get("errors") or []:
        if not isinstance(item, dict) or not item.get("message"):
            continue
        context = item.get("context") if isinstance(item.get("context"), dict) else {}
        names = context.get("propertyName") if context else None
        where = f", property {', '.join(map(str, names))}" if isinstance(names, list) and names else ""
        code = item.get("code") or "error"
        details.append(f"{item['message']} ({code}{where})")
    text = "; ".join(details) if details else str(doc.get("message") or "").strip()
    tags = [str(doc[key]) for key in ("category", "subCategory") if doc.get(key)]
    if doc.get("correlationId"):
        tags.append(f"correlationId {doc['correlationId']}")
    return clip(f"{text or 'no message'}" + (f" [{', '.join(tags)}]" if tags else ""))


def parse_error(answer: RawAnswer) -> str:
    doc = _document(answer.body)
    if doc is None:
        return clip(f"HTTP {answer.status} {answer.reason}".strip())
    if answer.status == 429 and doc.get("policyName") == "DAILY":
        return daily_message(answer.headers)
    return describe_error(doc)


def daily_message(headers: Mapping[str, str]) -> str:
    allowed = HubSpotHeaders(headers).daily
    budget = f" of {allowed} requests" if allowed is not None else ""
    return (
        f"HubSpot's daily API limit{budget} is spent (429 DAILY): the pass stops here, and syncing "
        "resumes after the limit resets at midnight in the portal's time zone"
    )


def classify(answer: RawAnswer) -> Outcome | None:
    doc = _document(answer.body)
    if doc is None:
        return None
    if answer.status == 401 and doc.get("category") == "EXPIRED_AUTHENTICATION":
        return Outcome.REFRESH_AUTH
    if answer.status == 429 and doc.get("policyName") == "DAILY":
        return Outcome.QUOTA_EXHAUSTED
    return None


def auth_strategy(settings: HubSpotSettings, session: aiohttp.ClientSession, clock: Clock) -> AuthStrategy:
    if not settings.oauth:
        assert settings.access_token is not None
        return StaticToken(settings.access_token, TOKEN_VARIABLE)
    assert settings.client_id and settings.client_secret and settings.refresh_token
    return OAuthRefresh(
        OAuthClient(
            settings.token_url,
            settings.client_id,
            settings.client_secret,
            settings.refresh_token,
            *OAUTH_VARIABLES,
        ),
        side=Side.CRM,
        session=session,
        timeout=settings.timeout,
        clock=clock,
    )


def body_of(response: ApiResponse) -> JSON:
    if not isinstance(response.body, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(response.body).__name__}")
    return response.body


def nothing(response: ApiResponse) -> None:
    return None


def next_after(body: JSON) -> str | None:
    """The `after` of a paged answer's next page; None on the last."""
    paging = body.get("paging")
    nxt = paging.get("next") if isinstance(paging, dict) else None
    after = nxt.get("after") if isinstance(nxt, dict) else None
    return str(after) if after not in (None, "") else None


class HubSpotClient:
    """The ApiClient with HubSpot's error reading, auth and two pacers."""

    def __init__(
        self,
        settings: HubSpotSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        settings.check()
        self.settings = settings
        clock = clock or SystemClock()
        rng = rng or random.Random()
        policy = RetryPolicy(
            read_attempts=settings.read_attempts,
            backoff_base=settings.backoff_base,
            backoff_cap=settings.backoff_cap,
            rate_limit_tries=settings.rate_limit_tries,
            rate_limit_wait_cap=settings.rate_limit_wait_cap,
            rate_limit_jitter=settings.rate_limit_jitter,
        )
        pacing: dict[str, Any] = {
            "clock": clock,
            "wait_cap": policy.rate_limit_wait_cap,
            "jitter": policy.rate_limit_jitter,
            "rng": rng,
        }
        self.auth = auth_strategy(settings, session, clock)
        self.api = ApiClient(
            side=Side.CRM,
            base_url=settings.api_url,
            url_variable=URL_VARIABLE,
            session=session,
            timeout=settings.timeout,
            requests_per_minute=settings.rate_limit,
            auth=self.auth,
            error_parser=parse_error,
            classifier=classify,
            pacer=RollingWindowPacer(settings.rate_limit, **pacing),
            policy=policy,
            clock=clock,
            rng=rng,
        )
        # A tenth below the limit: starts spaced at exactly 1/5 s arrive a few milliseconds closer
        # now and then, and HubSpot counts arrivals in its one-second window (at the limit itself,
        # about one search in seven was answered 429).
        self.search_pacer = Pacer(None, default_per_minute=max(1, settings.search_per_second * 54), **pacing)

    @property
    def stats(self) -> RequestStats:
        return self.api.stats

    async def call(
        self,
        method: Method,
        path: str,
        *,
        kind: RequestKind,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        read: bool | None = None,
        parse: Callable[[ApiResponse], T],
        expect_json: bool = True,
    ) -> T:
        return await self.api.request(
            method, path, kind=kind, body=body, params=params, read=read, parse=parse, expect_json=expect_json
        )

    async def search(self, object_type: str, body: JSON, *, kind: RequestKind) -> JSON:
        """`POST /crm/v3/objects/{type}/search`, paced by the search limit; a read."""
        return await self.api.request(
            "POST",
            f"/crm/v3/objects/{object_type}/search",
            kind=kind,
            body=body,
            read=True,
            pacer=self.search_pacer,
            parse=body_of,
        )
