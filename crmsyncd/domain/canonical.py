"""Translation between each side's record body and the canonical values the merge works on.

Canonical values are ECOSIRE's representation (integer minor units, lower-case currency, ECOSIRE
ids for references); sets are sorted lists so that equality means "same set".

Reading a body is also where bad input is caught, each problem naming the field as its API spells
it: a required field missing, null or blank; a wrong type; text too long to be a field value
(`MAX_TEXT_LENGTH`) or holding what no store can keep (U+0000, an unpaired surrogate). Valid text
is never altered: emoji, right-to-left scripts, combining marks and NFC or NFD forms pass byte for
byte. The match key alone is written without its surrounding blanks (`key_text`, which
`normalise_key` builds on): an address typed with a space matches without it, so it is written
without it too (ECOSIRE refuses a padded email); it is case-folded and NFC-normalised only to
compare. Read, it keeps its blanks, so that the side holding them differs from the other and is
written the trimmed value by the merge.

A field whose key is absent from a body is absent from its values, never None: the merge takes it
as unknown (nothing to copy, nothing to erase), where a null is a value."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from crmsyncd.domain.mapping import EntitySpec, FieldSpec, Transform
from crmsyncd.domain.records import JSON, BadRecord, Side

Values = dict[str, Any]
# (entity, side the id belongs to, id) -> the counterpart's id on the other side
RefTable = Mapping[tuple[str, Side, str], str]

# The longest text a mapped field may hold, in characters. Names, emails, titles and stages are far
# shorter; a value past this is a bug or an attack upstream, and copying it would only spread it.
MAX_TEXT_LENGTH = 10_000


class UnresolvedReference(Exception):
    """A reference to a record not linked yet; transient, since the target may link later."""

    def __init__(self, field: str, entity: str, side: Side, record_id: str) -> None:
        super().__init__(
            f"field {field!r}: {side.value} {entity} {record_id!r} is not linked to a "
            f"{side.other.value} record yet"
        )
        self.field = field


def key_text(value: Any) -> Any:
    """The match key's value as it is written: without the surrounding blanks no address holds.
    Anything but text is returned as it is."""
    return value.strip() if isinstance(value, str) else value


def normalise_key(value: Any) -> str | None:
    """The natural key: trimmed, case-folded and in one Unicode normal form (NFC), so that the
    same address typed with a precomposed or a combining accent is one key; empty is no key."""
    if not isinstance(value, str):
        return None
    # Canonical caseless matching (Unicode, D145): fold the decomposed form, then recompose.
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFD", key_text(value)).casefold())
    return text or None


def text_problem(value: str) -> str | None:
    """Why a string cannot be a field value, or None when it can."""
    if len(value) > MAX_TEXT_LENGTH:
        return f"text of {len(value)} characters, more than the {MAX_TEXT_LENGTH} allowed"
    if "\x00" in value:
        return "text contains U+0000 (NUL), which cannot be stored or sent on"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text contains an unpaired UTF-16 surrogate (broken text, e.g. half an emoji)"
    return None


def _check_text(name: str, value: Any, depth: int = 0) -> None:
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise BadRecord(name, problem)
    elif isinstance(value, list) and depth < 8:
        for item in value:
            _check_text(name, item, depth + 1)
    elif isinstance(value, dict) and depth < 8:
        for key, item in value.items():
            _check_text(name, key, depth + 1)
            _check_text(name, item, depth + 1)


def _missing(present: bool, raw: Any) -> str | None:
    if not present:
        return "required, but missing"
    if raw is None:
        return "required, but null"
    if (isinstance(raw, str) and not raw.strip()) or raw == []:
        return "required, but empty"
    return None


def ref_ids(entity: EntitySpec, side: Side, body: JSON) -> list[tuple[str, Side, str]]:
    """References of a CRM body that must be translated to ECOSIRE ids before canonicalising."""
    if side is Side.ECOSIRE:
        return []
    found = []
    for spec in entity.refs:
        value = body.get(spec.crm)
        if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            found.append((spec.ref_entity or "", Side.CRM, str(value)))
    return found


def canonicalize(entity: EntitySpec, side: Side, body: JSON, refs: RefTable) -> Values:
    """The canonical values of a body; BadRecord naming the first bad field. Every field is checked
    before an unresolved reference is reported: bad input is permanent, a missing link is not."""
    values: Values = {}
    unresolved: UnresolvedReference | None = None
    for spec in entity.fields:
        name, present, raw = _read(spec, side, body)
        if spec.required and (missing := _missing(present, raw)) is not None:
            raise BadRecord(name, missing)
        if not present:
            continue  # unknown, not empty: see the module's docstring
        if spec.name == entity.match_key and raw is not None and not isinstance(raw, str):
            # A match key that is not text could never be matched: a duplicate in waiting.
            raise BadRecord(name, f"expected a string (the match key), got {_kind(raw)}")
        _check_text(name, raw)
        try:
            values[spec.name] = _to_canonical(spec, side, raw, refs)
        except UnresolvedReference as exc:
            unresolved = unresolved or exc
    if unresolved is not None:
        raise unresolved
    return values


def to_remote(entity: EntitySpec, side: Side, values: Mapping[str, Any], refs: RefTable) -> JSON:
    """A body for `side` holding the given canonical values, under that side's field names."""
    body: JSON = {}
    for name, value in values.items():
        spec = entity.field(name)
        # A create sends the source's values as read: its key is written as it matches.
        written = key_text(value) if name == entity.match_key else value
        if spec.transform is Transform.SPLIT_NAME and side is Side.CRM:
            body.update(zip(spec.remote_names(side), split_name(value), strict=True))
            continue
        body[spec.remote_name(side)] = _from_canonical(spec, side, written, refs)
    return body


def _read(spec: FieldSpec, side: Side, body: JSON) -> tuple[str, bool, Any]:
    """(the field's name as a message gives it, whether the body has it, its raw value). A split
    name's parts are joined with a space, each trimmed, the blank ones left out."""
    names = spec.remote_names(side)
    if len(names) == 1:
        return names[0], names[0] in body, body.get(names[0])
    joined = "+".join(names)
    present = [n for n in names if n in body]
    parts: list[str] = []
    for n in present:
        part = body[n]
        if part is None:
            continue
        if not isinstance(part, str):
            raise BadRecord(n, f"expected a string, got {_kind(part)}")
        if part.strip():
            parts.append(part.strip())
    if parts:
        return joined, True, " ".join(parts)
    return joined, bool(present), None if all(body[n] is None for n in present) else ""


def split_name(value: Any) -> tuple[str | None, str | None]:
    """A name as (its first word, the rest): "Ada Lovelace King" -> ("Ada", "Lovelace King");
    the rest keeps its inner spaces, a one-word name has an empty rest; None stays None."""
    if value is None:
        return None, None
    words = str(value).strip().split(maxsplit=1)
    if not words:
        return "", ""
    return words[0], words[1].strip() if len(words) > 1 else ""


def _to_canonical(spec: FieldSpec, side: Side, raw: Any, refs: RefTable) -> Any:
    name = spec.remote_name(side)
    if spec.is_set:
        if raw is None:
            return []
        if spec.transform is Transform.SEMICOLON_LIST and side is Side.CRM and isinstance(raw, str):
            raw = [part.strip() for part in raw.split(";") if part.strip()]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise BadRecord(name, f"expected a list of strings, got {_kind(raw)}")
        return sorted(set(raw))
    if raw is None:
        return None
    match spec.transform:
        case Transform.NONE | Transform.SEMICOLON_LIST:
            return raw
        case Transform.SPLIT_NAME:
            if not isinstance(raw, str):
                raise BadRecord(name, f"expected a string, got {_kind(raw)}")
            return raw
        case Transform.TABLE:
            known = [e for e, _ in spec.table] if side is Side.ECOSIRE else [c for _, c in spec.table]
            if raw not in known:
                raise BadRecord(
                    name,
                    f"{str(raw)[:40]!r} is not in the mapping's values table (one of {', '.join(known)})",
                )
            if side is Side.ECOSIRE:
                return raw
            return next(e for e, c in spec.table if c == raw)
        case Transform.UPPER | Transform.LOWER:
            if not isinstance(raw, str):
                raise BadRecord(name, f"expected a string, got {_kind(raw)}")
            return raw.lower() if spec.transform is Transform.UPPER else raw.upper()
        case Transform.MINOR_UNITS:
            return _minor_units(name, side, raw)
        case Transform.REF:
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                raise BadRecord(name, f"expected an id, got {_kind(raw)}")
            if side is Side.ECOSIRE:
                return str(raw)
            target = refs.get((spec.ref_entity or "", Side.CRM, str(raw)))
            if target is None:
                raise UnresolvedReference(name, spec.ref_entity or "", Side.CRM, str(raw))
            return target
    raise AssertionError(spec.transform)  # pragma: no cover - the match is exhaustive


def _from_canonical(spec: FieldSpec, side: Side, value: Any, refs: RefTable) -> Any:
    if spec.transform is Transform.SEMICOLON_LIST and side is Side.CRM and isinstance(value, list):
        return ";".join(sorted(str(v) for v in value))
    if value is None or spec.is_set or side is Side.ECOSIRE:
        return value
    match spec.transform:
        case Transform.NONE | Transform.SEMICOLON_LIST | Transform.SPLIT_NAME:
            return value
        case Transform.TABLE:
            for ecosire, crm in spec.table:
                if ecosire == value:
                    return crm
            raise BadRecord(spec.crm, f"{str(value)[:40]!r} is not in the mapping's values table")
        case Transform.UPPER:
            return str(value).upper()
        case Transform.LOWER:
            return str(value).lower()
        case Transform.MINOR_UNITS:
            amount = Decimal(int(value)) / 100
            return int(amount) if amount == amount.to_integral_value() else float(amount)
        case Transform.REF:
            target = refs.get((spec.ref_entity or "", Side.ECOSIRE, str(value)))
            if target is None:
                raise UnresolvedReference(spec.name, spec.ref_entity or "", Side.ECOSIRE, str(value))
            return target
    raise AssertionError(spec.transform)  # pragma: no cover


def _minor_units(name: str, side: Side, raw: Any) -> int:
    if isinstance(raw, bool):
        raise BadRecord(name, "expected a number, got bool")
    if side is Side.ECOSIRE:
        if not isinstance(raw, int):
            raise BadRecord(name, f"expected integer minor units, got {_kind(raw)}")
        return raw
    if not isinstance(raw, int | float | str):
        raise BadRecord(name, f"expected a decimal amount, got {_kind(raw)}")
    try:
        amount = Decimal(str(raw))
    except InvalidOperation:
        raise BadRecord(name, f"expected a decimal amount, got {str(raw)[:40]!r}") from None
    if not amount.is_finite():
        raise BadRecord(name, "expected a finite amount")
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
