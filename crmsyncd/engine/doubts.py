"""Finding creates that may have happened without our hearing of it (a kill, a lost answer).

One scan of the target's records changed since the earliest unfinished claim serves every doubt
of an entity at once: a record matches a doubt by the normalised match key where the doubt has
one, else by holding exactly the values the create would have sent. A scan cut short by its
budget proves nothing absent, so such doubts stay doubts (and are parked, never re-created).

Nor does a feed that lags writes (HubSpot's search index: a record is searchable a few seconds
after it is written) prove absent a create made less than its `feed_lag` before the scan: such
a doubt is `unproven`, and stays a doubt until a later scan can tell. When the earlier attempt
ended is known from the row: the release that parked it (`updated_at`), or, for an attempt of an
earlier life of the daemon that a kill cut short, the start of this process."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from crmsyncd.connectors.port import Connector, PagingLoop
from crmsyncd.domain.canonical import RefTable, UnresolvedReference, Values, canonicalize, normalise_key
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, BadRecord, Side, parse_timestamp
from crmsyncd.store.pairs import Pair

# How far before the earliest unfinished claim the scan starts: covers the clock skew between our
# database and the target's server.
LOOKUP_WINDOW = timedelta(minutes=10)
# Every write of an earlier life of the daemon ended before this process began.
PROCESS_STARTED = datetime.now(UTC)


@dataclass(slots=True)
class ScanResult:
    matches: dict[int, list[JSON]] = field(default_factory=lambda: defaultdict(list))
    complete: bool = True
    by_likeness: int = 0  # doubts matched by the fallback below, for the log
    # Doubts whose create may have been written too recently for the feed to show it.
    unproven: set[int] = field(default_factory=set)


def attempt_ended_by(pair: Pair) -> datetime:
    """A moment by which the pair's last attempt had ended, its remote writes with it."""
    return max(pair.updated_at or PROCESS_STARTED, PROCESS_STARTED)


def _fingerprint(values: Values, names: Sequence[str]) -> bytes:
    return orjson.dumps([values.get(name) for name in names])


async def scan_for_creates(
    entity: EntitySpec,
    connector: Connector,
    target: Side,
    doubts: Sequence[tuple[Pair, Values]],
    refs: RefTable,
    *,
    max_requests: int,
    taken: Callable[[list[str]], Awaitable[set[str]]],
) -> ScanResult:
    """`doubts`: each pair with the values its create would have sent to `target`. `taken`
    tells which ids of a page are already linked to a pair: those are nobody's lost copy."""
    result = ScanResult()
    if not doubts:
        return result
    # Writes the feed may not show yet: those that ended after this instant.
    if connector.feed_lag > timedelta(0):
        shown_until = datetime.now(UTC) - connector.feed_lag
        # A pair no attempt meant to create on `target` (its intent names nothing there: it
        # failed before planning, as on a contact not linked yet) has nothing to wait for.
        result.unproven = {
            pair.id for pair, _ in doubts if pair.intended(target) and attempt_ended_by(pair) > shown_until
        }
    key_field = entity.match_key
    key_name = entity.field(key_field).remote_name(target) if key_field else None
    by_key: dict[str, list[int]] = defaultdict(list)
    # Records without a key are matched on the exact set of fields their create sent.
    by_content: dict[tuple[str, ...], dict[bytes, list[int]]] = defaultdict(lambda: defaultdict(list))
    for pair, values in doubts:
        if key_field is not None and pair.match_key is not None:
            by_key[pair.match_key].append(pair.id)
        else:
            names = tuple(sorted(values))
            by_content[names][_fingerprint(values, names)].append(pair.id)
    claimed = [p.claimed_at for p, _ in doubts if p.claimed_at is not None]
    since = (min(claimed) if claimed else datetime.now(UTC)) - LOOKUP_WINDOW
    pages = connector.changes(entity.resource(target), since=since, max_requests=max_requests)
    # Records created since the window opened that no doubt matched exactly: a copy we made and a
    # user edited before we could look for it is among them.
    fresh: list[tuple[JSON, Values]] = []
    try:
        async for page in pages:
            linked = await taken([rid for rid, _, _ in page.records]) if page.records else set()
            for rid, _, body in page.records:
                if rid in linked:
                    continue
                matched = False
                if key_name is not None:
                    key = normalise_key(body.get(key_name))
                    for pair_id in by_key.get(key or "", ()):
                        result.matches[pair_id].append(body)
                        matched = True
                if not by_content:
                    continue
                try:
                    seen = canonicalize(entity, target, body, refs)
                except (BadRecord, UnresolvedReference):
                    continue
                for names, index in by_content.items():
                    for pair_id in index.get(_fingerprint(seen, names), ()):
                        result.matches[pair_id].append(body)
                        matched = True
                if not matched and _created_since(body, connector.created_field, since):
                    fresh.append((body, seen))
    except PagingLoop:
        result.complete = False
    finally:
        await pages.aclose()
    keyless = [(p, v) for p, v in doubts if not (key_field and p.match_key) and p.id not in result.matches]
    for pair_id, body in _mutual_best(keyless, fresh):
        result.matches[pair_id].append(body)
        result.by_likeness += 1
    return result


def _created_since(body: JSON, created_field: str | None, since: datetime) -> bool:
    """Whether the record was created in the window; an API that stamps no creation cannot
    tell, and every record changed in the window is a candidate."""
    if created_field is None:
        return True
    try:
        return parse_timestamp(body.get(created_field), created_field) >= since
    except BadRecord:
        return False


def _mutual_best(
    doubts: Sequence[tuple[Pair, Values]], fresh: Sequence[tuple[JSON, Values]]
) -> list[tuple[int, JSON]]:
    """Pairs each doubt with the new record that holds all but one field of what its create sent
    (a user edited one since), and only when the choice is unique both ways: two similar deals
    created in the window stay unmatched rather than being guessed. A bare majority is not
    enough: a deal a user created meanwhile for the same contact, in the same currency and stage,
    holds three of a deal's five fields, and taking it for our copy overwrote it."""

    def likeness(values: Values, seen: Values) -> int:
        return sum(1 for name, value in values.items() if seen.get(name) == value)

    best_for_doubt: dict[int, list[int]] = {}
    for d, (_, values) in enumerate(doubts):
        if not values:
            continue
        top, winners = 0, list[int]()
        for f, (_, seen) in enumerate(fresh):
            score = likeness(values, seen)
            if score < max(len(values) - 1, len(values) // 2 + 1) or score < top:
                continue
            winners = [f] if score > top else [*winners, f]
            top = score
        best_for_doubt[d] = winners
    found = []
    for d, winners in best_for_doubt.items():
        if len(winners) != 1:
            continue
        f = winners[0]
        rivals = [o for o, w in best_for_doubt.items() if f in w and o != d]
        if not rivals:
            found.append((doubts[d][0].id, fresh[f][0]))
    return found
