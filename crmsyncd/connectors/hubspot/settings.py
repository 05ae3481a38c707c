"""The HubSpot connector's settings, from the environment, validated at start-up.

Two ways to authenticate, exactly one of them set:
- a private app's access token, `HUBSPOT_ACCESS_TOKEN` (pat-...), which does not expire;
- an OAuth app installed in the portal: `HUBSPOT_CLIENT_ID`, `HUBSPOT_CLIENT_SECRET` and
  `HUBSPOT_REFRESH_TOKEN`, all three; access tokens are then fetched and renewed by the connector.

Every problem names its variable; secrets are SecretStr and never shown.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crmsyncd.config import ConfigError

DEFAULT_API_URL = "https://api.hubapi.com"
SEARCH_LIMIT = 200  # HubSpot's largest search page
BATCH_LIMIT = 100  # HubSpot's largest batch
OAUTH_VARIABLES = ("HUBSPOT_CLIENT_ID", "HUBSPOT_CLIENT_SECRET", "HUBSPOT_REFRESH_TOKEN")
TOKEN_VARIABLE = "HUBSPOT_ACCESS_TOKEN"  # noqa: S105 (a variable's name)
URL_VARIABLE = "HUBSPOT_API_URL"
_SECRETS = {TOKEN_VARIABLE, *OAUTH_VARIABLES}
# The properties read when the caller names none: the default mapping's (default_mapping.toml),
# which HubSpot would not all send unasked (it answers a handful of defaults).
DEFAULT_PROPERTIES = {
    "contacts": ("email", "firstname", "lastname", "phone", "ecosire_type", "ecosire_tags"),
    "deals": ("dealname", "amount", "deal_currency_code", "dealstage", "closedate", "pipeline"),
}


class HubSpotSettings(BaseSettings):
    """Each field reads its HUBSPOT_* variable; code may give it by the field's name instead."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, allow_inf_nan=False, populate_by_name=True)

    access_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices(TOKEN_VARIABLE, "access_token")
    )
    client_id: SecretStr | None = Field(None, validation_alias=AliasChoices("HUBSPOT_CLIENT_ID", "client_id"))
    client_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("HUBSPOT_CLIENT_SECRET", "client_secret")
    )
    refresh_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("HUBSPOT_REFRESH_TOKEN", "refresh_token")
    )
    api_url: str = Field(DEFAULT_API_URL, validation_alias=AliasChoices(URL_VARIABLE, "api_url"))
    page_size: Annotated[int, Field(ge=1, le=SEARCH_LIMIT)] = Field(
        SEARCH_LIMIT, validation_alias=AliasChoices("HUBSPOT_PAGE_SIZE", "page_size")
    )
    batch_size: Annotated[int, Field(ge=1, le=BATCH_LIMIT)] = Field(
        BATCH_LIMIT, validation_alias=AliasChoices("HUBSPOT_BATCH_SIZE", "batch_size")
    )
    # A cap in requests per minute on the pace HubSpot's headers set (unset: the headers alone).
    rate_limit: Annotated[int, Field(gt=0)] | None = Field(
        None, validation_alias=AliasChoices("HUBSPOT_RATE_LIMIT", "rate_limit")
    )
    # HubSpot documents 5 search requests a second per account; its answers carry no headers.
    search_per_second: Annotated[int, Field(ge=1, le=100)] = Field(
        5, validation_alias=AliasChoices("HUBSPOT_SEARCH_RATE", "search_per_second")
    )
    # Seconds a write may take to become searchable ("a few moments", say HubSpot's docs): a
    # create whose answer was lost is not taken for absent by a search made sooner than this.
    search_lag: Annotated[float, Field(ge=0, le=3600)] = Field(
        15.0, validation_alias=AliasChoices("HUBSPOT_SEARCH_LAG", "search_lag")
    )
    # Set by the caller (the app passes CRMSYNCD_HTTP_TIMEOUT and its retry settings).
    timeout: Annotated[float, Field(gt=0)] = Field(30.0, validation_alias=AliasChoices("timeout"))
    read_attempts: Annotated[int, Field(ge=1)] = Field(4, validation_alias=AliasChoices("read_attempts"))
    backoff_base: Annotated[float, Field(ge=0)] = Field(0.5, validation_alias=AliasChoices("backoff_base"))
    backoff_cap: Annotated[float, Field(ge=0)] = Field(10.0, validation_alias=AliasChoices("backoff_cap"))
    rate_limit_tries: Annotated[int, Field(ge=1)] = Field(
        6, validation_alias=AliasChoices("rate_limit_tries")
    )
    # A 10-second rolling window never needs more.
    rate_limit_wait_cap: Annotated[float, Field(ge=0)] = Field(
        15.0, validation_alias=AliasChoices("rate_limit_wait_cap")
    )
    rate_limit_jitter: Annotated[float, Field(ge=0)] = Field(
        0.25, validation_alias=AliasChoices("rate_limit_jitter")
    )

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @property
    def oauth(self) -> bool:
        return self.access_token is None or not self.access_token.get_secret_value().strip()

    def problems(self) -> list[str]:
        """What is wrong with the credentials, each naming its variables; [] when usable."""
        token = _set(self.access_token)
        oauth = dict(
            zip(
                OAUTH_VARIABLES,
                map(_set, (self.client_id, self.client_secret, self.refresh_token)),
                strict=True,
            )
        )
        given = [name for name, present in oauth.items() if present]
        either = (
            f"either {TOKEN_VARIABLE} (a private app's access token) or {', '.join(OAUTH_VARIABLES[:2])} "
            f"and {OAUTH_VARIABLES[2]} (an OAuth app)"
        )
        if token and given:
            return [f"{TOKEN_VARIABLE}, {', '.join(given)}: set {either}, not both"]
        if not token and not given:
            return [f"{TOKEN_VARIABLE}: required, or the OAuth variables instead: set {either}"]
        missing = [name for name, present in oauth.items() if not present]
        if given and missing:
            return [
                f"{', '.join(missing)}: missing; OAuth needs all three of {', '.join(OAUTH_VARIABLES)} "
                f"(or {TOKEN_VARIABLE} alone for a private app)"
            ]
        return []

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    @property
    def token_url(self) -> str:
        return f"{self.api_url}/oauth/v1/token"


def _set(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value().strip())


def load_hubspot_settings(**overrides: Any) -> HubSpotSettings:
    """The settings from the environment (and `overrides`, by field name), checked: a
    ConfigError naming every wrong variable."""
    try:
        settings = HubSpotSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None
    settings.check()
    return settings


_VARIABLES = {
    "access_token": TOKEN_VARIABLE,
    "client_id": "HUBSPOT_CLIENT_ID",
    "client_secret": "HUBSPOT_CLIENT_SECRET",
    "refresh_token": "HUBSPOT_REFRESH_TOKEN",
    "api_url": URL_VARIABLE,
    "page_size": "HUBSPOT_PAGE_SIZE",
    "batch_size": "HUBSPOT_BATCH_SIZE",
    "rate_limit": "HUBSPOT_RATE_LIMIT",
    "search_per_second": "HUBSPOT_SEARCH_RATE",
}


def _describe(err: Any) -> str:
    loc = ".".join(str(part) for part in err["loc"]) or "settings"
    name = _VARIABLES.get(loc, loc)
    message = str(err["msg"])
    if name in _SECRETS or "input" not in err:
        return f"{name}: {message}"
    return f"{name}: {message} (got {repr(err['input'])[:60]})"
