"""Fault injection: rules that make the next matching requests fail in a chosen way.

A rule matches a method and a path template (`"POST /contacts"`, `"PATCH /contacts/{id}"`,
`"* /deals"`, or `"*"` for everything), optionally one record id and a predicate on the JSON body.
It hits `times` matching requests and is then used up. Rules are tried in the order they were
added; the first live match wins.

What a hit does (applied by the server, see `SandboxServer._answer_fault`):
- `after_commit=False` (default): sleep `delay`, then answer the fault *instead of* the request,
  so nothing is written. A rule with only a `delay` answers the real response late.
- `after_commit=True`: perform the request for real first (the write is committed), then sleep
  `delay` and answer the fault: the client loses the answer of a write that happened.
- the fault itself, by priority: `reset` (connection dropped with a TCP reset, no answer),
  `body` (raw bytes with `content_type`, status `status` or 200), `status` (the API's error
  envelope; a 429 carries that API's rate-limit headers).
- `headers` are added to (and override) whatever is answered.

Note for tests: aiohttp's client silently retries an idempotent request (GET, PUT, DELETE) once
when the connection drops, so a `reset` rule needs `times=2` to make one such call fail.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from crmsyncd.domain.records import JSON

BodyPredicate = Callable[[JSON], bool]

_METHODS = {"*", "GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"}


def parse_match(match: str) -> tuple[str, str]:
    """`"POST /contacts"` -> ("POST", "/contacts"); `"*"` -> ("*", "*"). A leading /api is dropped."""
    text = match.strip()
    if text == "*":
        return "*", "*"
    method, _, path = text.partition(" ")
    method, path = method.upper(), path.strip()
    if method not in _METHODS or not (path == "*" or path.startswith("/")):
        raise ValueError(f"fault match must look like 'POST /contacts' or '*', got {match!r}")
    if path.startswith("/api/"):
        path = path[len("/api") :]
    return method, path


@dataclass(slots=True)
class FaultRule:
    method: str
    path: str
    status: int | None = None
    times: int = 1
    after_commit: bool = False
    delay: float = 0.0
    reset: bool = False
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] | None = None
    record_id: str | None = None
    when: BodyPredicate | None = None
    hits: int = 0

    @property
    def live(self) -> bool:
        return self.hits < self.times

    @property
    def needs_body(self) -> bool:
        return self.when is not None

    def matches(self, method: str, path: str, record_id: str | None, body: JSON | None) -> bool:
        if not self.live:
            return False
        if self.method != "*" and self.method != method:
            return False
        if self.path != "*" and self.path != path:
            return False
        if self.record_id is not None and self.record_id != record_id:
            return False
        if self.when is None:
            return True
        if body is None:
            return False
        try:
            return bool(self.when(body))
        except Exception:  # a test's predicate that trips over an odd body just does not match
            return False

    def describe(self) -> JSON:
        return {
            "match": "*" if self.method == self.path == "*" else f"{self.method} {self.path}",
            "status": self.status,
            "times": self.times,
            "hits": self.hits,
            "after_commit": self.after_commit,
            "delay": self.delay,
            "reset": self.reset,
            "record_id": self.record_id,
            "has_body": self.body is not None,
            "has_predicate": self.when is not None,
        }


class FaultPlan:
    """The live rules of one server."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []

    def add(
        self,
        match: str,
        *,
        status: int | None = None,
        times: int = 1,
        after_commit: bool = False,
        delay: float = 0.0,
        reset: bool = False,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        record_id: str | None = None,
        when: BodyPredicate | None = None,
    ) -> None:
        method, path = parse_match(match)
        if times < 1:
            raise ValueError("times must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if status is not None and not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status, got {status}")
        self._rules.append(
            FaultRule(
                method=method,
                path=path,
                status=status,
                times=times,
                after_commit=after_commit,
                delay=delay,
                reset=reset,
                body=body,
                content_type=content_type,
                headers=dict(headers) if headers else None,
                record_id=record_id,
                when=when,
            )
        )

    def add_from_json(self, spec: Mapping[str, Any]) -> None:
        """`add()` from the admin endpoint's JSON.

        `body` is text (sent UTF-8 encoded) or `body_base64` for arbitrary bytes such as invalid
        UTF-8; `when_fields` ({"email": "a@b.c"}) stands in for `when`: every listed field of the
        body must equal the given value.
        """
        known = {
            "match", "status", "times", "after_commit", "delay", "reset", "body", "body_base64",
            "content_type", "headers", "record_id", "when_fields",
        }  # fmt: skip
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        match = spec.get("match")
        if not isinstance(match, str):
            raise ValueError("match is required, e.g. 'POST /contacts'")
        body: bytes | None = None
        if isinstance(spec.get("body"), str):
            body = spec["body"].encode()
        elif spec.get("body_base64") is not None:
            try:
                body = base64.b64decode(str(spec["body_base64"]), validate=True)
            except binascii.Error:
                raise ValueError("body_base64 is not base64") from None
        when: BodyPredicate | None = None
        expected = spec.get("when_fields")
        if expected is not None:
            if not isinstance(expected, dict):
                raise ValueError("when_fields must be an object")
            when = _fields_equal(dict(expected))
        self.add(
            match,
            status=_optional(spec, "status", int),
            times=_optional(spec, "times", int) or 1,
            after_commit=bool(spec.get("after_commit", False)),
            delay=float(_optional(spec, "delay", (int, float)) or 0.0),
            reset=bool(spec.get("reset", False)),
            body=body,
            content_type=_optional(spec, "content_type", str),
            headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
            record_id=_optional(spec, "record_id", str),
            when=when,
        )

    def clear(self) -> None:
        self._rules.clear()

    def take(self, method: str, path: str, record_id: str | None, body: JSON | None) -> FaultRule | None:
        """The first live rule matching this request, counted as hit; None if none matches."""
        for rule in self._rules:
            if rule.matches(method, path, record_id, body):
                rule.hits += 1
                return rule
        return None

    @property
    def needs_body(self) -> bool:
        return any(rule.live and rule.needs_body for rule in self._rules)

    def describe(self) -> list[JSON]:
        return [rule.describe() for rule in self._rules]

    def __len__(self) -> int:
        """Rules not yet used up."""
        return sum(1 for rule in self._rules if rule.live)


def _fields_equal(expected: dict[str, Any]) -> BodyPredicate:
    def predicate(body: JSON) -> bool:
        return all(body.get(name) == value for name, value in expected.items())

    return predicate


def _optional(spec: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} has the wrong type")
    return value
