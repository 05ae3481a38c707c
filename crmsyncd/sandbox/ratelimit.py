"""A fixed-window request counter per API key, as ECOSIRE's documented limit behaves."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    remaining: int
    resets_in: float  # seconds until the current window ends
    allowed: bool


class FixedWindowLimiter:
    """Counts requests in windows of `window` seconds that start at a key's first request.

    Windows run on the monotonic clock, not on the server's settable clock: a test that freezes
    or shifts the server clock must not freeze the limit. Callers translate `resets_in` into the
    server clock for the headers.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._windows: dict[str, tuple[float, int]] = {}
        self._closed: dict[str, list[int]] = {}  # requests counted in each earlier window, per key

    def hit(self, key: str, limit: int, window: float) -> Quota:
        now = self._monotonic()
        started, count = self._windows.get(key, (now, 0))
        if now - started >= window:
            if count:
                self._closed.setdefault(key, []).append(count)
            started, count = now, 0
        count += 1
        self._windows[key] = (started, count)
        return Quota(
            limit=limit,
            remaining=max(0, limit - count),
            resets_in=max(0.0, started + window - now),
            allowed=count <= limit,
        )

    def counts(self, key: str) -> list[int]:
        """Requests counted (429s included) in each window of `key`, oldest first; the last one is
        the window of the latest request, which may still be open."""
        current = [self._windows[key][1]] if key in self._windows else []
        return [*self._closed.get(key, []), *current]

    def reset(self) -> None:
        self._windows.clear()
        self._closed.clear()
