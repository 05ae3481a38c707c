"""How a connector signs its requests: a static key, or an OAuth 2.0 access token it renews.

`ApiClient` (connectors/http.py) asks its strategy for the Authorization header before every
attempt, and, when the API answers that the token has expired (`Outcome.REFRESH_AUTH`), asks it
to renew once and repeats the request; a second refusal is AUTH_FAILED, naming the variables to
check. A strategy also lists every secret it holds, so that the client scrubs them from any text a
server echoes back: no credential reaches a log line, an error or a repr.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from pydantic import SecretStr

from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.connectors.pacing import Clock, SystemClock
from crmsyncd.domain.records import Side

# An access token is renewed this long before the `expires_in` its endpoint gave: the smaller of
# five minutes and a tenth of its lifetime (HubSpot's 30-minute tokens are renewed at 27 minutes;
# a token living 60 s at 54 s). Early enough that a request in flight never carries a token that
# expires on the way; late enough that a short-lived token is not renewed at every request.
RENEW_MARGIN_CAP = 300.0
RENEW_MARGIN_SHARE = 0.1


class AuthStrategy(Protocol):
    """Signs requests for one API."""

    # The variables the user set the credentials in, as a phrase ("HUBSPOT_ACCESS_TOKEN"): named,
    # never their values, when the API refuses them.
    variables: str

    async def authorization(self) -> str:
        """The Authorization header's value for the next request (renewed first if due)."""
        ...

    async def renew(self, refused: str) -> bool:
        """The API refused `refused` (an Authorization value) as expired: renew it, unless a
        concurrent caller already has. False when this strategy cannot renew (a static key)."""
        ...

    def secrets(self) -> Sequence[str]:
        """Every secret value this strategy holds or has held, to scrub from text."""
        ...


class StaticToken:
    """A key that never changes: ECOSIRE's and the REST CRM's API keys, a HubSpot private-app
    token. `variable` is where the user set it."""

    def __init__(self, token: SecretStr, variable: str) -> None:
        self._token = token
        self.variables = variable

    def __repr__(self) -> str:
        return f"StaticToken(variable={self.variables!r})"

    async def authorization(self) -> str:
        return "Bearer " + self._token.get_secret_value()

    async def renew(self, refused: str) -> bool:
        return False

    def secrets(self) -> Sequence[str]:
        return (self._token.get_secret_value(),)


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """The OAuth 2.0 refresh grant's inputs, and the variables each was set in."""

    token_url: str
    client_id: SecretStr
    client_secret: SecretStr
    refresh_token: SecretStr
    id_variable: str
    secret_variable: str
    refresh_variable: str

    @property
    def variables(self) -> str:
        return f"{self.id_variable}, {self.secret_variable} and {self.refresh_variable}"


class OAuthRefresh:
    """An access token from the refresh-token grant (RFC 6749 section 6), renewed ahead of its
    `expires_in` (RENEW_MARGIN_*), and once more when the API says it has expired all the same
    (clocks disagree, or the provider revoked it early).

    Concurrent requests share one renewal: a lock around it, and a caller that finds the token
    already changed since its request was refused uses the new one instead of renewing again.

    A refresh token the endpoint returns in place of the old one is kept, in memory only. It is not
    persisted, and need not be for HubSpot: its refresh tokens do not rotate (the endpoint hands the
    same one back) and do not expire by use, so after a restart the configured one still works. A
    provider that rotates and retires refresh tokens would need the newest stored (the database
    holds no credentials today, on purpose); a restart there would need HUBSPOT_REFRESH_TOKEN reset.
    """

    def __init__(
        self,
        client: OAuthClient,
        *,
        side: Side,
        session: aiohttp.ClientSession,
        timeout: float,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._side = side
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock: Clock = clock or SystemClock()
        self._refresh_token = client.refresh_token.get_secret_value()
        self._access: str | None = None
        self._renew_at = 0.0  # monotonic
        self._lock = asyncio.Lock()
        # Every value handed out so far, for scrubbing: an old token may still be echoed back.
        self._held: list[str] = [
            client.client_id.get_secret_value(),
            client.client_secret.get_secret_value(),
            self._refresh_token,
        ]
        self.variables = client.variables
        self.refreshes = 0  # renewals done: what a test or the benchmark reports

    def __repr__(self) -> str:
        return f"OAuthRefresh(token_url={self._client.token_url!r})"

    async def authorization(self) -> str:
        if self._access is None or self._clock.monotonic() >= self._renew_at:
            async with self._lock:
                # Re-checked under the lock: a caller that waited finds it renewed.
                if self._access is None or self._clock.monotonic() >= self._renew_at:
                    await self._refresh()
        assert self._access is not None
        return "Bearer " + self._access

    async def renew(self, refused: str) -> bool:
        async with self._lock:
            if self._access is None or refused == "Bearer " + self._access:
                await self._refresh()
        return True

    def secrets(self) -> Sequence[str]:
        return tuple(self._held)

    async def _refresh(self) -> None:
        form = {
            "grant_type": "refresh_token",
            "client_id": self._client.client_id.get_secret_value(),
            "client_secret": self._client.client_secret.get_secret_value(),
            "refresh_token": self._refresh_token,
        }
        started = self._clock.monotonic()
        try:
            async with self._session.post(
                self._client.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        # The request carried the secrets in its body: only the class name goes into the message.
        except TimeoutError:
            raise self._error(Outcome.RETRY, f"no answer within {self._timeout.total} s", None) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._error(Outcome.RETRY, f"{type(exc).__name__}", None) from None
        doc = _json(raw)
        if status >= 500 or status in (408, 429):
            raise self._error(Outcome.RETRY, f"the token endpoint answered {status}", status)
        if status != 200:
            # 400 BAD_REFRESH_TOKEN, BAD_CLIENT_ID, BAD_CLIENT_SECRET, 401: the credentials.
            reason = (
                (doc.get("status") or doc.get("error") or "refused") if isinstance(doc, dict) else "refused"
            )
            raise self._error(
                Outcome.AUTH_FAILED,
                f"the token endpoint refused the refresh ({status} {self._scrub(str(reason))}): "
                f"check {self.variables}",
                status,
            )
        token = doc.get("access_token") if isinstance(doc, dict) else None
        lifetime = doc.get("expires_in") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise self._error(Outcome.RETRY, "the token endpoint's answer has no access_token", status)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = 0.0  # unknown: renewed at the next request, and on the API's expired answer
        rotated = doc.get("refresh_token") if isinstance(doc, dict) else None
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            self._held.append(rotated)
        self._access = token
        self._held.append(token)
        margin = min(RENEW_MARGIN_CAP, float(lifetime) * RENEW_MARGIN_SHARE)
        self._renew_at = started + float(lifetime) - margin
        self.refreshes += 1

    def _scrub(self, text: str) -> str:
        for secret in self._held:
            if len(secret) >= 4:
                text = text.replace(secret, "**********")
        return text

    def _error(self, outcome: Outcome, message: str, status: int | None) -> ConnectorError:
        return ConnectorError(
            outcome,
            self._scrub(f"OAuth token refresh failed: {message}"),
            side=self._side,
            status=status,
            method="POST",
            path=_path_of(self._client.token_url),
        )


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _path_of(url: str) -> str:
    return "/" + url.split("://", 1)[-1].partition("/")[2]
