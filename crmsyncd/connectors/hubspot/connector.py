"""`HubSpotConnector`: HubSpot CRM v3 (contacts and deals) behind the connector port.

The parts: settings.py (the variables), client.py (errors, auth, pacing), records.py (HubSpot
objects as flat records), feed.py (search by stamp, archived list), writer.py (batches),
lookups.py (batch read, search), associations.py (a deal's contact), setup.py (the custom
properties). What the engine must know: `id_field` "id", `updated_field` "updatedAt",
`created_field` "createdAt", `max_batch` (HUBSPOT_BATCH_SIZE, 100), `upsert_many` by `email` for
contacts, and two outcomes that stop a pass: AUTH_FAILED and QUOTA_EXHAUSTED (the daily limit).
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime, timedelta

import aiohttp

from crmsyncd.connectors.base import RequestStats, SystemIdentity, normalised_base_url
from crmsyncd.connectors.hubspot.client import HubSpotClient, body_of
from crmsyncd.connectors.hubspot.feed import SearchFeed
from crmsyncd.connectors.hubspot.lookups import Lookups
from crmsyncd.connectors.hubspot.records import CREATED_FIELD, ID_FIELD, OBJECT_TYPES, UPDATED_FIELD
from crmsyncd.connectors.hubspot.settings import DEFAULT_PROPERTIES, HubSpotSettings
from crmsyncd.connectors.hubspot.writer import Writer
from crmsyncd.connectors.pacing import Clock
from crmsyncd.connectors.port import Checkpoint, FeedPage, WriteResult
from crmsyncd.domain.records import JSON, Side


class HubSpotConnector:
    side: Side = Side.CRM
    id_field: str = ID_FIELD
    updated_field: str = UPDATED_FIELD
    created_field: str | None = CREATED_FIELD

    def __init__(
        self,
        settings: HubSpotSettings,
        session: aiohttp.ClientSession,
        *,
        properties: Mapping[str, Sequence[str]] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`properties`: the properties to read per object type (the mapping's fields; the
        default mapping's when None). HubSpot answers only the properties asked for."""
        self.settings = settings
        self.client = HubSpotClient(settings, session, clock=clock, rng=rng)
        self.stats: RequestStats = self.client.stats
        wanted = {t: list(DEFAULT_PROPERTIES[t]) for t in OBJECT_TYPES}
        for object_type, names in (properties or {}).items():
            wanted[object_type] = list(dict.fromkeys(names))
        self.properties = wanted
        self.max_batch = settings.batch_size
        self.feed_lag = timedelta(seconds=settings.search_lag)
        self._writer = Writer(self.client, settings.batch_size)
        self._lookups = Lookups(self.client, wanted)

    def __repr__(self) -> str:
        return f"HubSpotConnector(base_url={self.settings.api_url!r})"

    async def identify(self) -> SystemIdentity:
        """The portal the credentials open (`GET /account-info/v3/details`), at the URL."""
        details = await self.client.call("GET", "/account-info/v3/details", kind="reads", parse=body_of)
        portal = details.get("portalId")
        account = str(portal) if isinstance(portal, int | str) and not isinstance(portal, bool) else None
        return SystemIdentity("hubspot", normalised_base_url(self.settings.api_url), account)

    def changes(
        self,
        resource: str,
        *,
        since: datetime | None,
        checkpoint: Checkpoint | None = None,
        max_requests: int | None = None,
    ) -> AsyncGenerator[FeedPage, None]:
        # The search re-anchors on lastmodifieddate alone: `checkpoint` holds no token for it.
        feed = SearchFeed(
            self.client,
            resource,
            since=since,
            page_size=self.settings.page_size,
            properties=self.properties.get(resource, []),
            max_requests=max_requests,
        )
        return feed.pages()

    async def create_many(self, resource: str, bodies: Sequence[JSON]) -> list[WriteResult]:
        return await self._writer.create_many(resource, bodies)

    async def update_many(self, resource: str, changes: Sequence[tuple[str, JSON]]) -> list[WriteResult]:
        return await self._writer.update_many(resource, changes)

    async def upsert_many(self, resource: str, key_field: str, bodies: Sequence[JSON]) -> list[WriteResult]:
        return await self._writer.upsert_many(resource, key_field, bodies)

    async def delete_many(self, resource: str, record_ids: Sequence[str]) -> list[WriteResult]:
        return await self._writer.delete_many(resource, record_ids)

    async def get_many(self, resource: str, record_ids: Sequence[str]) -> dict[str, JSON]:
        return await self._lookups.get_many(resource, record_ids)

    async def find_by_field(self, resource: str, field: str, value: str) -> list[JSON]:
        return await self._lookups.find_by_field(resource, field, value)

    async def close(self) -> None:
        """Nothing to release: the session is shared, and the app that made it closes it."""
