"""What a pass did, counted as it goes, for the summary line, the run history and the demo."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PassCounts:
    seen: Counter[str] = field(default_factory=Counter)  # by side
    # What each side's feed said it held when its read began, by side, where it says (progress).
    listed: Counter[str] = field(default_factory=Counter)
    echoes: int = 0  # records whose mapped values equal what we last wrote: nothing to do
    staged: int = 0
    linked: int = 0  # pairs formed by the match key instead of a create
    created: Counter[str] = field(default_factory=Counter)  # by side written
    updated: Counter[str] = field(default_factory=Counter)  # by side written
    # Of those updates, the ones undoing an edit of an immutable field there, by side written.
    reverted: Counter[str] = field(default_factory=Counter)
    unchanged: int = 0  # merged pairs needing no write
    conflicts: Counter[str] = field(default_factory=Counter)  # by "field:rule:winner"
    parked: Counter[str] = field(default_factory=Counter)  # by error class
    deleted: Counter[str] = field(default_factory=Counter)  # deletions we propagated, by side
    deleted_seen: Counter[str] = field(default_factory=Counter)  # deletions noticed, by side
    retried_ok: int = 0
    # Mapped fields the API never returned in the first records read (engine/fieldcheck.py):
    # {"entity", "side", "field", "sampled"} each.
    unseen_fields: list[dict[str, Any]] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return sum(self.created.values()) + sum(self.updated.values()) + sum(self.deleted.values())

    def add(self, other: PassCounts) -> None:
        for name in (
            "seen",
            "listed",
            "created",
            "updated",
            "reverted",
            "conflicts",
            "parked",
            "deleted",
            "deleted_seen",
        ):
            getattr(self, name).update(getattr(other, name))
        for name in ("echoes", "staged", "linked", "unchanged", "retried_ok"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unseen_fields.extend(other.unseen_fields)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seen": _plain(self.seen),
            "echoes": self.echoes,
            "staged": self.staged,
            "linked": self.linked,
            "created": _plain(self.created),
            "updated": _plain(self.updated),
            "reverted": _plain(self.reverted),
            "unchanged": self.unchanged,
            "conflicts": _plain(self.conflicts),
            "parked": _plain(self.parked),
            "deleted": _plain(self.deleted),
            "deleted_seen": _plain(self.deleted_seen),
            "retried_ok": self.retried_ok,
            "writes": self.writes,
            "unseen_fields": [dict(u) for u in self.unseen_fields],
        }


def _plain(counter: Counter[str]) -> dict[str, int]:
    # Keys may be StrEnum members (error classes): JSON and the run history want plain text.
    return {str(key): value for key, value in counter.items()}
