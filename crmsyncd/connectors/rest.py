"""A home-grown REST CRM (shared/api/custom-crm.md). Paths, parameter and field names come from
settings so that other CRMs of the same shape can be synced without code."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

import aiohttp
from pydantic import SecretStr

from crmsyncd.connectors.base import SystemIdentity, normalised_base_url
from crmsyncd.connectors.collection import CollectionConnector
from crmsyncd.connectors.http import ApiClient, RetryPolicy
from crmsyncd.connectors.pacing import Clock
from crmsyncd.domain.records import JSON, Side, format_timestamp


def _default_paths() -> Mapping[str, str]:
    return MappingProxyType({"contacts": "/contacts", "deals": "/deals"})


@dataclass(frozen=True)
class RestSettings:
    base_url: str  # e.g. http://127.0.0.1:8082/api, without a trailing slash
    api_key: SecretStr
    requests_per_minute: int | None = None
    timeout: float = 30.0
    # The variables a refused key or an unverifiable certificate tells the user to check.
    key_variable: str = "CRM_API_KEY"
    url_variable: str = "CRM_API_URL"
    read_attempts: int = 4
    page_size: int = 100
    paths: Mapping[str, str] = field(default_factory=_default_paths)
    id_field: str = "id"
    updated_field: str = "updatedAt"
    created_field: str | None = "createdAt"  # None: the CRM stamps no creation
    updated_after_param: str = "updatedAfter"
    page_param: str = "page"
    limit_param: str = "limit"
    sort_by_param: str = "sortBy"
    sort_order_param: str = "sortOrder"
    backoff_base: float = 0.5
    backoff_cap: float = 10.0
    rate_limit_tries: int = 6
    rate_limit_wait_cap: float = 65.0
    rate_limit_jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError("page_size must be positive")
        if self.requests_per_minute is not None and self.requests_per_minute < 1:
            raise ValueError("requests_per_minute must be positive or None")
        for resource, path in self.paths.items():
            if not path.startswith("/") or "?" in path or "#" in path:
                raise ValueError(f"path for {resource!r} must start with '/' and have no query")
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


class RestConnector(CollectionConnector):
    def __init__(
        self,
        settings: RestSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        client = ApiClient(
            side=Side.CRM,
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
            id_field=settings.id_field,
            updated_field=settings.updated_field,
            created_field=settings.created_field,
            page_size=settings.page_size,
            max_limit=None,
        )
        self.settings = settings

    async def identify(self) -> SystemIdentity:
        """The REST CRM names no account in its API: the base URL is the identity."""
        return SystemIdentity("rest", normalised_base_url(self.settings.base_url))

    def collection_path(self, resource: str) -> str:
        try:
            return self.settings.paths[resource]
        except KeyError:
            raise ValueError(f"no path configured for resource {resource!r}") from None

    def list_params(self, *, updated_after: datetime | None, page: int, limit: int) -> dict[str, str]:
        s = self.settings
        params = {
            s.page_param: str(page),
            s.limit_param: str(limit),
            s.sort_by_param: s.updated_field,
            s.sort_order_param: "asc",
        }
        if updated_after is not None:
            params[s.updated_after_param] = format_timestamp(updated_after)
        return params

    async def find_by_field(self, resource: str, field: str, value: str) -> list[JSON]:
        """`GET {path}?{field}={value}` is documented as exact and case-insensitive; the result is
        filtered again here, because a CRM of this shape may treat the filter loosely."""
        s = self.settings
        term = value.strip()

        def params_for_page(page: int) -> dict[str, str]:
            return {field: term, s.page_param: str(page), s.limit_param: str(s.page_size)}

        return await self.lookup(resource, params_for_page, field, value)
