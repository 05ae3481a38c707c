"""Field rules of a sandbox resource: what a write may contain and what a list may filter on.

The two APIs differ only in their rules and wording, so each declares a `Schema` built from the
small checks below; the server code that applies them is shared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crmsyncd.domain.records import JSON

# A check gets the field name and the sent value and answers an error message, or None if valid.
Check = Callable[[str, Any], str | None]
# A list filter gets the query value and a record and says whether the record is kept.
Filter = Callable[[str, JSON], bool]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def text(*, nullable: bool = True, non_empty: bool = False) -> Check:
    def check(name: str, value: Any) -> str | None:
        if value is None:
            return None if nullable else f"{name} should not be empty"
        if not isinstance(value, str):
            return f"{name} must be a string"
        if non_empty and not value.strip():
            return f"{name} should not be empty"
        return None

    return check


def one_of(*allowed: str, nullable: bool = True) -> Check:
    def check(name: str, value: Any) -> str | None:
        if (value is None and nullable) or value in allowed:
            return None
        return f"{name} must be one of the following values: {', '.join(allowed)}"

    return check


def email(pattern: re.Pattern[str], *, strip: bool) -> Check:
    """An email or null; `strip` says whether surrounding blanks are forgiven before matching."""

    def check(name: str, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, str) and pattern.fullmatch(value.strip() if strip else value):
            return None
        return f"{name} must be an email"

    return check


def string_list(
    not_list: str = "{name} must be an array", item: str = "each value in {name} must be a string"
) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, list):
            return not_list.format(name=name)
        if not all(isinstance(entry, str) for entry in value):
            return item.format(name=name)
        return None

    return check


def integer(*, nullable: bool = True) -> Check:
    def check(name: str, value: Any) -> str | None:
        if (value is None and nullable) or _is_int(value):
            return None
        return f"{name} must be an integer number"

    return check


def number(*, nullable: bool = True) -> Check:
    def check(name: str, value: Any) -> str | None:
        if (value is None and nullable) or _is_number(value):
            return None
        return f"{name} must be a number"

    return check


def matches(pattern: re.Pattern[str], what: str, *, nullable: bool = True) -> Check:
    def check(name: str, value: Any) -> str | None:
        if value is None and nullable:
            return None
        if isinstance(value, str) and pattern.fullmatch(value):
            return None
        return f"{name} must be {what}"

    return check


def text_object(keys: tuple[str, ...]) -> Check:
    """An object (or null) whose known keys hold strings or null; unknown keys are tolerated."""

    def check(name: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            return f"{name} must be an object"
        for key in keys:
            if value.get(key) is not None and not isinstance(value[key], str):
                return f"{name}.{key} must be a string"
        return None

    return check


def unique_key(value: object) -> str | None:
    """How unique values (emails) compare: trimmed and case-folded; blanks never collide."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().casefold()


@dataclass(frozen=True, slots=True)
class Field:
    check: Check
    # The value a created record gets when the write does not send the field.
    default: Callable[[], Any] = lambda: None
    required: bool = False


@dataclass(frozen=True, slots=True)
class Schema:
    singular: str  # "contact": used in messages such as "Contact not found"
    fields: Mapping[str, Field]  # writable fields, in the order records are rendered
    required_message: str = "{name} should not be empty"
    # Values the server sets on create that clients cannot write (e.g. organizationId).
    server_fields: Mapping[str, Any] = field(default_factory=dict)
    unique: str | None = None  # the field compared with `unique_key`, 409 when taken
    unique_message: str = "{name} already registered"
    # field -> (resource whose id it must hold, message when it does not)
    references: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    sort_fields: tuple[str, ...] = ("createdAt", "updatedAt")
    filters: Mapping[str, Filter] = field(default_factory=dict)

    def blank(self) -> JSON:
        """A new record's body before the write is applied: defaults and server fields."""
        body = {name: spec.default() for name, spec in self.fields.items()}
        body.update(self.server_fields)
        return body

    def clean(self, body: JSON, *, create: bool) -> tuple[JSON, list[str]]:
        """The writable fields of `body` and the validation messages.

        Unknown and read-only fields (id, createdAt, ...) are dropped silently, as the real
        APIs ignore them.
        """
        changes = {name: body[name] for name in self.fields if name in body}
        errors: list[str] = []
        for name, spec in self.fields.items():
            if name not in changes:
                if create and spec.required:
                    errors.append(self.required_message.format(name=name))
                continue
            problem = spec.check(name, changes[name])
            if problem is None and spec.required and changes[name] is None:
                problem = self.required_message.format(name=name)
            if problem is not None:
                errors.append(problem)
        return changes, errors
