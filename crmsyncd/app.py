"""Composition root: the only module that wires concrete classes together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from crmsyncd.config import Settings
from crmsyncd.connectors.base import SystemIdentity
from crmsyncd.connectors.ecosire import EcosireConnector, EcosireSettings
from crmsyncd.connectors.http import make_session
from crmsyncd.connectors.hubspot import HubSpotConnector, HubSpotSettings, load_hubspot_settings
from crmsyncd.connectors.hubspot.mapping import default_mapping as hubspot_default_mapping
from crmsyncd.connectors.port import Connector
from crmsyncd.connectors.rest import RestConnector, RestSettings
from crmsyncd.domain.mapping import EntitySpec, MappingSpec, load_mapping
from crmsyncd.domain.records import Side
from crmsyncd.engine.backfill import accept_resources, check_mapping_state
from crmsyncd.engine.context import EngineSettings
from crmsyncd.engine.jobs import SyncEngine
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import EmbeddedPostgres, Pool, create_pool
from crmsyncd.store.errors import Backoff
from crmsyncd.store.identity import IdentityStore
from crmsyncd.store.migrate import migrate

log = get_logger()


class DatabaseUnavailable(Exception):
    pass


@contextlib.asynccontextmanager
async def open_database(
    settings: Settings, *, apply_migrations: bool = True, stop_embedded: bool = False
) -> AsyncIterator[Pool]:
    """The state store: CRMSYNCD_DATABASE_URL, or the embedded server under CRMSYNCD_DATA_DIR."""
    embedded: EmbeddedPostgres | None = None
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
        where = "CRMSYNCD_DATABASE_URL"
    else:
        embedded = EmbeddedPostgres(Path(settings.data_dir) / "pgdata", stop_on_exit=stop_embedded)
        try:
            dsn = await embedded.start()
        except Exception as exc:
            raise DatabaseUnavailable(
                f"cannot start the embedded PostgreSQL under {settings.data_dir}: {exc}"
            ) from None
        where = f"embedded PostgreSQL in {settings.data_dir}"
    try:
        pool = await create_pool(dsn, max_size=max(4, min(settings.workers, 16)))
    except (OSError, ConnectionError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database ({where}): {exc}") from None
    except Exception as exc:  # asyncpg's own errors: bad password, unknown database, ...
        raise DatabaseUnavailable(f"cannot connect to the database ({where}): {type(exc).__name__}") from None
    try:
        if apply_migrations:
            await migrate(pool)
        yield pool
    finally:
        await pool.close()
        if embedded is not None and stop_embedded:
            await embedded.stop()


def build_connectors(
    settings: Settings,
    session: aiohttp.ClientSession,
    mapping: MappingSpec,
    *,
    hubspot: HubSpotSettings | None = None,
) -> dict[Side, Connector]:
    """`hubspot`: the HubSpot connector's settings given by code (the demo's sandbox), used
    instead of the HUBSPOT_* variables when CRMSYNCD_CRM is hubspot."""
    settings.require_remotes()
    assert settings.ecosire_api_key is not None
    ecosire = EcosireConnector(
        EcosireSettings(
            base_url=settings.ecosire_api_url,
            api_key=settings.ecosire_api_key,
            # None when ECOSIRE_RATE_LIMIT is unset, passed as such: the server's headers set the
            # pace (60 a minute until it sends any), where EcosireSettings' own default would cap it.
            requests_per_minute=settings.ecosire_rate_limit,
            timeout=settings.http_timeout,
        ),
        session,
    )
    if hubspot is not None and settings.crm == "hubspot":
        return {Side.ECOSIRE: ecosire, Side.CRM: _hubspot_crm(settings, session, mapping, hubspot)}
    return {Side.ECOSIRE: ecosire, Side.CRM: _CRMS[settings.crm](settings, session, mapping)}


def _rest_crm(settings: Settings, session: aiohttp.ClientSession, mapping: MappingSpec) -> Connector:
    assert settings.crm_api_url is not None and settings.crm_api_key is not None  # require_remotes
    return RestConnector(
        RestSettings(
            base_url=settings.crm_api_url,
            api_key=SecretStr(settings.crm_api_key.get_secret_value()),
            requests_per_minute=settings.crm_rate_limit,
            timeout=settings.http_timeout,
            page_size=settings.crm_page_size,
            paths=settings.crm_paths,
            id_field=settings.crm_id_field,
            updated_field=settings.crm_updated_field,
            updated_after_param=settings.crm_updated_after_param,
            page_param=settings.crm_page_param,
            limit_param=settings.crm_limit_param,
        ),
        session,
    )


def _hubspot_crm(
    settings: Settings,
    session: aiohttp.ClientSession,
    mapping: MappingSpec,
    given: HubSpotSettings | None = None,
) -> Connector:
    # ConfigError naming HUBSPOT_*
    hubspot = given if given is not None else load_hubspot_settings(timeout=settings.http_timeout)
    # HubSpot answers only the properties asked for: every CRM field the mapping names.
    properties: dict[str, list[str]] = {}
    for entity in mapping.entities:
        names = properties.setdefault(entity.crm, [])
        for spec in entity.fields:
            names.extend(spec.remote_names(Side.CRM))
    return HubSpotConnector(hubspot, session, properties=properties)


# The CRM connectors, by CRMSYNCD_CRM: the only place that knows which classes they are.
_CRMS: dict[str, Callable[[Settings, aiohttp.ClientSession, MappingSpec], Connector]] = {
    "rest": _rest_crm,
    "hubspot": _hubspot_crm,
}


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret the configuration holds, for the log scrubber: the CRM's own included."""
    held: list[SecretStr | None] = [
        settings.ecosire_api_key,
        settings.crm_api_key,
        settings.database_url,
        settings.http_token,
    ]
    if settings.crm == "hubspot":
        with contextlib.suppress(Exception):  # a bad setting is reported when it is used
            hubspot = HubSpotSettings()
            held += [hubspot.access_token, hubspot.client_id, hubspot.client_secret, hubspot.refresh_token]
    return [s.get_secret_value() for s in held if s is not None and s.get_secret_value()]


def configured_mapping(settings: Settings, *, allow_duplicates: bool = False) -> MappingSpec:
    """CRMSYNCD_MAPPING, or the built-in mapping of the configured CRM (the guide's table in
    that CRM's field names)."""
    if settings.mapping is None and settings.crm == "hubspot":
        return hubspot_default_mapping(allow_duplicates=allow_duplicates)
    return load_mapping(settings.mapping, allow_duplicates=allow_duplicates)


async def configured_systems(connectors: Mapping[Side, Connector]) -> dict[Side, SystemIdentity]:
    return {side: await connector.identify() for side, connector in connectors.items()}


async def bind_systems(pool: Pool, connectors: Mapping[Side, Connector]) -> None:
    """The state belongs to one pair of systems: recorded at the first start that syncs, and
    any later start configured for others raises SystemsChanged before a record is read."""
    configured = await configured_systems(connectors)
    binding = await IdentityStore(pool).bind(configured)
    for side in binding.recorded:
        log.info("systems_recorded", side=side.value, system=configured[side].describe())
    for m in binding.replaced:
        log.warning(
            "systems_rerecorded",
            side=m.side.value,
            was=m.recorded.describe(),
            now=m.configured.describe(),
            detail="nothing from the recorded system was stored yet",
        )


async def rebind_systems(settings: Settings) -> dict[Side, tuple[SystemIdentity | None, SystemIdentity]]:
    """`crmsyncd state rebind`: record the configured systems; per side, (replaced, recorded)."""
    async with open_database(settings) as pool:
        session = make_session(settings.http_timeout)
        try:
            configured = await configured_systems(
                build_connectors(settings, session, load_app_mapping(settings))
            )
        finally:
            await session.close()
        previous = await IdentityStore(pool).rebind(configured)
    return {side: (previous[side], identity) for side, identity in configured.items()}


async def accept_resource(settings: Settings, name: str) -> tuple[dict[Side, str], dict[Side, str]] | None:
    """`crmsyncd state accept-resource NAME`: the entity's resources as now configured become its
    own; (old, new) paths per side, None when nothing is stored for it."""
    mapping = load_app_mapping(settings)
    async with open_database(settings) as pool:
        session = make_session(settings.http_timeout)
        try:
            return await accept_resources(pool, mapping, build_connectors(settings, session, mapping), name)
        finally:
            await session.close()


@dataclass(slots=True)
class App:
    settings: Settings
    mapping: MappingSpec
    pool: Pool
    engine: SyncEngine
    connectors: dict[Side, Connector]

    @property
    def entities(self) -> tuple[EntitySpec, ...]:
        return self.mapping.select(self.settings.entities)

    def select(self, names: list[str] | None) -> tuple[EntitySpec, ...]:
        return self.mapping.select(names) if names else self.entities


def load_app_mapping(settings: Settings) -> MappingSpec:
    mapping = configured_mapping(settings)
    selected = mapping.select(settings.entities)  # an unknown entity in CRMSYNCD_ENTITIES fails now
    if settings.crm == "rest":
        # And a CRM_RESOURCE_PATHS key naming no mapped resource, before any request.
        settings.check_crm_paths({e.crm: e.name for e in mapping.entities}, [e.crm for e in selected])
    return mapping


@contextlib.asynccontextmanager
async def open_app(
    settings: Settings,
    mapping: MappingSpec | None = None,
    *,
    stop_embedded: bool = False,
    hubspot: HubSpotSettings | None = None,
) -> AsyncIterator[App]:
    mapping = mapping or load_app_mapping(settings)
    settings.require_remotes()
    async with open_database(settings, stop_embedded=stop_embedded) as pool:
        session = make_session(settings.http_timeout)
        try:
            connectors = build_connectors(settings, session, mapping, hubspot=hubspot)
            await bind_systems(pool, connectors)
            # A renamed entity or a moved resource is refused here, before a record is read.
            await check_mapping_state(pool, mapping, connectors)
            engine = SyncEngine(
                pool,
                connectors,
                EngineSettings(
                    workers=settings.workers,
                    queue_size=settings.queue_size,
                    overlap=timedelta(seconds=settings.overlap),
                    delete_guard=settings.delete_guard,
                    reconcile_budget=settings.reconcile_budget,
                    progress_interval=settings.progress_interval,
                ),
                Backoff(base_seconds=settings.retry_backoff, max_attempts=settings.max_attempts),
            )
            yield App(settings, mapping, pool, engine, connectors)
        finally:
            await session.close()
