"""Mapped field names and value types checked against what an API really returns.

A mapped field that an API never returns (a misspelling: `phoneNumbr`) reads as missing on every
record, and a write of it is silently ignored: nothing fails, and nothing says so. Two checks:

* **Unseen fields** (`FieldSample`): at the first pass of an entity, the first `SAMPLE_SIZE`
  records read from each side (or the whole side, if fewer) are looked at; a mapped field that
  none of them holds, not even as null, is reported.
* **`crmsyncd mapping check`** (`check_entity`): one page of each side, and per mapped field:
  absent from every record (unknown), a value of the wrong kind (a string where the union rule
  needs a list, a number where the other records hold text, ...), or named by two entries.

Pure: the engine reads the records and stores the results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from crmsyncd.domain.mapping import EntitySpec, FieldSpec, Transform, mapped_twice
from crmsyncd.domain.records import JSON, Side

# Records looked at per entity and side: enough for an API that leaves out a null field now and
# then to have sent it at least once, few enough to be read by the first page of a pass.
SAMPLE_SIZE = 100


def mapped_fields(entity: EntitySpec, side: Side) -> tuple[str, ...]:
    """The remote field names the mapping reads and writes on `side`, sorted: the key a stored
    result is valid for (a changed mapping is checked again)."""
    return tuple(sorted({name for spec in entity.fields for name in spec.remote_names(side)}))


def unseen_detail(entity: str, side: Side, remote: str, sampled: int) -> str:
    return (
        f"mapped field {remote!r} was in none of the {sampled} {entity} records read from {side.value}: "
        f"the {side.value} API never returned it. A misspelling in the mapping? Values of a field an "
        "API does not have are lost on write and read as missing"
    )


@dataclass(slots=True)
class FieldSample:
    """Which of the mapped fields the first records read from one side hold."""

    fields: tuple[str, ...]
    limit: int = SAMPLE_SIZE
    sampled: int = 0
    seen: set[str] = field(default_factory=set)

    def add(self, bodies: Iterable[JSON]) -> None:
        for body in bodies:
            if self.full:
                return
            self.sampled += 1
            self.seen.update(name for name in self.fields if name in body)

    @property
    def full(self) -> bool:
        return self.sampled >= self.limit

    @property
    def unseen(self) -> list[str]:
        return [name for name in self.fields if name not in self.seen]


class ProblemKind(StrEnum):
    UNKNOWN_FIELD = "unknown_field"
    WRONG_TYPE = "wrong_type"
    MAPPED_TWICE = "mapped_twice"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    entity: str
    side: Side
    field: str  # the remote field, as the API spells it
    message: str

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind.value,
            "entity": self.entity,
            "side": self.side.value,
            "field": self.field,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class _Expected:
    what: str  # "a list of strings"
    accepts: Callable[[Any], bool]


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _is_amount(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if not isinstance(value, str):
        return False
    try:
        return Decimal(value).is_finite()
    except InvalidOperation:
        return False


def _expected(entity: EntitySpec, spec: FieldSpec, side: Side) -> _Expected | None:
    """What the mapping's rule or transform needs the field to hold on `side`; None when the
    mapping says nothing about its kind (then the field's other values tell, see `_consensus`).
    The same expectations as canonical.py's reading of a record."""
    if spec.is_set:
        return _Expected(
            "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
        )
    if spec.name == entity.match_key:
        return _Expected("a string (the match key)", lambda v: isinstance(v, str))
    match spec.transform:
        case Transform.UPPER | Transform.LOWER:
            return _Expected("a string", lambda v: isinstance(v, str))
        case Transform.MINOR_UNITS if side is Side.ECOSIRE:
            return _Expected("integer minor units", lambda v: isinstance(v, int) and not isinstance(v, bool))
        case Transform.MINOR_UNITS:
            return _Expected("a decimal amount", _is_amount)
        case Transform.REF:
            return _Expected("an id (a string or a whole number)", _is_id)
        case _:
            return None


def kind_of(value: Any) -> str:
    """A JSON value's kind, as a message names it."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


# Among equally common kinds, the one a plain field most likely means.
_KIND_ORDER = ("a string", "a number", "true or false", "an object", "a list")


def _consensus(values: Iterable[Any]) -> str | None:
    """The kind most of a field's non-null values have, over both sides."""
    kinds = Counter(kind_of(v) for v in values if v is not None)
    if not kinds:
        return None
    return max(kinds, key=lambda k: (kinds[k], -_KIND_ORDER.index(k)))


def check_entity(
    entity: EntitySpec, pages: Mapping[Side, Sequence[JSON]], id_fields: Mapping[Side, str]
) -> list[Problem]:
    """Problems of one entity's mapping against a page of records from each side. A side with no
    records tells nothing about its fields: only the mapping itself (fields mapped twice) is
    checked there."""
    problems = [
        Problem(
            ProblemKind.MAPPED_TWICE,
            entity.name,
            side,
            remote,
            f"{side.value} field {remote!r} is mapped twice: by {' and '.join(names)}; the entries "
            "would write one field with different values",
        )
        for side, remote, names in mapped_twice(entity.fields)
    ]
    for side in Side:
        records = pages.get(side, ())
        if not records:
            continue
        for spec in entity.fields:
            problem = _check_field(entity, spec, side, records, pages, id_fields[side])
            if problem is not None:
                problems.append(problem)
    return problems


def _check_field(
    entity: EntitySpec,
    spec: FieldSpec,
    side: Side,
    records: Sequence[JSON],
    pages: Mapping[Side, Sequence[JSON]],
    id_field: str,
) -> Problem | None:
    remote = spec.remote_name(side)
    if not any(remote in body for body in records):
        return Problem(
            ProblemKind.UNKNOWN_FIELD,
            entity.name,
            side,
            remote,
            f"unknown field {remote!r} (mapped as {spec.name}): in none of the {len(records)} records "
            f"read; the {side.value} API never returned it. A misspelling?",
        )
    expected = _expected(entity, spec, side)
    if expected is None:
        kind = _consensus(body.get(spec.remote_name(s)) for s in Side for body in pages.get(s, ()))
        if kind is None:
            return None
        expected = _Expected(kind, lambda v: kind_of(v) == kind)
    wrong = [body for body in records if body.get(remote) is not None and not expected.accepts(body[remote])]
    if not wrong:
        return None
    got = Counter(kind_of(body[remote]) for body in wrong).most_common(1)[0][0]
    first = wrong[0].get(id_field)
    return Problem(
        ProblemKind.WRONG_TYPE,
        entity.name,
        side,
        remote,
        f"wrong type of {remote!r} (mapped as {spec.name}): expected {expected.what}, got {got} in "
        f"{len(wrong)} of {len(records)} records (first: {id_field} {first!r})",
    )
