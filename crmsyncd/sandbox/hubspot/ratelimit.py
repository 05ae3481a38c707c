"""HubSpot's request limits, per account (portal), and the headers that report them.

Documented (developers.hubspot.com, "API usage guidelines and limits"; changelog "Increasing our
API limits"): private apps get a burst limit per rolling 10 seconds (100 on Free/Starter, 190 on
Professional/Enterprise, 250 with the capacity pack) and a daily limit (250,000 / 650,000 /
1,000,000); apps using OAuth get 110 per 10 seconds per account and no daily limit (their answers
carry no Daily headers); the CRM search endpoints allow 5 requests per second per account. A 429
body says which limit was hit in `policyName`: TEN_SECONDLY_ROLLING, DAILY, or SECONDLY for search.

Chosen where the docs are silent (all configurable on `Limits`):
- a refused request does not count against the window it was refused by;
- search requests count against the search limit and the daily limit, not the 10-second window,
  and their answers carry no X-HubSpot-RateLimit headers (`search_headers=False`);
- the day is the server clock's UTC day (HubSpot resets at midnight in the portal's time zone).

Windows run on `monotonic` (a replaceable clock), so a test steps time instead of sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from crmsyncd.sandbox.hubspot.errors import HubSpotError

INTERVAL_SECONDS = 10.0


@dataclass(slots=True)
class Limits:
    """Requests allowed per account; None switches a limit off (and drops its headers)."""

    ten_second: int | None = 190
    oauth_ten_second: int | None = 110
    daily: int | None = 650_000
    search_per_second: int | None = 5
    search_headers: bool = False


class RollingWindow:
    """Requests of the last `length` seconds, as instants of `monotonic`."""

    def __init__(self, length: float) -> None:
        self.length = length
        self._hits: deque[float] = deque()

    def hit(self, now: float, limit: int) -> tuple[bool, int]:
        """(allowed, remaining after this request); a refused request is not counted."""
        while self._hits and self._hits[0] <= now - self.length:
            self._hits.popleft()
        if len(self._hits) >= limit:
            return False, 0
        self._hits.append(now)
        return True, limit - len(self._hits)

    def used(self, now: float) -> int:
        return sum(1 for hit in self._hits if hit > now - self.length)


@dataclass(slots=True)
class _Daily:
    day: date | None = None
    count: int = 0


@dataclass(slots=True)
class Verdict:
    headers: dict[str, str] = field(default_factory=dict)
    refusal: HubSpotError | None = None


class AccountLimiter:
    def __init__(self, portal_id: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.portal_id = portal_id
        self.monotonic = monotonic
        self.limits = Limits()
        self._ten = RollingWindow(INTERVAL_SECONDS)
        self._oauth_ten = RollingWindow(INTERVAL_SECONDS)
        self._search = RollingWindow(1.0)
        self._daily = _Daily()
        # Requests answered 429, by policy: what a test or the benchmark asserts on.
        self.refused: dict[str, int] = {}

    def reset(self) -> None:
        self._ten, self._oauth_ten = RollingWindow(INTERVAL_SECONDS), RollingWindow(INTERVAL_SECONDS)
        self._search = RollingWindow(1.0)
        self._daily = _Daily()
        self.refused.clear()

    def check(self, *, search: bool, oauth: bool, today: date) -> Verdict:
        """Count one request; its headers, or the 429 refusing it."""
        now = self.monotonic()
        limits = self.limits
        verdict = Verdict()
        if self._daily.day != today:
            self._daily = _Daily(today, 0)
        daily = None if oauth else limits.daily
        if daily is not None and self._daily.count >= daily:
            return self._refuse(verdict, "DAILY", "daily", daily, daily_left=0)
        if search:
            if limits.search_per_second is not None:
                allowed, _ = self._search.hit(now, limits.search_per_second)
                if not allowed:
                    return self._refuse(verdict, "SECONDLY", "secondly", None, daily_left=None)
        else:
            ten = limits.oauth_ten_second if oauth else limits.ten_second
            if ten is not None:
                window = self._oauth_ten if oauth else self._ten
                allowed, remaining = window.hit(now, ten)
                verdict.headers.update(_window_headers(ten, remaining))
                if not allowed:
                    return self._refuse(
                        verdict,
                        "TEN_SECONDLY_ROLLING",
                        "ten_secondly_rolling",
                        daily,
                        daily_left=self._left(daily),
                    )
        self._daily.count += 1
        if daily is not None:
            verdict.headers.update(_daily_headers(daily, self._left(daily)))
        if search and not limits.search_headers:
            verdict.headers.clear()
        return verdict

    def fault_headers(self, *, oauth: bool) -> dict[str, str]:
        """The headers of a fault-injected 429: the 10-second window used up."""
        ten = self.limits.oauth_ten_second if oauth else self.limits.ten_second
        headers = {} if ten is None else _window_headers(ten, 0)
        daily = None if oauth else self.limits.daily
        if daily is not None:
            headers.update(_daily_headers(daily, self._left(daily)))
        return headers

    def _left(self, daily: int | None) -> int:
        return 0 if daily is None else max(0, daily - self._daily.count)

    def _refuse(
        self, verdict: Verdict, policy: str, wording: str, daily: int | None, *, daily_left: int | None
    ) -> Verdict:
        self.refused[policy] = self.refused.get(policy, 0) + 1
        if daily is not None and daily_left is not None:
            verdict.headers.update(_daily_headers(daily, daily_left))
        verdict.refusal = rate_limited(policy, wording, self.portal_id, verdict.headers)
        return verdict


def rate_limited(policy: str, wording: str, portal_id: int, headers: dict[str, str]) -> HubSpotError:
    return HubSpotError(
        429,
        "RATE_LIMITS",
        f"You have reached your {wording} limit.",
        headers=dict(headers),
        extra={
            "errorType": "RATE_LIMIT",
            "policyName": policy,
            "groupName": f"publicapi:private-app:{portal_id}",
        },
    )


def _window_headers(limit: int, remaining: int) -> dict[str, str]:
    return {
        "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(INTERVAL_SECONDS * 1000)),
        "X-HubSpot-RateLimit-Max": str(limit),
        "X-HubSpot-RateLimit-Remaining": str(remaining),
        "X-HubSpot-RateLimit-Secondly": str(limit // int(INTERVAL_SECONDS)),
        "X-HubSpot-RateLimit-Secondly-Remaining": str(min(remaining, limit // int(INTERVAL_SECONDS))),
    }


def _daily_headers(limit: int, remaining: int) -> dict[str, str]:
    return {"X-HubSpot-RateLimit-Daily": str(limit), "X-HubSpot-RateLimit-Daily-Remaining": str(remaining)}
