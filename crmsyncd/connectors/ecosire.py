"""ECOSIRE's REST API (shared/api/ecosire.md): polled, 60 requests a minute, free-text search."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from pydantic import SecretStr

from crmsyncd.connectors.base import SystemIdentity, normalised_base_url
from crmsyncd.connectors.collection import CollectionConnector
from crmsyncd.connectors.http import ApiClient, RetryPolicy
from crmsyncd.connectors.pacing import Clock
from crmsyncd.domain.records import JSON, Side, format_timestamp

MAX_LIMIT = 100  # ECOSIRE answers a larger `limit` with 400
_RESOURCE = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class EcosireSettings:
    base_url: str  # e.g. https://api.ecosire.com/api, without a trailing slash
    api_key: SecretStr
    # None: the server's X-RateLimit-* headers set the pace (the documented 60 until it sends any).
    requests_per_minute: int | None = None
    timeout: float = 30.0
    # The variables a refused key or an unverifiable certificate tells the user to check.
    key_variable: str = "ECOSIRE_API_KEY"
    url_variable: str = "ECOSIRE_API_URL"
    read_attempts: int = 4
    page_size: int = 100
    backoff_base: float = 0.5
    backoff_cap: float = 10.0
    rate_limit_tries: int = 6
    rate_limit_wait_cap: float = 65.0  # a fixed one-minute window never needs more
    rate_limit_jitter: float = 0.25

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_LIMIT:
            raise ValueError(f"page_size must be between 1 and {MAX_LIMIT}")
        if self.requests_per_minute is not None and self.requests_per_minute < 1:
            raise ValueError("requests_per_minute must be positive or None")
        self.retry_policy()  # validates the retry fields

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            read_attempts=self.read_attempts,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            rate_limit_tries=self.rate_limit_tries,
            rate_limit_wait_cap=self.rate_limit_wait_cap,
            rate_limit_jitter=self.rate_limit_jitter,
        )


class EcosireConnector(CollectionConnector):
    def __init__(
        self,
        settings: EcosireSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        client = ApiClient(
            side=Side.ECOSIRE,
            base_url=settings.base_url,
            api_key=settings.api_key,
            key_variable=settings.key_variable,
            url_variable=settings.url_variable,
            session=session,
            timeout=settings.timeout,
            requests_per_minute=settings.requests_per_minute,
            policy=settings.retry_policy(),
            clock=clock,
            rng=rng,
        )
        super().__init__(
            client,
            id_field="id",
            updated_field="updatedAt",
            page_size=settings.page_size,
            max_limit=MAX_LIMIT,
        )
        self.settings = settings

    async def identify(self) -> SystemIdentity:
        """ECOSIRE names no account in its API: the base URL is the identity."""
        return SystemIdentity("ecosire", normalised_base_url(self.settings.base_url))

    def collection_path(self, resource: str) -> str:
        if not _RESOURCE.fullmatch(resource):
            raise ValueError(f"not an ECOSIRE resource name: {resource!r}")
        return f"/{resource}"

    def list_params(self, *, updated_after: datetime | None, page: int, limit: int) -> dict[str, str]:
        params = {
            "page": str(page),
            "limit": str(limit),
            "sortBy": "updatedAt",
            "sortOrder": "asc",
        }
        if updated_after is not None:
            params["updatedAfter"] = format_timestamp(updated_after)
        return params

    async def find_by_field(self, resource: str, field: str, value: str) -> list[JSON]:
        """ECOSIRE has no exact filter, only `search`, free text over name and email: search,
        then keep exact (trimmed, case-folded) matches. Fields outside name/email find nothing."""
        term = value.strip()

        def params_for_page(page: int) -> dict[str, str]:
            # A fixed order keeps the pages of a multi-page search from shuffling.
            return {
                "search": term,
                "page": str(page),
                "limit": str(MAX_LIMIT),
                "sortBy": "createdAt",
                "sortOrder": "asc",
            }

        return await self.lookup(resource, params_for_page, field, value)
