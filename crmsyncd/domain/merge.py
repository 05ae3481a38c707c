"""Per-field three-way merge of one linked pair, with each side's last agreed values as the base.

Pure: given both sides' current canonical values, their bases and their change stamps, it says
what to write where, which rule settled each conflict, and which edits of immutable fields the
writes undo.

Two promises hold whatever the rule and direction (tests/test_first_link.py):
* a first link never erases: while neither side has a base for a field (a link by match key, a
  create, a field new to the mapping), a value empty on one side (null, "", []) and set on the
  other takes the set value; the rule decides only between two values;
* a field missing from a side's values (the key absent from the record: an API that omits it, a
  field name it does not know) is unknown, not empty: it never writes the other side. It is
  taken to hold what we last knew it held, and only receives the other side's value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crmsyncd.domain.canonical import key_text
from crmsyncd.domain.mapping import Direction, EntitySpec, FieldSpec, Rule
from crmsyncd.domain.records import Side


@dataclass(frozen=True, slots=True)
class SideView:
    values: Mapping[str, Any]
    base: Mapping[str, Any] | None  # what we last knew this side held; None before the first link
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Conflict:
    field: str
    rule: Rule
    winner: str  # "ecosire", "crm" or "merged"


@dataclass(slots=True)
class MergeResult:
    writes: dict[Side, dict[str, Any]] = field(default_factory=lambda: {Side.ECOSIRE: {}, Side.CRM: {}})
    conflicts: list[Conflict] = field(default_factory=list)
    # Per side, the immutable fields whose edit there is undone by this merge's write.
    reverted: dict[Side, list[str]] = field(default_factory=lambda: {Side.ECOSIRE: [], Side.CRM: []})

    # Per side, the last known values of fields its record did not show: still our best knowledge.
    kept: dict[Side, dict[str, Any]] = field(default_factory=lambda: {Side.ECOSIRE: {}, Side.CRM: {}})

    def snapshot(self, side: Side, view: SideView) -> dict[str, Any]:
        """The side's values once our writes land: the next base, and what its echo will show."""
        return {**view.values, **self.kept[side], **self.writes[side]}

    @property
    def writes_nothing(self) -> bool:
        return not self.writes[Side.ECOSIRE] and not self.writes[Side.CRM]


_MISSING = object()


def is_empty(value: Any) -> bool:
    """Null, empty text or an empty list: a value that holds nothing, so nothing to lose."""
    return value is None or value == "" or value == []


def merge(entity: EntitySpec, ecosire: SideView, crm: SideView) -> MergeResult:
    result = MergeResult()
    views = {Side.ECOSIRE: ecosire, Side.CRM: crm}
    for spec in entity.fields:
        held = {side: view.values.get(spec.name, _MISSING) for side, view in views.items()}
        unknown = [side for side in Side if held[side] is _MISSING]
        if unknown:
            _merge_unknown(spec, unknown, held, views, result, trim=spec.name == entity.match_key)
            continue
        a, b = held[Side.ECOSIRE], held[Side.CRM]
        target = _settle(spec, a, b, ecosire, crm, result)
        if spec.name == entity.match_key and a != b:
            # Written as it matches (no surrounding blanks), so what lands is what the snapshot says.
            target = key_text(target)
        for side, current in ((Side.ECOSIRE, a), (Side.CRM, b)):
            if spec.direction.flows_to(side) and target != current:
                result.writes[side][spec.name] = target
    return result


def _base(view: SideView, name: str) -> Any:
    return view.base.get(name, _MISSING) if view.base is not None else _MISSING


def _merge_unknown(
    spec: FieldSpec,
    unknown: list[Side],
    held: dict[Side, Any],
    views: dict[Side, SideView],
    result: MergeResult,
    *,
    trim: bool,
) -> None:
    """A field one side's record did not show (or neither's). The unknown side is taken to hold
    its base, unchanged since; the rule settles as usual, but only the unknown side may be
    written, and, without a base, only with a value: what we cannot see is never overwritten
    from, and never erased."""
    for side in unknown:
        base = _base(views[side], spec.name)
        if base is not _MISSING:
            result.kept[side][spec.name] = base
    if len(unknown) == 2:
        return
    [side] = unknown
    assumed = {**held, side: _base(views[side], spec.name)}
    # A scratch result: no conflict is counted and nothing is reverted on the known side, which
    # is not written.
    e, c = views[Side.ECOSIRE], views[Side.CRM]
    target = _settle(spec, assumed[Side.ECOSIRE], assumed[Side.CRM], e, c, MergeResult())
    if trim:
        target = key_text(target)
    if not spec.direction.flows_to(side) or target == assumed[side]:
        return
    if assumed[side] is _MISSING and is_empty(target):
        return
    result.writes[side][spec.name] = target


def _settle(spec: FieldSpec, a: Any, b: Any, e: SideView, c: SideView, result: MergeResult) -> Any:
    if a == b:
        return a
    if a is _MISSING or b is _MISSING:  # one side unknown and never known: the other's value
        return b if a is _MISSING else a
    base_a, base_b = _base(e, spec.name), _base(c, spec.name)
    if base_a is _MISSING and base_b is _MISSING and is_empty(a) != is_empty(b):
        # A first link never erases: an empty value there is no choice, whatever the rule.
        return b if is_empty(a) else a
    a_changed = base_a is _MISSING or a != base_a
    b_changed = base_b is _MISSING or b != base_b
    fixed = spec.rule.winner  # the loader allows immutable only with one
    if spec.immutable and fixed is not None and base_a is not _MISSING and base_b is not _MISSING:
        return _immutable(spec, fixed, a, b, a_changed, b_changed, result)
    if spec.direction is Direction.ECOSIRE_TO_CRM:
        return _one_way(a, b, base_a, a_changed or b_changed)
    if spec.direction is Direction.CRM_TO_ECOSIRE:
        return _one_way(b, a, base_b, a_changed or b_changed)
    if spec.rule is Rule.UNION:
        merged = _union(a, b, base_a, base_b)
        if a_changed and b_changed:
            result.conflicts.append(Conflict(spec.name, spec.rule, "merged"))
        return merged
    if a_changed and not b_changed:
        return a
    if b_changed and not a_changed:
        return b
    winner = _winner(spec.rule, e.updated_at, c.updated_at)
    result.conflicts.append(Conflict(spec.name, spec.rule, winner.value))
    return a if winner is Side.ECOSIRE else b


def _immutable(
    spec: FieldSpec, winner: Side, a: Any, b: Any, a_changed: bool, b_changed: bool, result: MergeResult
) -> Any:
    """A linked pair's immutable field: the winner's value is the record's identity, so it is
    what both sides hold, whatever either did since. On create and link (no base yet) the field
    merges like any other, which is how the loser gets the value in the first place."""
    won_changed, lost_changed = (a_changed, b_changed) if winner is Side.ECOSIRE else (b_changed, a_changed)
    won, lost = (a, b) if winner is Side.ECOSIRE else (b, a)
    if not spec.direction.flows_to(winner) and not won_changed and is_empty(won) and not is_empty(lost):
        # The winner holds nothing, and the direction cannot give it the loser's value (which is
        # why the first link kept that value): there is no identity to restore, and reverting
        # would erase what the link kept. The winner's first value will flow as usual.
        return lost
    if won_changed and lost_changed:
        result.conflicts.append(Conflict(spec.name, spec.rule, winner.value))
    if lost_changed or not won_changed:
        # Not the winner's own change flowing on: the loser's value is undone (its edit, or a
        # divergence that predates the field being declared immutable).
        result.reverted[winner.other].append(spec.name)
    return won


def _one_way(source: Any, target: Any, source_base: Any, either_changed: bool) -> Any:
    """The source side's value, once it has something to say.

    An empty source with no history (a record we just created or linked) does not erase the
    target, and a divergence both sides have held since the last sync is left alone; any change
    on either side brings the target back to the source, which is what "source wins" means."""
    if source_base is _MISSING and is_empty(source) and not is_empty(target):
        return target
    return source if either_changed else target


def _winner(rule: Rule, e_at: datetime | None, c_at: datetime | None) -> Side:
    if rule.winner is not None:
        return rule.winner
    if rule is Rule.LAST_UPDATED_WINS and e_at is not None and c_at is not None and c_at > e_at:
        return Side.CRM
    # The fixed tie-break of last_updated_wins.
    return Side.ECOSIRE


def _union(a: Any, b: Any, base_a: Any, base_b: Any) -> list[str]:
    """Additions on either side are kept; removals since that side's base are honoured."""
    now_a, now_b = set(a or []), set(b or [])
    removed: set[str] = set()
    added: set[str] = set()
    for now, base in ((now_a, base_a), (now_b, base_b)):
        if base is not _MISSING:
            removed |= set(base or []) - now
            added |= now - set(base or [])
    return sorted(((now_a | now_b) - removed) | added)
