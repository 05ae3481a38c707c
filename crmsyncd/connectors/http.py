"""The HTTP layer every connector shares: one session, one classification, one retry policy.

Every response and every transport failure is classified exactly once here, into an `Outcome`.
Reads are retried inline on transient failures; writes are not (a POST whose answer was lost may
have committed, so the engine must look before it writes again). A 429 means "not processed", so
every method waits and tries again, within bounds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
import structlog
import yarl
from pydantic import SecretStr

from crmsyncd.connectors.base import ConnectorError, Outcome, RequestStats
from crmsyncd.connectors.pacing import Clock, Pacer, SystemClock, parse_http_date
from crmsyncd.domain.records import Side

log = structlog.get_logger(__name__)

Method = Literal["GET", "POST", "PATCH", "DELETE"]
RequestKind = Literal["lists", "reads", "creates", "updates", "deletes", "lookups"]
T = TypeVar("T")

MAX_MESSAGE = 300  # API messages are kept for the error queue; a proxy's HTML page is not
# The limit an API documents, in requests per minute: the pace while its server has sent no
# rate-limit headers and the user configured none (shared/api/ecosire.md). A CRM documents none.
DOCUMENTED_PER_MINUTE: Mapping[Side, int] = {Side.ECOSIRE: 60}
_REDACTED = "**********"


def _orjson_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_session(timeout: float = 30.0) -> aiohttp.ClientSession:
    """The one session all connectors share. Call from a running event loop; the app closes it."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(ssl=True),  # certificate verification on
        json_serialize=_orjson_dumps,
        raise_for_status=False,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    read_attempts: int = 4  # tries of a read, the first included
    backoff_base: float = 0.5  # seconds; full jitter over base * 2**n, capped
    backoff_cap: float = 10.0
    rate_limit_tries: int = 6  # tries of any request answered 429, the first included
    rate_limit_wait_cap: float = 65.0  # never wait longer than this on a server's word
    rate_limit_jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.read_attempts < 1 or self.rate_limit_tries < 1:
            raise ValueError("read_attempts and rate_limit_tries must be at least 1")
        if min(self.backoff_base, self.backoff_cap, self.rate_limit_wait_cap) < 0:
            raise ValueError("backoff and wait caps must not be negative")
        if self.rate_limit_jitter < 0:
            raise ValueError("rate_limit_jitter must not be negative")


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: Any  # parsed JSON; None when no body was expected
    server_time: datetime | None  # the server's Date header


class MalformedResponse(Exception):
    """A 2xx whose JSON has the wrong shape; classified RETRY like any other garbled answer."""


@dataclass(frozen=True, slots=True)
class _Failure:
    outcome: Outcome
    message: str
    status: int | None = None
    headers: Mapping[str, str] | None = None
    sent: bool = True  # False only when the request provably never left (connect failed)


def classify_status(status: int) -> Outcome:
    """The one mapping of HTTP status to what the engine should do."""
    if 200 <= status < 300:
        return Outcome.OK
    if status in (401, 403):
        return Outcome.AUTH_FAILED
    if status in (404, 410):
        return Outcome.NOT_FOUND
    if status == 409:
        return Outcome.CONFLICT
    if status == 429:
        return Outcome.RATE_LIMITED
    if status == 408 or status >= 500:
        return Outcome.RETRY
    # 400, 422 and every other client error: this request will never be accepted as it is.
    # 1xx/3xx (redirects are not followed, so credentials never travel elsewhere) count here too:
    # they mean a misconfigured URL, which retrying cannot fix.
    return Outcome.PERMANENT


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def error_message(raw: bytes, content_type: str, status: int, reason: str) -> str:
    """The API's own message from its envelope {"statusCode", "message", "error"}."""
    try:
        doc: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        message = doc.get("message")
        if isinstance(message, list) and message:
            return _clip("; ".join(str(part) for part in message))
        if isinstance(message, str) and message.strip():
            return _clip(message)
        error = doc.get("error")
        if isinstance(error, str) and error.strip():
            return _clip(error)
    fallback = f"HTTP {status} {reason}".strip()
    if content_type == "text/plain" and raw:
        return _clip(f"{fallback}: {raw.decode('utf-8', 'replace')}")
    return fallback


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(raw: bytes) -> Any:
    """The JSON document in `raw`, which must be UTF-8; ValueError when it is not.

    orjson refuses an escaped unpaired surrogate ("\\ud83d" alone, what a JavaScript server sends
    for text cut in the middle of an emoji). That is one record's bad text, not a broken answer:
    such a page is decoded by the standard library instead, and the record is parked by the
    engine, naming the field, while the rest of the page syncs."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        first = exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"invalid JSON in answer: {_clip(str(first))}") from None
    if "\\u" not in text:
        raise ValueError(f"invalid JSON in answer: {_clip(str(first))}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise ValueError(f"invalid JSON in answer: {_clip(str(first))}") from None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _count(stats: RequestStats, kind: RequestKind) -> None:
    setattr(stats, kind, getattr(stats, kind) + 1)


class ApiClient:
    """Requests to one API with one key: pacing, classification, retries and request counts."""

    def __init__(
        self,
        *,
        side: Side,
        base_url: str,
        api_key: SecretStr,
        key_variable: str,
        url_variable: str,
        session: aiohttp.ClientSession,
        timeout: float,
        requests_per_minute: int | None,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        url = yarl.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an absolute http(s) URL")
        self.side = side
        self.base_url = str(url)
        self.stats = RequestStats()
        self._api_key = api_key
        # Where the user set the key and the URL: named (never their values) when refused.
        self._key_variable = key_variable
        self._url_variable = url_variable
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._policy = policy or RetryPolicy()
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        # requests_per_minute is the user's setting (None: not set): a cap on the server's pace and
        # the pace while the server says nothing; see connectors/pacing.py for which wins when.
        self._pacer = Pacer(
            requests_per_minute,
            default_per_minute=DOCUMENTED_PER_MINUTE.get(side),
            clock=self._clock,
            wait_cap=self._policy.rate_limit_wait_cap,
            jitter=self._policy.rate_limit_jitter,
            rng=self._rng,
        )

    def __repr__(self) -> str:
        return f"ApiClient(side={self.side.value!r}, base_url={self.base_url!r})"

    def scrub(self, text: str) -> str:
        """Remove the key from text, in case a server echoes our headers back in an error."""
        secret = self._api_key.get_secret_value()
        return text.replace(secret, _REDACTED) if len(secret) >= 4 else text

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._policy.backoff_cap, self._policy.backoff_base * 2 ** (failures - 1))
        return self._rng.uniform(0.0, ceiling)  # "full jitter": spreads the herd of retries

    async def request(
        self,
        method: Method,
        path: str,
        *,
        kind: RequestKind,
        parse: Callable[[ApiResponse], T],
        params: Mapping[str, str] | None = None,
        body: Any = None,
        expect_json: bool = True,
    ) -> T:
        """One logical call. `path` is already URL-encoded; `parse` may raise MalformedResponse."""
        is_read = method == "GET"
        try:
            payload = orjson.dumps(body) if body is not None else None
        except orjson.JSONEncodeError as exc:
            # A value the mapping should have converted; park the record instead of crashing.
            failure = _Failure(Outcome.PERMANENT, f"request body is not JSON-serialisable: {exc}", sent=False)
            raise self._error(failure, method, path) from None
        failures = 0
        limited = 0
        while True:
            seq = await self._pacer.acquire()
            _count(self.stats, kind)
            answer = await self._attempt(method, path, seq, params, payload, expect_json)
            if isinstance(answer, ApiResponse):
                try:
                    return parse(answer)
                except MalformedResponse as exc:
                    failure = _Failure(Outcome.RETRY, str(exc), answer.status)
            else:
                failure = answer

            if failure.outcome is Outcome.RATE_LIMITED:
                self.stats.rate_limited += 1
                limited += 1
                if limited >= self._policy.rate_limit_tries:
                    raise self._error(failure, method, path, f"still rate limited after {limited} tries")
                fallback = min(self._policy.backoff_cap, self._policy.backoff_base * 2 ** (limited - 1))
                wait = self._pacer.on_rate_limited(failure.headers or {}, fallback)
                log.info("rate_limited", side=self.side.value, method=method, path=path, wait=wait)
                self.stats.retried += 1
                continue

            if failure.outcome is Outcome.RETRY and is_read:
                failures += 1
                if failures < self._policy.read_attempts:
                    delay = self._backoff(failures)
                    log.info(
                        "retrying_read",
                        side=self.side.value,
                        path=path,
                        reason=self.scrub(failure.message),
                        delay=round(delay, 3),
                    )
                    self.stats.retried += 1
                    await self._clock.sleep(delay)
                    continue
                raise self._error(failure, method, path, f"gave up after {failures} attempts")

            # A write that failed transiently may have been applied all the same: say so.
            maybe = failure.outcome is Outcome.RETRY and not is_read and failure.sent
            raise self._error(failure, method, path, committed_maybe=maybe)

    def _error(
        self,
        failure: _Failure,
        method: str,
        path: str,
        note: str = "",
        *,
        committed_maybe: bool = False,
    ) -> ConnectorError:
        message = f"{failure.message} ({note})" if note else failure.message
        if failure.outcome is Outcome.AUTH_FAILED:
            message += "; " + self._what_to_check(failure.status)
        return ConnectorError(
            failure.outcome,
            self.scrub(message),
            side=self.side,
            status=failure.status,
            method=method,
            path=path,
            committed_maybe=committed_maybe,
        )

    def _what_to_check(self, status: int | None) -> str:
        if status == 401:
            return f"the {self.side.value} API refused the credentials: check {self._key_variable}"
        if status == 403:
            return (
                f"the {self.side.value} API accepted the key but refused the request (its role or "
                f"scopes are too narrow): check the permissions of {self._key_variable}"
            )
        # No status: the certificate did not verify, before any request was sent.
        return f"the server's TLS certificate does not verify: check {self._url_variable} and the CA bundle"

    async def _attempt(
        self,
        method: Method,
        path: str,
        seq: int,
        params: Mapping[str, str] | None,
        payload: bytes | None,
        expect_json: bool,
    ) -> ApiResponse | _Failure:
        # encoded=True: ids were quoted by the caller and must not be re-normalised ("..").
        url = yarl.URL(self.base_url + path, encoded=True)
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        # The key goes into the header and nowhere else; it is never stored in plain text.
        headers["Authorization"] = "Bearer " + self._api_key.get_secret_value()
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                data=payload,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status, reason = resp.status, resp.reason or ""
                resp_headers, content_type = resp.headers, resp.content_type
        # aiohttp's exceptions carry the request headers (the key) in their repr: only their
        # class name and str() go into our messages, and nothing is chained.
        except TimeoutError:
            return _Failure(Outcome.RETRY, f"no answer within {self._timeout.total} s")
        except aiohttp.ClientConnectorCertificateError as exc:
            # A certificate that does not verify will not verify on the next try either.
            return _Failure(Outcome.AUTH_FAILED, f"TLS certificate rejected: {exc}", sent=False)
        except aiohttp.ClientConnectorError as exc:
            return _Failure(Outcome.RETRY, f"cannot connect: {exc}", sent=False)
        except aiohttp.InvalidURL as exc:
            return _Failure(Outcome.PERMANENT, f"invalid URL: {exc}", sent=False)
        except (aiohttp.ClientError, OSError) as exc:
            # ServerDisconnected, connection reset, truncated payload: the answer was lost.
            return _Failure(Outcome.RETRY, f"{type(exc).__name__}: {exc}")

        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        self._pacer.observe(seq, resp_headers)
        outcome = classify_status(status)
        if outcome is not Outcome.OK:
            return _Failure(
                outcome,
                error_message(raw, content_type, status, reason),
                status,
                headers=resp_headers,
            )
        server_time = parse_http_date(resp_headers.get("Date"))
        if not expect_json or status == 204:
            return ApiResponse(status, None, server_time)
        if not _is_json(content_type):
            return _Failure(Outcome.RETRY, f"expected JSON, got content type {content_type!r}", status)
        try:
            body = decode_json(raw)  # also rejects invalid UTF-8
        except ValueError as exc:
            return _Failure(Outcome.RETRY, str(exc), status)
        return ApiResponse(status, body, server_time)


def path_segment(value: str) -> str:
    """A record id as exactly one URL path segment: "/", "?", "#" and the like percent-encoded,
    and the dot segments spelled out, so an id can never climb out of its collection."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")
