"""structlog set-up: context bound per pass, entity, side and record; JSON through orjson or a
console renderer; a last processor that scrubs secrets whatever a caller passed in."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_SECRET_KEYS = ("api_key", "apikey", "authorization", "password", "token", "secret", "dsn")
REDACTED = "**********"


class SecretScrubber:
    """Replaces any known secret value, wherever it appears in an event, and any field whose name
    says it is a credential. Known values come from the settings at start-up."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._field(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def _field(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and any(word in key.lower() for word in _SECRET_KEYS):
            return REDACTED if value else value
        return self.scrub(value)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return {k: self._field(k, v) for k, v in event.items()}


def _orjson_dumps(event: Any, **kw: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        SecretScrubber(secrets),
        renderer,
    ]
    # Libraries log through the standard library (asyncpg's pool, APScheduler): their records go
    # through the same processors and renderer, so the stream stays one JSON object per line.
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                SecretScrubber(secrets),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries speak up only when something is wrong
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    # Lazy: a module-level logger must follow the configuration made later at start-up.
    return structlog.get_logger("crmsyncd", **context)
