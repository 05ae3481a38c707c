"""The mapping: per entity, the resource on each side, the match key, and per field its names,
direction, conflict rule, transform and whether it is immutable. Loaded from TOML and validated
once, with errors that name the file, the key and the reason."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from crmsyncd.domain.records import Side

E = TypeVar("E", bound=StrEnum)


class Direction(StrEnum):
    BOTH = "both"
    ECOSIRE_TO_CRM = "ecosire_to_crm"
    CRM_TO_ECOSIRE = "crm_to_ecosire"

    def flows_to(self, target: Side) -> bool:
        if self is Direction.BOTH:
            return True
        return (self is Direction.ECOSIRE_TO_CRM) == (target is Side.CRM)


class Rule(StrEnum):
    LAST_UPDATED_WINS = "last_updated_wins"
    ECOSIRE_WINS = "ecosire_wins"
    CRM_WINS = "crm_wins"
    UNION = "union"

    @property
    def winner(self) -> Side | None:
        """The side a fixed rule names; None where the outcome depends on the edits."""
        return {Rule.ECOSIRE_WINS: Side.ECOSIRE, Rule.CRM_WINS: Side.CRM}.get(self)


class Transform(StrEnum):
    NONE = "none"
    MINOR_UNITS = "minor_units"  # ECOSIRE integer minor units <-> CRM decimal amount
    UPPER = "upper"  # canonical lower case, CRM upper case (ISO 4217 codes)
    LOWER = "lower"  # canonical upper case, CRM lower case
    REF = "ref"  # an id of another entity, translated through that entity's record map
    # One canonical name over two CRM fields (HubSpot's firstname, lastname): the CRM's are joined
    # with a space; a name is written as its first word and the rest (inner spaces kept).
    SPLIT_NAME = "split_name"
    # A set (union) field that the CRM holds as one `;`-joined string (HubSpot's multiple
    # checkboxes): "a;b" <-> ["a", "b"], each value trimmed, "" and null the empty set.
    SEMICOLON_LIST = "semicolon_list"
    # A value table (`values = {ecosire = "crm", ...}`, one to one): stage names. A value outside
    # it, on either side, is bad input naming the field.
    TABLE = "table"


class DeletePolicy(StrEnum):
    PROPAGATE = "propagate"
    IGNORE = "ignore"
    FLAG = "flag"


class MappingError(ValueError):
    def __init__(self, source: str, key: str, reason: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str  # canonical name
    ecosire: str
    crm: str
    direction: Direction
    rule: Rule
    transform: Transform = Transform.NONE
    ref_entity: str | None = None
    # A record whose value is missing, null or blank on either side is bad input: parked at
    # staging with the field named, instead of costing a write the other API would refuse.
    required: bool = False
    # The winner's value is the record's identity: once linked, an edit on the other side is
    # written back (reverted) instead of flowing. Only with a fixed winner (checked at load).
    immutable: bool = False
    # The CRM fields after `crm` that hold the value too (split_name's lastname).
    crm_rest: tuple[str, ...] = ()
    # transform table: (ECOSIRE value, CRM value) pairs, one to one.
    table: tuple[tuple[str, str], ...] = ()

    def remote_name(self, side: Side) -> str:
        return self.ecosire if side is Side.ECOSIRE else self.crm

    def remote_names(self, side: Side) -> tuple[str, ...]:
        """Every field of `side` that holds this value (two for a split name on the CRM)."""
        return (self.ecosire,) if side is Side.ECOSIRE else (self.crm, *self.crm_rest)

    @property
    def is_set(self) -> bool:
        return self.rule is Rule.UNION


@dataclass(frozen=True, slots=True)
class EntitySpec:
    name: str
    ecosire: str  # resource (collection) on ECOSIRE
    crm: str  # resource on the CRM
    fields: tuple[FieldSpec, ...]
    match_key: str | None = None  # canonical field whose normalised value links records
    depends_on: tuple[str, ...] = ()
    delete_policy: DeletePolicy = DeletePolicy.FLAG

    def resource(self, side: Side) -> str:
        return self.ecosire if side is Side.ECOSIRE else self.crm

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def refs(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.transform is Transform.REF)


@dataclass(frozen=True, slots=True)
class MappingSpec:
    source: str
    entities: tuple[EntitySpec, ...]

    def entity(self, name: str) -> EntitySpec:
        for spec in self.entities:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def select(self, names: list[str]) -> tuple[EntitySpec, ...]:
        """The named entities in dependency order (contacts before the deals that refer to them)."""
        known = {e.name for e in self.entities}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise MappingError(self.source, "entities", f"no mapping for {', '.join(unknown)}")
        return tuple(e for e in self.entities if e.name in names)


DEFAULT_MAPPING = "built-in default mapping"


def load_mapping(path: Path | None = None, *, allow_duplicates: bool = False) -> MappingSpec:
    """`allow_duplicates`: keep remote fields mapped twice (see `mapped_twice`), for `crmsyncd
    mapping check` to report with the rest; a sync refuses them."""
    if path is None:
        text = resources.files("crmsyncd.domain").joinpath("default_mapping.toml").read_text("utf-8")
        return parse_mapping(text, DEFAULT_MAPPING, allow_duplicates=allow_duplicates)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise MappingError(str(path), "", f"cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise MappingError(str(path), "", "the file is not UTF-8 text") from None
    return parse_mapping(text, str(path), allow_duplicates=allow_duplicates)


def parse_mapping(text: str, source: str, *, allow_duplicates: bool = False) -> MappingSpec:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already carries "(at line N, column M)".
        raise MappingError(source, "", f"invalid TOML: {exc}") from None
    entities_doc = doc.get("entities")
    if not isinstance(entities_doc, dict) or not entities_doc:
        raise MappingError(source, "entities", "expected a table [entities.NAME] per entity")
    unknown_top = sorted(set(doc) - {"entities"})
    if unknown_top:
        raise MappingError(source, unknown_top[0], "unknown key (expected only [entities.*])")
    entities = [_parse_entity(source, name, body, allow_duplicates) for name, body in entities_doc.items()]
    _check_references(source, entities)
    return MappingSpec(source, tuple(_dependency_order(source, entities)))


_ENTITY_KEYS = {"ecosire", "crm", "match_key", "depends_on", "delete_policy", "fields"}
_FIELD_KEYS = {"ecosire", "crm", "direction", "rule", "transform", "required", "immutable", "values"}


def mapped_twice(fields: Sequence[FieldSpec]) -> list[tuple[Side, str, tuple[str, ...]]]:
    """Remote fields that several entries name on one side, as (side, remote field, the entries'
    names): the entries would write one field with different values."""
    found: list[tuple[Side, str, tuple[str, ...]]] = []
    for side in Side:
        by_remote: dict[str, list[str]] = {}
        for spec in fields:
            for remote in spec.remote_names(side):
                by_remote.setdefault(remote, []).append(spec.name)
        found.extend(
            (side, remote, tuple(names)) for remote, names in sorted(by_remote.items()) if len(names) > 1
        )
    return found


def _parse_entity(source: str, name: str, body: Any, allow_duplicates: bool = False) -> EntitySpec:
    key = f"entities.{name}"
    if not isinstance(body, dict):
        raise MappingError(source, key, "expected a table")
    _reject_unknown(source, key, body, _ENTITY_KEYS)
    fields_doc = body.get("fields")
    if not isinstance(fields_doc, dict) or not fields_doc:
        raise MappingError(source, f"{key}.fields", "expected at least one [..fields.NAME] table")
    fields = tuple(
        _parse_field(source, f"{key}.fields.{fname}", fname, fbody) for fname, fbody in fields_doc.items()
    )
    dupes = [] if allow_duplicates else mapped_twice(fields)
    if dupes:
        side, remote, _ = dupes[0]
        raise MappingError(source, f"{key}.fields", f"{side.value} field {remote!r} mapped twice")
    match_key = body.get("match_key")
    if match_key is not None and (not isinstance(match_key, str) or match_key not in fields_doc):
        raise MappingError(
            source,
            f"{key}.match_key",
            f"expected the name of one of this entity's fields, got {match_key!r}",
        )
    depends = body.get("depends_on", [])
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        raise MappingError(source, f"{key}.depends_on", "expected a list of entity names")
    return EntitySpec(
        name=name,
        ecosire=_string(source, f"{key}.ecosire", body.get("ecosire", name)),
        crm=_string(source, f"{key}.crm", body.get("crm", name)),
        fields=fields,
        match_key=match_key,
        depends_on=tuple(depends),
        delete_policy=_choice(
            source, f"{key}.delete_policy", body.get("delete_policy", "flag"), DeletePolicy
        ),
    )


def _parse_field(source: str, key: str, name: str, body: Any) -> FieldSpec:
    if not isinstance(body, dict):
        raise MappingError(source, key, "expected a table")
    _reject_unknown(source, key, body, _FIELD_KEYS)
    for required in ("ecosire", "crm", "direction", "rule"):
        if required not in body:
            raise MappingError(source, f"{key}.{required}", "missing")
    transform_text = _string(source, f"{key}.transform", body.get("transform", "none"))
    ref_entity: str | None = None
    if transform_text.startswith("ref:"):
        ref_entity = transform_text[4:]
        if not ref_entity:
            raise MappingError(source, f"{key}.transform", "expected ref:ENTITY")
        transform = Transform.REF
    else:
        transform = _choice(source, f"{key}.transform", transform_text, Transform)
        if transform is Transform.REF:
            raise MappingError(source, f"{key}.transform", "expected ref:ENTITY")
    rule = _choice(source, f"{key}.rule", body["rule"], Rule)
    direction = _choice(source, f"{key}.direction", body["direction"], Direction)
    if rule is Rule.UNION and transform not in (Transform.NONE, Transform.SEMICOLON_LIST):
        raise MappingError(source, f"{key}.transform", "a union field takes no transform but semicolon_list")
    if transform is Transform.SEMICOLON_LIST and rule is not Rule.UNION:
        raise MappingError(source, f"{key}.transform", "semicolon_list is for union (set) fields")
    crm, crm_rest = _crm_names(source, key, body["crm"], transform)
    table = _table(source, key, body.get("values"), transform)
    immutable = _bool(source, f"{key}.immutable", body.get("immutable", False))
    if immutable:
        _check_immutable(source, f"{key}.immutable", rule, direction)
    return FieldSpec(
        name=name,
        ecosire=_string(source, f"{key}.ecosire", body["ecosire"]),
        crm=crm,
        direction=direction,
        rule=rule,
        transform=transform,
        ref_entity=ref_entity,
        required=_bool(source, f"{key}.required", body.get("required", False)),
        immutable=immutable,
        crm_rest=crm_rest,
        table=table,
    )


def _crm_names(source: str, key: str, raw: Any, transform: Transform) -> tuple[str, tuple[str, ...]]:
    """`crm`: one field, or two for split_name (`crm = ["firstname", "lastname"]`)."""
    if transform is Transform.SPLIT_NAME:
        if not isinstance(raw, list) or len(raw) != 2 or not all(isinstance(n, str) and n for n in raw):
            raise MappingError(source, f"{key}.crm", "split_name needs two CRM fields: crm = [FIRST, REST]")
        return raw[0], (raw[1],)
    if isinstance(raw, list):
        raise MappingError(source, f"{key}.crm", "a list of CRM fields needs transform split_name")
    return _string(source, f"{key}.crm", raw), ()


def _table(source: str, key: str, raw: Any, transform: Transform) -> tuple[tuple[str, str], ...]:
    if transform is not Transform.TABLE:
        if raw is not None:
            raise MappingError(source, f"{key}.values", "a values table needs transform table")
        return ()
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, str) for v in raw.values()):
        raise MappingError(
            source, f"{key}.values", 'transform table needs a values table: values = {ecosire = "crm", ...}'
        )
    seen: dict[str, str] = {}
    for ecosire, crm in raw.items():
        if crm in seen:
            raise MappingError(
                source,
                f"{key}.values",
                f"{crm!r} is the CRM value of both {seen[crm]!r} and {ecosire!r}: "
                "the table must be one to one",
            )
        seen[crm] = ecosire
    return tuple((str(e), c) for e, c in raw.items())


def _check_immutable(source: str, key: str, rule: Rule, direction: Direction) -> None:
    """An immutable field needs a side whose value is the identity, and a direction that can
    write it back to the other side: a mapping that could not keep the promise stops the start
    instead of letting the other side's edits through unnoticed."""
    winner = rule.winner
    if winner is None:
        # last_updated_wins would let the loser's edit win by being later, union would keep it:
        # neither can hold a value fixed.
        raise MappingError(
            source, key, f"an immutable field needs rule ecosire_wins or crm_wins, not {rule.value}"
        )
    loser = winner.other
    if not direction.flows_to(loser):
        raise MappingError(
            source,
            key,
            f"rule {rule.value} with direction {direction.value} cannot revert an edit on "
            f"{loser.value}: nothing flows to {loser.value} (use both or {winner.value}_to_{loser.value})",
        )


def _check_references(source: str, entities: list[EntitySpec]) -> None:
    names = {e.name for e in entities}
    for entity in entities:
        for dep in entity.depends_on:
            if dep not in names:
                raise MappingError(source, f"entities.{entity.name}.depends_on", f"unknown entity {dep!r}")
        for spec in entity.refs:
            if spec.ref_entity not in names:
                raise MappingError(
                    source,
                    f"entities.{entity.name}.fields.{spec.name}.transform",
                    f"unknown entity {spec.ref_entity!r}",
                )
            if spec.ref_entity not in entity.depends_on:
                raise MappingError(
                    source,
                    f"entities.{entity.name}.depends_on",
                    f"must list {spec.ref_entity!r}, which field {spec.name!r} refers to",
                )


def _dependency_order(source: str, entities: list[EntitySpec]) -> list[EntitySpec]:
    ordered: list[EntitySpec] = []
    pending = list(entities)
    while pending:
        ready = [e for e in pending if all(d in {o.name for o in ordered} for d in e.depends_on)]
        if not ready:
            raise MappingError(
                source,
                "entities",
                "depends_on forms a cycle: " + ", ".join(e.name for e in pending),
            )
        ordered.extend(ready)
        pending = [e for e in pending if e not in ready]
    return ordered


def _reject_unknown(source: str, key: str, body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise MappingError(
            source,
            f"{key}.{unknown[0]}",
            f"unknown key (expected one of {', '.join(sorted(allowed))})",
        )


def _bool(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise MappingError(source, key, f"expected true or false, got {value!r}")
    return value


def _string(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MappingError(source, key, f"expected a non-empty string, got {value!r}")
    return value


def _choice(source: str, key: str, value: Any, enum: type[E]) -> E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum if m.value != "ref")
        raise MappingError(source, key, f"expected one of {allowed}, got {value!r}") from None
