"""OAuth 2.0 for an app installed in the portal: `POST /oauth/v1/token` and token metadata.

Documented (developers.hubspot.com, "OAuth tokens"): a form-encoded POST with `grant_type`,
`client_id`, `client_secret` and `refresh_token` answers `access_token`, `refresh_token`,
`expires_in` (seconds; 1800 in practice) and `token_type`. An access token used after it expired
is a 401 with category EXPIRED_AUTHENTICATION. HubSpot's refresh tokens do not change on refresh;
`rotate_refresh_tokens=True` makes each refresh hand out a new one and retire the old (the RFC
6749 variant other providers use), for a client that must keep the newest.

Not imitated: the authorization-code grant (the install flow needs a browser), scopes.
The errors are the ones HubSpot gives: 400 with `status` BAD_GRANT_TYPE, BAD_CLIENT_ID,
BAD_CLIENT_SECRET or BAD_REFRESH_TOKEN (and `category` and `correlationId`, which the SDK's
`Error` model requires).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aiohttp import web

from crmsyncd.sandbox.hubspot.errors import correlation_id, json_answer

if TYPE_CHECKING:
    from crmsyncd.sandbox.hubspot.app import HubSpotSandbox

DEFAULT_CLIENT_ID = "sandbox-client-id"
DEFAULT_CLIENT_SECRET = "sandbox-client-secret"  # noqa: S105 (a fixed test value)
DEFAULT_REFRESH_TOKEN = "sandbox-refresh-token"  # noqa: S105
DEFAULT_EXPIRES_IN = 1800
APP_ID = 3000001
USER_ID = 7000001


@dataclass(slots=True)
class AccessToken:
    token: str
    expires_at: datetime


class OAuthApp:
    """One public app installed in the portal: its client credentials and live tokens."""

    def __init__(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        refresh_token: str = DEFAULT_REFRESH_TOKEN,
        *,
        expires_in: int = DEFAULT_EXPIRES_IN,
        rotate_refresh_tokens: bool = False,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.refresh_tokens: list[str] = [refresh_token]  # the valid ones
        self._access: dict[str, AccessToken] = {}
        self._counter = itertools.count(1)
        # Refreshes answered: what a test asserts on.
        self.refreshes = 0

    def _mint(self, kind: str) -> str:
        number = next(self._counter)
        digest = hashlib.sha256(f"{self.client_id}:{kind}:{number}".encode()).hexdigest()[:32]
        return f"sandbox-{kind}-{number:06d}-{digest}"

    def refresh(self, refresh_token: str, now: datetime) -> dict[str, object]:
        if self.rotate_refresh_tokens:
            self.refresh_tokens.remove(refresh_token)
            refresh_token = self._mint("rt")
            self.refresh_tokens.append(refresh_token)
        access = AccessToken(self._mint("at"), now + timedelta(seconds=self.expires_in))
        self._access[access.token] = access
        self.refreshes += 1
        return {
            "token_type": "bearer",
            "refresh_token": refresh_token,
            "access_token": access.token,
            "expires_in": self.expires_in,
        }

    def access_token(self, token: str) -> AccessToken | None:
        for known, access in self._access.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return access
        return None

    def expire_all(self, now: datetime) -> None:
        """Every access token handed out so far expires now (a test's shortcut past 30 minutes)."""
        for access in self._access.values():
            access.expires_at = min(access.expires_at, now)


def oauth_error(status: str, message: str) -> web.Response:
    return json_answer(
        {"status": status, "message": message, "correlationId": correlation_id(), "category": "BAD_REQUEST"},
        400,
    )


def oauth_routes(server: HubSpotSandbox) -> list[web.RouteDef]:
    async def token(request: web.Request) -> web.StreamResponse:
        app = server.oauth
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        if grant != "refresh_token":
            return oauth_error("BAD_GRANT_TYPE", f"unsupported grant_type {grant!r}: use refresh_token")
        if not hmac.compare_digest(str(form.get("client_id", "")).encode(), app.client_id.encode()):
            return oauth_error("BAD_CLIENT_ID", "missing or unknown client id")
        if not hmac.compare_digest(str(form.get("client_secret", "")).encode(), app.client_secret.encode()):
            return oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret")
        refresh_token = str(form.get("refresh_token", ""))
        if refresh_token not in app.refresh_tokens:
            return oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
        return json_answer(app.refresh(refresh_token, server.now()))

    async def access_token_info(request: web.Request) -> web.StreamResponse:
        access = server.oauth.access_token(request.match_info["token"])
        if access is None:
            return oauth_error("BAD_ACCESS_TOKEN", "missing or unknown access token")
        left = int((access.expires_at - server.now()).total_seconds())
        return json_answer(
            {
                "token": access.token,
                "user": "sandbox@example.com",
                "hub_domain": f"portal-{server.portal_id}.hubspot.com",
                "scopes": [
                    "crm.objects.contacts.read",
                    "crm.objects.contacts.write",
                    "crm.objects.deals.read",
                    "crm.objects.deals.write",
                    "oauth",
                ],
                "hub_id": server.portal_id,
                "app_id": APP_ID,
                "expires_in": max(0, left),
                "user_id": USER_ID,
                "token_type": "access",
            }
        )

    return [
        web.post("/oauth/v1/token", token),
        web.get("/oauth/v1/access-tokens/{token}", access_token_info, allow_head=False),
    ]
