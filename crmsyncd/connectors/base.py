"""What every connector shares: the one classification of responses, its errors, request counts
and the identity of the system it talks to. The port itself is connectors/port.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from crmsyncd.domain.records import JSON, Side


class Outcome(StrEnum):
    """What the engine should do about a response; decided once, in the connector."""

    OK = "ok"
    RETRY = "retry"  # transient: 5xx, timeout, reset, malformed answer
    RATE_LIMITED = "rate_limited"  # 429 that outlasted the connector's own waiting
    PERMANENT = "permanent"  # 400/422: this payload will never be accepted
    NOT_FOUND = "not_found"  # 404: the mapping is stale, deleted on that side
    CONFLICT = "conflict"  # 409: a unique value (email) is taken: link instead of create
    AUTH_FAILED = "auth_failed"  # 401/403: stop the pass, retrying will not help
    # The API says the access token has expired (HubSpot: 401 EXPIRED_AUTHENTICATION). Handled
    # inside ApiClient (renew once, repeat the request); the engine never sees it: a second
    # refusal reaches it as AUTH_FAILED.
    REFRESH_AUTH = "refresh_auth"
    # A quota that will not refill within the pass (HubSpot's daily limit, 429 policyName DAILY):
    # stop the pass as for AUTH_FAILED, park nothing (the records are fine), resume next pass.
    QUOTA_EXHAUSTED = "quota_exhausted"

    @property
    def stops_pass(self) -> bool:
        """Retrying records cannot help: the pass stops, says why, and parks nothing."""
        return self in (Outcome.AUTH_FAILED, Outcome.QUOTA_EXHAUSTED)


class ConnectorError(Exception):
    """A failed call, classified. The text carries the API's own message, never a credential."""

    def __init__(
        self,
        outcome: Outcome,
        message: str,
        *,
        side: Side,
        status: int | None = None,
        method: str = "",
        path: str = "",
        committed_maybe: bool = False,
        retry_after: float = 0.0,
    ) -> None:
        where = f"{method} {path}".strip()
        status_text = f" {status}" if status is not None else ""
        super().__init__(f"{side.value}{status_text} {where}: {message}".replace("  ", " "))
        self.outcome = outcome
        self.message = message
        self.side = side
        self.status = status
        self.method = method
        self.path = path
        # True when a write may have been applied although we saw no success (timeout, reset, 5xx):
        # the engine must look the record up before it tries a create again.
        self.committed_maybe = committed_maybe
        # Seconds before which a retry cannot succeed (a lookup that must wait for a lagging
        # feed): the record is parked at least that long, whatever the backoff says.
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Page:
    records: list[JSON]
    page: int
    total_pages: int
    total: int
    # The server's front-end clock (its Date header). Never used to place a cursor: a front end and
    # its database may disagree (connectors/paging.py); kept for diagnostics and the connector tests.
    server_time: datetime | None = None


@dataclass(slots=True)
class RequestStats:
    """Requests a connector made, by kind; the figure of merit is requests per synced record."""

    lists: int = 0
    reads: int = 0
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    lookups: int = 0
    rate_limited: int = 0
    retried: int = 0
    by_status: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.lists + self.reads + self.creates + self.updates + self.deletes + self.lookups


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalised_base_url(url: str) -> str:
    """A base URL as the system's address: scheme and host lower-cased, the port only when it is
    not the scheme's default, the path without a trailing slash. Credentials, query and fragment
    are dropped: they do not name the system, and a credential must never be stored."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()  # hostname leaves out user:password@
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True, slots=True)
class SystemIdentity:
    """Which system a connector talks to: the state in the database belongs to one per side."""

    kind: str  # the connector's kind: "ecosire", "rest"; later "hubspot", "salesforce", ...
    base_url: str  # normalised_base_url of the configured URL
    # The account or organisation the credentials open, where the API names one (HubSpot's
    # portal id, a Salesforce org id); None where it does not (ECOSIRE, the REST CRM).
    account: str | None = None

    def describe(self) -> str:
        account = f" account {self.account}" if self.account is not None else ""
        return f"{self.kind} {self.base_url}{account}"
