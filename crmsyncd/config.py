"""Settings from the environment, validated once at start-up by pydantic-settings.

Every problem is reported by the variable's name with what was expected; secrets are SecretStr
and their values never appear in a message."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RESERVED_CRMS = ("salesforce", "pipedrive")
# The longest interval or timeout accepted (ten years): a larger one overflows the scheduler's
# dates or a timedelta after start-up instead of being refused at it.
MAX_SECONDS = 10 * 365 * 86400.0


class ConfigError(Exception):
    """Bad configuration; each line names a variable and the reason. The CLI exits 2 on it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


class Settings(BaseSettings):
    # No inf or nan: `inf` seconds passes gt=0 and then overflows a timedelta mid-run.
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=False, frozen=True, allow_inf_nan=False
    )

    database_url: SecretStr | None = Field(None, validation_alias="CRMSYNCD_DATABASE_URL")
    data_dir: Path = Field(Path.home() / ".crmsyncd", validation_alias="CRMSYNCD_DATA_DIR")
    ecosire_api_url: str = Field("https://api.ecosire.com/api", validation_alias="ECOSIRE_API_URL")
    ecosire_api_key: SecretStr | None = Field(None, validation_alias="ECOSIRE_API_KEY")
    # Requests per minute; unset: the server's X-RateLimit-* headers alone set the pace (60 a minute
    # until the server has sent any); set: the pace without headers, and a cap on the server's.
    ecosire_rate_limit: Annotated[int, Field(gt=0)] | None = Field(
        None, validation_alias="ECOSIRE_RATE_LIMIT"
    )
    crm: Literal["rest", "hubspot", "salesforce", "pipedrive"] = Field(
        "rest", validation_alias="CRMSYNCD_CRM"
    )
    crm_api_url: str | None = Field(None, validation_alias="CRM_API_URL")
    crm_api_key: SecretStr | None = Field(None, validation_alias="CRM_API_KEY")
    # The same for the CRM, except that unset with no headers means unlimited.
    crm_rate_limit: Annotated[int, Field(gt=0)] | None = Field(None, validation_alias="CRM_RATE_LIMIT")
    crm_resource_paths: str = Field("contacts=/contacts,deals=/deals", validation_alias="CRM_RESOURCE_PATHS")
    crm_id_field: str = Field("id", validation_alias="CRM_ID_FIELD")
    crm_updated_field: str = Field("updatedAt", validation_alias="CRM_UPDATED_FIELD")
    crm_updated_after_param: str = Field("updatedAfter", validation_alias="CRM_UPDATED_AFTER_PARAM")
    crm_page_param: str = Field("page", validation_alias="CRM_PAGE_PARAM")
    crm_limit_param: str = Field("limit", validation_alias="CRM_LIMIT_PARAM")
    crm_page_size: Annotated[int, Field(gt=0, le=1000)] = Field(100, validation_alias="CRM_PAGE_SIZE")
    mapping: Path | None = Field(None, validation_alias="CRMSYNCD_MAPPING")
    entities_text: str = Field("contacts,deals", validation_alias="CRMSYNCD_ENTITIES")
    sync_interval: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = Field(
        300.0, validation_alias="CRMSYNCD_SYNC_INTERVAL"
    )
    retry_interval: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = Field(
        1800.0, validation_alias="CRMSYNCD_RETRY_INTERVAL"
    )
    retry_backoff: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = Field(
        60.0, validation_alias="CRMSYNCD_RETRY_BACKOFF"
    )
    # Seconds before a pass that found an entity locked by another replica tries it again
    # (jittered); unset: derived from the job's interval (daemon.busy_retry_delay).
    busy_retry: Annotated[float, Field(gt=0, le=MAX_SECONDS)] | None = Field(
        None, validation_alias="CRMSYNCD_BUSY_RETRY"
    )
    reconcile_interval: Annotated[float, Field(ge=0, le=MAX_SECONDS)] = Field(
        86400.0, validation_alias="CRMSYNCD_RECONCILE_INTERVAL"
    )
    reconcile_budget: Annotated[int, Field(ge=1)] = Field(1000, validation_alias="CRMSYNCD_RECONCILE_BUDGET")
    delete_guard: Annotated[float, Field(gt=0, le=1)] = Field(0.1, validation_alias="CRMSYNCD_DELETE_GUARD")
    max_attempts: Annotated[int, Field(ge=1)] = Field(5, validation_alias="CRMSYNCD_MAX_ATTEMPTS")
    # Days of pass history and resolved error rows kept (`crmsyncd prune`, the daemon daily).
    history_days: Annotated[int, Field(gt=0, le=36500)] = Field(30, validation_alias="CRMSYNCD_HISTORY_DAYS")
    workers: Annotated[int, Field(ge=1, le=256)] = Field(32, validation_alias="CRMSYNCD_WORKERS")
    queue_size: Annotated[int, Field(ge=1)] = Field(200, validation_alias="CRMSYNCD_QUEUE_SIZE")
    overlap: Annotated[float, Field(ge=0, le=MAX_SECONDS)] = Field(2.0, validation_alias="CRMSYNCD_OVERLAP")
    http_timeout: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = Field(
        30.0, validation_alias="CRMSYNCD_HTTP_TIMEOUT"
    )
    # Seconds between a long pass's progress lines (a pass shorter than one logs none).
    progress_interval: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = Field(
        10.0, validation_alias="CRMSYNCD_PROGRESS_INTERVAL"
    )
    # The daemon's HTTP server (probes, metrics, status page): loopback unless told otherwise.
    http_host: str = Field("127.0.0.1", min_length=1, validation_alias="CRMSYNCD_HTTP_HOST")
    http_port: Annotated[int, Field(ge=0, le=65535)] = Field(8080, validation_alias="CRMSYNCD_HTTP_PORT")
    http_token: SecretStr | None = Field(None, validation_alias="CRMSYNCD_HTTP_TOKEN")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias="CRMSYNCD_LOG_LEVEL"
    )
    log_format: Literal["json", "console"] = Field("json", validation_alias="CRMSYNCD_LOG_FORMAT")

    @field_validator("log_level", "crm", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "crm_id_field", "crm_updated_field", "crm_updated_after_param", "crm_page_param", "crm_limit_param"
    )
    @classmethod
    def _name(cls, value: str) -> str:
        # A blank name reaches the CRM as a list parameter or a record field that is never
        # there, and the pass fails on the first page instead of the start.
        value = value.strip()
        if not value or any(c.isspace() or c in "&=?#" for c in value):
            raise ValueError("expected a field or parameter name, without spaces or &=?#")
        return value

    @field_validator("crm_api_url", "ecosire_api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @property
    def entities(self) -> list[str]:
        return [e.strip() for e in self.entities_text.split(",") if e.strip()]

    @property
    def crm_paths(self) -> dict[str, str]:
        """CRM_RESOURCE_PATHS as {CRM resource: path}, trimmed (load_settings checked its form)."""
        return dict(_path_items(self.crm_resource_paths))

    def check_crm_paths(self, resources: Mapping[str, str], needed: Collection[str]) -> None:
        """CRM_RESOURCE_PATHS against the mapping, at start: a key naming no CRM resource of the
        mapping (a typo) would otherwise leave its entity without a path, found mid-pass.
        `resources`: each CRM resource of the mapping and its entity; `needed`: those synced."""
        paths = self.crm_paths
        valid = ", ".join(sorted(resources))
        problems = [
            f"CRM_RESOURCE_PATHS: unknown key {key!r}, not a CRM resource of the mapping "
            f"(valid keys: {valid})"
            for key in paths
            # The default names the built-in mapping's resources; a mapping without them is not
            # the user's typo (a resource of theirs without a path is reported below).
            if key not in resources and "crm_resource_paths" in self.model_fields_set
        ]
        problems += [
            f"CRM_RESOURCE_PATHS: no path for the CRM resource {resource!r} of entity "
            f"{resources[resource]!r}; add {resource}=/PATH (valid keys: {valid})"
            for resource in needed
            if resource not in paths
        ]
        if problems:
            raise ConfigError(problems)

    def require_remotes(self) -> None:
        """The remote settings that commands talking to both APIs need."""
        problems = []
        if self.ecosire_api_key is None or not self.ecosire_api_key.get_secret_value().strip():
            problems.append("ECOSIRE_API_KEY: required, the ECOSIRE API key (eco_live_...)")
        if self.crm in RESERVED_CRMS:
            problems.append(
                f"CRMSYNCD_CRM: {self.crm!r} is reserved for a connector that is not built yet; "
                "use 'rest' or 'hubspot'"
            )
        if self.crm == "rest":
            # Each other CRM's connector reads and checks its own settings (connectors/<crm>/).
            if self.crm_api_url is None:
                problems.append("CRM_API_URL: required, the CRM's base URL (e.g. https://crm.example/api)")
            if self.crm_api_key is None or not self.crm_api_key.get_secret_value().strip():
                problems.append("CRM_API_KEY: required, the CRM's API key")
        if problems:
            raise ConfigError(problems)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None
    problems = []
    if not settings.entities:
        problems.append("CRMSYNCD_ENTITIES: expected a comma-separated list such as contacts,deals")
    problems += _path_problems(settings.crm_resource_paths)
    if problems:
        raise ConfigError(problems)
    return settings


def _path_items(text: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for item in text.split(","):
        if item.strip():
            key, _, path = item.partition("=")
            items.append((key.strip(), path.strip()))
    return items


def _path_problems(text: str) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, _, path = (part.strip() for part in item.partition("="))
        if not key or not path.startswith("/"):
            problems.append(
                f"CRM_RESOURCE_PATHS: expected resource=/path pairs separated by commas, got {item!r}"
            )
        elif "?" in path or "#" in path:
            problems.append(
                f"CRM_RESOURCE_PATHS: the path of {key!r} takes no query or fragment, got {path!r}"
            )
        elif key in seen:
            problems.append(f"CRM_RESOURCE_PATHS: {key!r} given twice")
        seen.add(key)
    return problems


_SECRET_VARS = {"ECOSIRE_API_KEY", "CRM_API_KEY", "CRMSYNCD_DATABASE_URL", "CRMSYNCD_HTTP_TOKEN"}


def _describe(err: Any) -> str:
    name = ".".join(str(part) for part in err["loc"]) or "settings"
    message = str(err["msg"])
    if name in _SECRET_VARS or "input" not in err:
        return f"{name}: {message}"
    shown = repr(err["input"])
    return f"{name}: {message} (got {shown[:60]})"
