"""Records as both APIs deliver them, reduced to what the engine needs to reason about."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Side(StrEnum):
    ECOSIRE = "ecosire"
    CRM = "crm"

    @property
    def other(self) -> Side:
        return Side.CRM if self is Side.ECOSIRE else Side.ECOSIRE


JSON = dict[str, Any]


class BadRecord(ValueError):
    """A remote record the engine cannot use; the message names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


def record_key(body: JSON, id_field: str) -> str:
    """A record's id as text: a string or a whole number, never empty, never a boolean."""
    value = body.get(id_field)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise BadRecord(id_field, "missing or not an id")
    return str(value)


def parse_timestamp(value: object, field: str = "updatedAt") -> datetime:
    """ISO 8601 with Z or an explicit offset, normalised to aware UTC."""
    if not isinstance(value, str) or not value:
        raise BadRecord(field, f"expected an ISO 8601 timestamp, got {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRecord(field, f"not an ISO 8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise BadRecord(field, f"timestamp has no time zone: {value[:40]!r}")
    return parsed.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """The wire form both APIs accept: UTC, milliseconds, Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class RemoteRecord:
    """One record read from one side: its id, its change stamp and its raw body."""

    side: Side
    id: str
    updated_at: datetime
    body: JSON
