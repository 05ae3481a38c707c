"""Request pacing shared by every concurrent caller of one connector.

Two mechanisms work together:
- a local limiter (aiolimiter) for the configured requests per minute, so that a server that sends
  no rate-limit headers is still not overrun;
- the server's own `X-RateLimit-Remaining` / `X-RateLimit-Reset` headers: when the window's budget
  is spent, nobody sends until the window resets; a 429 blocks everybody until the time the server
  names (`X-RateLimit-Reset` or `Retry-After`).

Reset times are read against the server's `Date` header when it has one: the server's clock may be
skewed from ours, but the difference of two readings of the server's own clock is not.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

from aiolimiter import AsyncLimiter

# A reset value below this is not a Unix time (that would be 2001) but a delta in seconds, the form
# the IETF RateLimit drafts and several CRMs use; accepting both costs nothing.
_EPOCH_THRESHOLD = 1_000_000_000
# Two answers whose reset times differ by less than this describe the same window: Date headers
# have a resolution of one second, so the same reset can be computed up to a second apart.
_WINDOW_SLACK = 1.0


class Clock(Protocol):
    """Time as the pacer sees it; injectable so that tests need not wait on the wall clock."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def parse_http_date(value: str | None) -> datetime | None:
    """An RFC 7231 date (Date, Retry-After) as aware UTC, or None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000" means UTC with unknown local zone
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class RateLimitHeaders:
    """The rate-limit facts of one response, as seconds from the moment it was received."""

    def __init__(self, headers: Mapping[str, str], local_now: float) -> None:
        date = parse_http_date(headers.get("Date"))
        # "Now" on the server's clock when we have it, else ours.
        server_now = date.timestamp() if date is not None else local_now
        remaining = _header_number(headers, "X-RateLimit-Remaining")
        self.remaining: int | None = int(remaining) if remaining is not None else None
        self.reset_in: float | None = None
        reset = _header_number(headers, "X-RateLimit-Reset")
        if reset is not None:
            self.reset_in = reset if reset < _EPOCH_THRESHOLD else reset - server_now
        self.retry_after: float | None = None
        raw_retry = headers.get("Retry-After")
        if raw_retry is not None:
            seconds = _header_number(headers, "Retry-After")
            if seconds is not None:
                self.retry_after = seconds
            else:
                when = parse_http_date(raw_retry)
                if when is not None:
                    self.retry_after = when.timestamp() - server_now


class Pacer:
    """Decides when the next request of a connector may start. Safe for concurrent callers."""

    def __init__(
        self,
        requests_per_minute: int | None,
        *,
        clock: Clock,
        wait_cap: float,
        jitter: float,
        rng: random.Random,
    ) -> None:
        # Capacity 1: requests are spread evenly instead of bursting, which also keeps a server with
        # a sliding window happy. requests_per_minute None means no local limit.
        self._limiter = AsyncLimiter(1, 60.0 / requests_per_minute) if requests_per_minute else None
        self._clock = clock
        self._wait_cap = wait_cap
        self._jitter = jitter
        self._rng = rng
        self._sent = 0  # sequence number of the next request
        self._remaining: int | None = None  # estimated budget left in the server's window
        self._window_ends_at: float | None = None  # monotonic time the server's window resets
        self._blocked_until = 0.0  # monotonic; set by a 429

    def _wait_needed(self, now: float) -> float:
        wait = self._blocked_until - now
        if self._remaining is not None and self._window_ends_at is not None:
            if self._window_ends_at <= now:
                # The window is over: the server's budget is full again, amount unknown.
                self._remaining = None
                self._window_ends_at = None
            elif self._remaining <= 0:
                wait = max(wait, self._window_ends_at - now)
        return wait

    async def _wait_turn(self) -> None:
        while (wait := self._wait_needed(self._clock.monotonic())) > 0:
            await self._clock.sleep(wait)

    async def acquire(self) -> int:
        """Wait for a turn; returns the request's sequence number for `observe`."""
        await self._wait_turn()
        if self._limiter is not None:
            await self._limiter.acquire()
            # The limiter may have held us while an answer spent the window or a 429 arrived.
            await self._wait_turn()
        # No await between the last check and here: the reservation below is atomic.
        seq = self._sent
        self._sent += 1
        if self._remaining is not None:
            self._remaining -= 1
        return seq

    def observe(self, seq: int, headers: Mapping[str, str]) -> None:
        """Update the budget from an answer to request number `seq`."""
        now = self._clock.monotonic()
        facts = RateLimitHeaders(headers, self._clock.time())
        if facts.remaining is None or facts.reset_in is None:
            return  # without a reset time a spent budget could never be refilled
        ends_at = now + min(max(facts.reset_in, 0.0), self._wait_cap)
        # Requests sent after this one may already have been counted by the server; assume they
        # were. That errs towards pausing a little early rather than drawing a 429.
        estimate = facts.remaining - (self._sent - seq - 1)
        known = self._window_ends_at
        if known is None or self._remaining is None or ends_at > known + _WINDOW_SLACK:
            self._remaining, self._window_ends_at = estimate, ends_at  # a new window
        elif ends_at >= known - _WINDOW_SLACK:
            self._remaining = min(self._remaining, estimate)  # the same window
        # else: a late answer from a window that has already ended: stale, ignore.

    def on_rate_limited(self, headers: Mapping[str, str], fallback: float) -> float:
        """A 429: block every caller until the server's reset; returns the wait chosen."""
        facts = RateLimitHeaders(headers, self._clock.time())
        named = [w for w in (facts.reset_in, facts.retry_after) if w is not None]
        wait = max(named) if named else fallback
        # The jitter keeps callers from arriving in the very second the window opens, when the
        # server's clock may not quite have got there yet.
        wait = min(max(wait, 0.0), self._wait_cap) + self._rng.uniform(0.0, self._jitter)
        self._blocked_until = max(self._blocked_until, self._clock.monotonic() + wait)
        return wait
