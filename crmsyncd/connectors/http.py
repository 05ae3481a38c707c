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

from crmsyncd.connectors.auth import AuthStrategy, StaticToken
from crmsyncd.connectors.base import ConnectorError, Outcome, RequestStats
from crmsyncd.connectors.pacing import Clock, Pacer, Pacing, SystemClock, parse_http_date
from crmsyncd.domain.records import Side

log = structlog.get_logger(__name__)

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
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
class RawAnswer:
    """A non-2xx answer as received, for an API's own error parser and classifier."""

    status: int
    reason: str
    content_type: str
    body: bytes
    headers: Mapping[str, str]


# The API's message from an error answer (its envelope's wording); default `error_message`.
ErrorParser = Callable[[RawAnswer], str]
# An API's own reading of an error answer, where its status alone does not say enough (HubSpot's
# 401 EXPIRED_AUTHENTICATION, its DAILY 429); None: `classify_status` decides.
Classifier = Callable[[RawAnswer], Outcome | None]


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


def clip(text: str) -> str:
    """Text for the error queue: one line, at most MAX_MESSAGE characters."""
    return _clip(text)


def default_error_message(answer: RawAnswer) -> str:
    return error_message(answer.body, answer.content_type, answer.status, answer.reason)


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
    """Requests to one API with one credential: pacing, classification, retries and request counts.

    The credential is an auth strategy (connectors/auth.py); `api_key` and `key_variable` are the
    shorthand for a static one. An API whose errors have their own envelope gives `error_parser`,
    one whose status codes say too little gives `classifier`; one with its own rate-limit headers
    gives its `pacer`, shared by every caller of the connector."""

    def __init__(
        self,
        *,
        side: Side,
        base_url: str,
        url_variable: str,
        session: aiohttp.ClientSession,
        timeout: float,
        requests_per_minute: int | None,
        api_key: SecretStr | None = None,
        key_variable: str = "",
        auth: AuthStrategy | None = None,
        error_parser: ErrorParser | None = None,
        classifier: Classifier | None = None,
        pacer: Pacing | None = None,
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
        if auth is None:
            if api_key is None or not key_variable:
                raise ValueError("an ApiClient needs an auth strategy, or api_key and key_variable")
            auth = StaticToken(api_key, key_variable)
        self._auth = auth
        # Where the user set the URL (the credentials: `auth.variables`): named, never their
        # values, when refused.
        self._url_variable = url_variable
        self._error_parser = error_parser or default_error_message
        self._classifier = classifier
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._policy = policy or RetryPolicy()
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        # requests_per_minute is the user's setting (None: not set): a cap on the server's pace and
        # the pace while the server says nothing; see connectors/pacing.py for which wins when.
        self._pacer: Pacing = pacer or Pacer(
            requests_per_minute,
            default_per_minute=DOCUMENTED_PER_MINUTE.get(side),
            clock=self._clock,
            wait_cap=self._policy.rate_limit_wait_cap,
            jitter=self._policy.rate_limit_jitter,
            rng=self._rng,
        )

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def rng(self) -> random.Random:
        return self._rng

    def __repr__(self) -> str:
        return f"ApiClient(side={self.side.value!r}, base_url={self.base_url!r})"

    def scrub(self, text: str) -> str:
        """Remove every secret of the auth strategy from text, in case a server echoes our
        headers back in an error."""
        for secret in self._auth.secrets():
            if len(secret) >= 4:
                text = text.replace(secret, _REDACTED)
        return text

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
        read: bool | None = None,
        pacer: Pacing | None = None,
    ) -> T:
        """One logical call. `path` is already URL-encoded; `parse` may raise MalformedResponse.
        `read`: the call changes nothing, so a transient failure is retried here (default: GET
        only; a search or batch read POSTs). `pacer`: another pacer than the client's own, for
        an endpoint the API limits apart (HubSpot's search)."""
        is_read = method == "GET" if read is None else read
        pacing = pacer or self._pacer
        try:
            payload = orjson.dumps(body) if body is not None else None
        except orjson.JSONEncodeError as exc:
            # A value the mapping should have converted; park the record instead of crashing.
            failure = _Failure(Outcome.PERMANENT, f"request body is not JSON-serialisable: {exc}", sent=False)
            raise self._error(failure, method, path) from None
        failures = 0
        limited = 0
        renewed = False
        while True:
            authorization = await self._signed(method, path)
            seq = await pacing.acquire()
            _count(self.stats, kind)
            answer = await self._attempt(
                method, path, seq, pacing, authorization, params, payload, expect_json
            )
            if isinstance(answer, ApiResponse):
                try:
                    return parse(answer)
                except MalformedResponse as exc:
                    failure = _Failure(Outcome.RETRY, str(exc), answer.status)
            else:
                failure = answer

            if failure.outcome is Outcome.REFRESH_AUTH:
                # An expired token: nothing was done, so even a write may be repeated, once.
                if not renewed and await self._renew(authorization, method, path):
                    renewed = True
                    self.stats.retried += 1
                    log.info("auth_renewed", side=self.side.value, method=method, path=path)
                    continue
                failure = _Failure(Outcome.AUTH_FAILED, failure.message, failure.status, failure.headers)

            if failure.outcome is Outcome.RATE_LIMITED:
                self.stats.rate_limited += 1
                limited += 1
                if limited >= self._policy.rate_limit_tries:
                    raise self._error(failure, method, path, f"still rate limited after {limited} tries")
                fallback = min(self._policy.backoff_cap, self._policy.backoff_base * 2 ** (limited - 1))
                wait = pacing.on_rate_limited(failure.headers or {}, fallback)
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

    async def _signed(self, method: str, path: str) -> str:
        try:
            return await self._auth.authorization()
        except ConnectorError as exc:
            raise self._relabel(exc, method, path) from None

    async def _renew(self, refused: str, method: str, path: str) -> bool:
        try:
            return await self._auth.renew(refused)
        except ConnectorError as exc:
            raise self._relabel(exc, method, path) from None

    def _relabel(self, exc: ConnectorError, method: str, path: str) -> ConnectorError:
        """A failed token renewal, reported against the request that needed it."""
        return ConnectorError(
            exc.outcome, self.scrub(exc.message), side=self.side, status=exc.status, method=method, path=path
        )

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
        variables = self._auth.variables
        if status == 401:
            return f"the {self.side.value} API refused the credentials: check {variables}"
        if status == 403:
            return (
                f"the {self.side.value} API accepted the key but refused the request (its role or "
                f"scopes are too narrow): check the permissions of {variables}"
            )
        # No status: the certificate did not verify, before any request was sent.
        return f"the server's TLS certificate does not verify: check {self._url_variable} and the CA bundle"

    async def _attempt(
        self,
        method: Method,
        path: str,
        seq: int,
        pacing: Pacing,
        authorization: str,
        params: Mapping[str, str] | None,
        payload: bytes | None,
        expect_json: bool,
    ) -> ApiResponse | _Failure:
        # encoded=True: ids were quoted by the caller and must not be re-normalised ("..").
        url = yarl.URL(self.base_url + path, encoded=True)
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        # The credential goes into the header and nowhere else.
        headers["Authorization"] = authorization
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
        pacing.observe(seq, resp_headers)
        outcome = classify_status(status)
        if outcome is not Outcome.OK:
            refusal = RawAnswer(status, reason, content_type, raw, resp_headers)
            if self._classifier is not None:
                outcome = self._classifier(refusal) or outcome
            return _Failure(outcome, self._error_parser(refusal), status, headers=resp_headers)
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
