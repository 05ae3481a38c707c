"""Per-field three-way merge of one linked pair, with each side's last agreed values as the base.

Pure: given both sides' current canonical values, their bases and their change stamps, it says
what to write where, which rule settled each conflict, and which edits of immutable fields the
writes undo."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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

    def snapshot(self, side: Side, view: SideView) -> dict[str, Any]:
        """The side's values once our writes land: the next base, and what its echo will show."""
        return {**view.values, **self.writes[side]}

    @property
    def writes_nothing(self) -> bool:
        return not self.writes[Side.ECOSIRE] and not self.writes[Side.CRM]


_MISSING = object()


def merge(entity: EntitySpec, ecosire: SideView, crm: SideView) -> MergeResult:
    result = MergeResult()
    for spec in entity.fields:
        a = ecosire.values.get(spec.name)
        b = crm.values.get(spec.name)
        target = _settle(spec, a, b, ecosire, crm, result)
        for side, current in ((Side.ECOSIRE, a), (Side.CRM, b)):
            if spec.direction.flows_to(side) and target != current:
                result.writes[side][spec.name] = target
    return result


def _settle(spec: FieldSpec, a: Any, b: Any, e: SideView, c: SideView, result: MergeResult) -> Any:
    if a == b:
        return a
    base_a = e.base.get(spec.name, _MISSING) if e.base is not None else _MISSING
    base_b = c.base.get(spec.name, _MISSING) if c.base is not None else _MISSING
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
    if won_changed and lost_changed:
        result.conflicts.append(Conflict(spec.name, spec.rule, winner.value))
    if lost_changed or not won_changed:
        # Not the winner's own change flowing on: the loser's value is undone (its edit, or a
        # divergence that predates the field being declared immutable).
        result.reverted[winner.other].append(spec.name)
    return a if winner is Side.ECOSIRE else b


def _one_way(source: Any, target: Any, source_base: Any, either_changed: bool) -> Any:
    """The source side's value, once it has something to say.

    An empty source with no history (a record we just created or linked) does not erase the
    target, and a divergence both sides have held since the last sync is left alone; any change
    on either side brings the target back to the source, which is what "source wins" means."""
    if source_base is _MISSING and source in (None, []):
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
