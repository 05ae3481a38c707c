"""Request pacing shared by every concurrent caller of one connector.

The server's word sets the pace. Every answer that carries `X-RateLimit-Remaining` and
`X-RateLimit-Reset` says how many requests its window still allows and when the window ends; the
pacer spreads that budget evenly over what is left of the window (one request every
time-left / budget-left seconds), so requests are neither bursted at the start of a fixed window
nor left unspent at its end, and a limit the server changes is followed from the next answer on.
When the budget is spent nobody sends until the window resets; a 429 blocks everybody until the
time the server names (`X-RateLimit-Reset` or `Retry-After`).

Which value wins when (the configured value is ECOSIRE_RATE_LIMIT or CRM_RATE_LIMIT):

| the server has sent rate-limit headers | configured | pace |
|---|---|---|
| not yet | set | the configured requests per minute |
| not yet | unset | the API's documented limit (ECOSIRE: 60 a minute; the CRM: none, unlimited) |
| yes | set | the server's pace, but never faster than the configured value (a cap) |
| yes | unset | the server's pace |

Reset times are read against the server's `Date` header when it has one: the server's clock may be
skewed from ours, but the difference of two readings of the server's own clock is not. A Reset in
whole seconds is taken as rounded up (the window ends at it or up to a second before): the pacer
aims at it, so it never sends into a spent window, at the cost of up to a second of each window.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

# A reset value below this is not a Unix time (that would be 2001) but a delta in seconds, the form
# the IETF RateLimit drafts and several CRMs use; accepting both costs nothing.
_EPOCH_THRESHOLD = 1_000_000_000
# Two answers whose reset times differ by less than this describe the same window: Date headers
# have a resolution of one second, so the same reset can be computed up to a second apart.
_WINDOW_SLACK = 1.0
# An absolute Reset is the server's own constant for a window: answers of one window carry the same
# value (give or take its rounding), the next window a later one. Compared raw, it tells windows
# apart even when they last a single second.
_EPOCH_SLACK = 0.5
# The window length assumed for a server that sends X-RateLimit-Limit but no Reset we can read:
# ECOSIRE documents its limit per minute, and so are the settings.
_DEFAULT_WINDOW = 60.0
# How late a caller may start its turn and still count as on time (seconds); see `acquire`.
_LATE_TOLERANCE = 0.02


class Pacing(Protocol):
    """What ApiClient asks of a pacer: a turn before each request, each answer's headers, 429s."""

    async def acquire(self) -> int: ...

    def observe(self, seq: int, headers: Mapping[str, str]) -> None: ...

    def on_rate_limited(self, headers: Mapping[str, str], fallback: float) -> float: ...


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
        limit = _header_number(headers, "X-RateLimit-Limit")
        self.limit: int | None = int(limit) if limit is not None and limit >= 1 else None
        remaining = _header_number(headers, "X-RateLimit-Remaining")
        self.remaining: int | None = int(remaining) if remaining is not None else None
        self.reset_in: float | None = None
        self.reset_epoch: float | None = None  # the raw absolute Reset, when it is one
        reset = _header_number(headers, "X-RateLimit-Reset")
        if reset is not None:
            if reset < _EPOCH_THRESHOLD:
                self.reset_in = reset
            else:
                self.reset_in, self.reset_epoch = reset - server_now, reset
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
    """Decides when the next request of a connector may start. Safe for concurrent callers.

    `cap_per_minute` is the user's configured value (None: not configured): the pace while the
    server has sent no rate-limit headers, and a cap on the server's pace after.
    `default_per_minute` is the pace while the server has sent none and nothing is configured
    (None: unlimited).
    """

    def __init__(
        self,
        cap_per_minute: int | None,
        *,
        default_per_minute: int | None = None,
        clock: Clock,
        wait_cap: float,
        jitter: float,
        rng: random.Random,
    ) -> None:
        # The pace is kept as the least gap between the starts of two requests: evenly spread, never
        # a burst, whatever the server's window (fixed or sliding) does with bursts.
        self._cap_gap = 60.0 / cap_per_minute if cap_per_minute else 0.0
        silent = cap_per_minute or default_per_minute
        self._silent_gap = 60.0 / silent if silent else 0.0  # until the server first speaks
        self._clock = clock
        self._wait_cap = wait_cap
        self._jitter = jitter
        self._rng = rng
        self._sent = 0  # sequence number of the next request
        self._last_start: float | None = None  # monotonic start of the latest request
        self._heard = False  # the server has sent rate-limit headers at least once
        self._limit: int | None = None  # X-RateLimit-Limit of the latest answer
        self._latest_seq = -1  # the latest request whose answer has been observed
        self._window_length = 0.0  # the longest reset we were told: the window's length, roughly
        self._window_mark: float | None = None  # tells the current window from earlier ones
        self._remaining: int | None = None  # estimated budget left in the server's window
        self._window_ends_at: float | None = None  # monotonic; the window ends then at the latest
        self._blocked_until = 0.0  # monotonic; set by a 429

    def _gap(self) -> float:
        """Seconds from the start of the latest request to the start of the next."""
        if self._remaining is not None and self._window_ends_at is not None and self._last_start is not None:
            # What is left of the budget, spread evenly over what is left of the window (reckoned
            # from the latest start, so a caller woken late is not made later still). Recomputed at
            # every turn from the latest answer: a lowered or raised limit is followed at once.
            server = (self._window_ends_at - self._last_start) / max(self._remaining + 1, 1)
        elif self._limit is not None:
            # Between windows: the new one's budget is learnt from its first answer; meanwhile,
            # the last known limit over the window's length, rather than a burst.
            server = (self._window_length or _DEFAULT_WINDOW) / self._limit
        elif not self._heard:
            server = self._silent_gap
        else:
            server = 0.0
        return max(server, self._cap_gap)

    def _earliest(self, now: float) -> float:
        """The monotonic time the next request may start."""
        at = self._blocked_until
        if self._window_ends_at is not None and self._window_ends_at <= now:
            # The window is over: the server's budget is full again, amount unknown.
            self._remaining = None
            self._window_ends_at = None
        if self._remaining is not None and self._window_ends_at is not None and self._remaining <= 0:
            at = max(at, self._window_ends_at)
        if self._last_start is not None:
            at = max(at, self._last_start + self._gap())
        return at

    async def acquire(self) -> int:
        """Wait for a turn; returns the request's sequence number for `observe`."""
        while True:
            now = self._clock.monotonic()
            # Recomputed after every sleep: an answer, a 429 or another caller's turn may have
            # come in meanwhile.
            at = self._earliest(now)
            if at <= now:
                break
            await self._clock.sleep(at - now)
        # No await between the last check and here: the reservation below is atomic.
        seq = self._sent
        self._sent += 1
        # A caller woken a little late (a busy event loop) counts as started when its turn came,
        # so that the lateness does not push every later request back; one that starts well after
        # its turn (after a pause) counts from now, so that later requests do not bunch to catch up.
        self._last_start = at if now - at <= _LATE_TOLERANCE else now
        if self._remaining is not None:
            self._remaining -= 1
        return seq

    def observe(self, seq: int, headers: Mapping[str, str]) -> None:
        """Update the budget from an answer to request number `seq`."""
        now = self._clock.monotonic()
        facts = RateLimitHeaders(headers, self._clock.time())
        # The limit is the latest request's word: a late answer to an earlier one cannot undo a
        # change. An answer without a limit forgets it: a server (or a proxy in front of it) that
        # stops stating one is not held to an old one between windows.
        changed = False
        if seq >= self._latest_seq:
            self._latest_seq = seq
            changed, self._limit = facts.limit != self._limit, facts.limit
        self._heard = self._heard or facts.limit is not None
        if facts.remaining is None or facts.reset_in is None:
            return  # without a reset time a spent budget could never be refilled
        self._heard = True
        reset_in = min(max(facts.reset_in, 0.0), self._wait_cap)
        self._window_length = max(self._window_length, reset_in)
        ends_at = now + reset_in
        # Requests sent after this one may already have been counted by the server; assume they
        # were. That errs towards pausing a little early rather than drawing a 429.
        estimate = facts.remaining - (self._sent - seq - 1)
        if facts.reset_epoch is not None:
            mark, slack = facts.reset_epoch, _EPOCH_SLACK
        else:
            mark, slack = ends_at, _WINDOW_SLACK
        known = self._window_mark
        if known is None or mark > known + slack:
            self._window_mark = mark  # a new window
            self._remaining, self._window_ends_at = estimate, ends_at
        elif mark >= known - slack and self._remaining is not None and self._window_ends_at is not None:
            # The same window: the most cautious budget (answers may come back out of order),
            # unless the limit itself has just changed, up or down; and the earliest end any answer
            # implies (each is an upper bound; the tightest cuts the Date header's rounding).
            self._remaining = estimate if changed else min(self._remaining, estimate)
            self._window_ends_at = min(self._window_ends_at, ends_at)
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


class HubSpotHeaders:
    """The rate-limit facts of one HubSpot answer (developers.hubspot.com, "API usage guidelines
    and limits"): `X-HubSpot-RateLimit-Max` requests per rolling `-Interval-Milliseconds`,
    `-Remaining` of them left; `-Daily` and `-Daily-Remaining` for the day (private apps only)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        limit = _header_number(headers, "X-HubSpot-RateLimit-Max")
        self.limit: int | None = int(limit) if limit is not None and limit >= 1 else None
        remaining = _header_number(headers, "X-HubSpot-RateLimit-Remaining")
        self.remaining: int | None = int(remaining) if remaining is not None else None
        interval = _header_number(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
        self.interval: float | None = interval / 1000.0 if interval is not None and interval > 0 else None
        daily = _header_number(headers, "X-HubSpot-RateLimit-Daily")
        self.daily: int | None = int(daily) if daily is not None and daily >= 1 else None
        daily_left = _header_number(headers, "X-HubSpot-RateLimit-Daily-Remaining")
        self.daily_remaining: int | None = int(daily_left) if daily_left is not None else None


class RollingWindowPacer(Pacer):
    """A rolling window read from HubSpot's headers, shared by every caller of one connector.

    A rolling window never resets, so HubSpot sends no reset time: each request leaves the window
    `interval` after it was made. The pace follows from that. This connector's share of the window
    is what the latest answer left (`Remaining`) plus our own requests it counted that are still
    in the window (they leave it within the interval and free their places for us); the share
    is spread evenly, one request every interval / share seconds. Alone in the
    portal the share is the whole `Max`, the pace `Max` per interval; beside other apps of the
    portal, which draw on the same limit, it shrinks to what they leave. When nothing is left,
    the next request waits until our oldest request in the window leaves it. Until the first
    answer with the headers, the configured value (or none) paces, as with `Pacer`.
    """

    def __init__(
        self,
        cap_per_minute: int | None,
        *,
        clock: Clock,
        wait_cap: float,
        jitter: float,
        rng: random.Random,
    ) -> None:
        super().__init__(cap_per_minute, clock=clock, wait_cap=wait_cap, jitter=jitter, rng=rng)
        self._starts: deque[float] = deque()  # monotonic starts of our requests, oldest first
        self._interval: float | None = None
        self._max: int | None = None
        self._left: int | None = None  # places left in the window, by the latest answer
        self._share: int | None = None  # places of the window that are ours to use

    def _forget_old(self, now: float) -> None:
        if self._interval is None:
            return
        while self._starts and self._starts[0] <= now - self._interval:
            self._starts.popleft()
            if self._left is not None and self._max is not None:
                # The server counted it (or will have): its place in the window is free again.
                self._left = min(self._left + 1, self._max)

    def _gap(self) -> float:
        if self._interval is None or self._max is None or self._share is None:
            return super()._gap()
        return max(self._interval / max(min(self._share, self._max), 1), self._cap_gap)

    def _earliest(self, now: float) -> float:
        self._forget_old(now)
        at = self._blocked_until
        if self._last_start is not None:
            at = max(at, self._last_start + self._gap())
        if self._left is not None and self._left <= 0 and self._interval is not None and self._starts:
            at = max(at, self._starts[0] + self._interval)  # our oldest leaves the window then
        return at

    async def acquire(self) -> int:
        seq = await super().acquire()
        assert self._last_start is not None
        self._starts.append(self._last_start)
        if self._left is not None:
            self._left -= 1
        return seq

    def observe(self, seq: int, headers: Mapping[str, str]) -> None:
        facts = HubSpotHeaders(headers)
        if facts.limit is None or facts.remaining is None or facts.interval is None:
            return  # a search answer, or an error before the limiter: nothing learnt
        self._heard = True
        if seq < self._latest_seq:
            return  # a late answer to an earlier request: the latest one's word stands
        self._latest_seq = seq
        self._max, self._interval = facts.limit, facts.interval
        self._forget_old(self._clock.monotonic())  # aged out before this answer: in its count
        # Requests sent after this one may already have been counted by the server: assume so.
        after = self._sent - seq - 1
        self._left = facts.remaining - after
        # Ours that this answer counted: those in the window, less the ones sent after it.
        self._share = facts.remaining + max(len(self._starts) - after, 0)
