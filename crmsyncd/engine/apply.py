"""The worker's job for one claimed pair: merge, write what the rules say, and report the new
state or the reason it failed. No database access here: the caller batches the bookkeeping."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.connectors.port import Connector
from crmsyncd.domain.canonical import (
    RefTable,
    UnresolvedReference,
    Values,
    canonicalize,
    normalise_key,
    ref_ids,
    to_remote,
)
from crmsyncd.domain.mapping import DeletePolicy, EntitySpec
from crmsyncd.domain.merge import MergeResult, SideView, merge
from crmsyncd.domain.records import JSON, BadRecord, Side, parse_timestamp
from crmsyncd.engine.batching import WriteBatcher
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.doubts import scan_for_creates
from crmsyncd.store.errors import ErrorClass, Failure
from crmsyncd.store.pairs import Link, Pair, Settled

# List requests one record's own lookup by content may spend (the pass-start scan has more).
LOOKUP_PAGES = 5

# Asks the store which of a side's ids are linked to a pair already.
LinkedLookup = Callable[[str, Side, Sequence[str]], Awaitable[set[str]]]

# Asks the store who already owns a remote record: the pair id, or None.
OwnerLookup = Callable[[str, Side, str], Awaitable[int | None]]


class PassAborted(Exception):
    """Something that retrying records cannot fix: the pass stops, says why, and loses nothing."""


class PassStopped(PassAborted):
    """An API refuses all work for now: the pass ends failed, parking nothing."""


class AuthFailure(PassStopped):
    """Credentials were refused."""


class QuotaExhausted(PassStopped):
    """A quota that does not refill within the pass is spent (HubSpot's daily limit)."""


def pass_stopper(exc: ConnectorError) -> PassStopped | None:
    """The stop a call's failure means for the pass, if it means one."""
    if exc.outcome is Outcome.AUTH_FAILED:
        return AuthFailure(str(exc))
    if exc.outcome is Outcome.QUOTA_EXHAUSTED:
        return QuotaExhausted(str(exc))
    return None


class DeleteGuardTripped(PassAborted):
    """More deletions than the configured share of an entity: stop before doing harm."""


@dataclass(slots=True)
class DeleteGuard:
    """How many deletions a pass may still make for an entity (the circuit breaker)."""

    entity: str
    share: float
    linked: int
    used: int = 0

    @property
    def allowance(self) -> int:
        # A single deletion never trips it: the share is meant for mass deletion.
        return max(1, int(self.share * self.linked))

    def take(self, what: str) -> None:
        if self.used + 1 > self.allowance:
            raise DeleteGuardTripped(
                f"circuit breaker: {what} would delete more than {self.share:.0%} of the "
                f"{self.linked} linked {self.entity} (allowance {self.allowance}); nothing more is "
                "deleted. Check both systems, then raise CRMSYNCD_DELETE_GUARD if this is intended."
            )
        self.used += 1


@dataclass(frozen=True, slots=True)
class Parked:
    pair_id: int
    failure: Failure
    # A counterpart created before the failure: recorded with the parking, as an observation.
    link: Link | None = None


class _AfterCreate(Exception):
    def __init__(self, error: Exception, link: Link) -> None:
        super().__init__(str(error))
        self.error = error
        self.link = link


@dataclass(frozen=True, slots=True)
class Deleted:
    """A pair whose record is gone on one side; `failure` is the flag row, if the policy flags."""

    pair_id: int
    side: Side
    failure: Failure | None = None


Result = Settled | Parked | Deleted


class PairWorker:
    def __init__(
        self,
        entity: EntitySpec,
        connectors: Mapping[Side, Connector],
        owner_of: OwnerLookup,
        linked_ids: LinkedLookup,
        counts: PassCounts,
        guard: DeleteGuard | None = None,
    ) -> None:
        self.entity = entity
        self.connectors = connectors
        # Every write goes through its target's batcher: one per worker set, shared by its workers.
        self.writes = {side: WriteBatcher(connectors[side]) for side in Side}
        self.owner_of = owner_of
        self.linked_ids = linked_ids
        self.counts = counts
        self.guard = guard or DeleteGuard(entity.name, 1.0, 0)

    async def apply(self, pair: Pair, refs: RefTable) -> Result:
        try:
            return await self._apply(pair, refs)
        except _AfterCreate as wrapped:
            # The counterpart exists now: whatever failed after its creation, the link is kept,
            # so that a retry updates it instead of creating a second one.
            error = wrapped.error
            if isinstance(error, ConnectorError) and error.outcome.stops_pass:
                # Parked with its link, not raised: the pass stops when the next call is refused.
                error = ConnectorError(Outcome.RETRY, error.message, side=error.side, status=error.status)
            parked = self._failure(pair, error)
            return Parked(parked.pair_id, parked.failure, link=wrapped.link)

    async def _apply(self, pair: Pair, refs: RefTable) -> Result:
        try:
            if pair.ecosire_id is not None and pair.crm_id is not None:
                return await self._update(pair, refs)
            return await self._create(pair, refs)
        except (ConnectorError, BadRecord, UnresolvedReference) as exc:
            return self._failure(pair, exc)

    def _failure(self, pair: Pair, exc: Exception) -> Parked:
        source = Side.ECOSIRE if pair.ecosire_pending is not None else Side.CRM
        if isinstance(exc, ConnectorError):
            stop = pass_stopper(exc)
            if stop is not None:
                raise stop from None
            return self._park(
                pair, source, _error_class(exc), str(exc), final=_final(exc), not_before=exc.retry_after
            )
        if isinstance(exc, BadRecord):
            return self._park(pair, source, ErrorClass.BAD_RECORD, f"{self._name(pair, source)}: {exc}")
        return self._park(pair, source, ErrorClass.UNRESOLVED_REFERENCE, f"{self._name(pair, source)}: {exc}")

    # -- linked pairs -------------------------------------------------------------------------

    async def _update(self, pair: Pair, refs: RefTable) -> Result:
        views = {side: self._view(pair, side, refs) for side in Side}
        result = merge(self.entity, views[Side.ECOSIRE], views[Side.CRM])
        try:
            await self._write(pair, result, views, refs)
        except ConnectorError as exc:
            if exc.outcome is not Outcome.NOT_FOUND:
                raise
            return await self.deleted(pair, exc.side, f"404 on {exc.method} {exc.path}".strip())
        return self._settled(pair, result, views)

    async def deleted(self, pair: Pair, gone: Side, how: str) -> Deleted:
        """Apply the entity's delete policy to a pair whose `gone` side no longer exists."""
        survivor = gone.other
        survivor_id = pair.id_of(survivor)
        name = f"{gone.value} {self.entity.name} {pair.id_of(gone)}"
        policy = self.entity.delete_policy
        if policy is DeletePolicy.PROPAGATE and survivor_id is not None:
            self.guard.take(f"propagating the deletion of {name}")
            try:
                await self.writes[survivor].delete(self.entity.resource(survivor), survivor_id)
            except ConnectorError as exc:
                if exc.outcome is not Outcome.NOT_FOUND:  # already gone there too: done
                    raise
            self.counts.deleted[survivor.value] += 1
            return Deleted(pair.id, gone)
        self.counts.deleted_seen[gone.value] += 1
        if policy is DeletePolicy.IGNORE or survivor_id is None:
            return Deleted(pair.id, gone)
        self.counts.parked[ErrorClass.DELETED] += 1
        return Deleted(
            pair.id,
            gone,
            Failure(
                entity=self.entity.name,
                side=survivor,
                record_id=survivor_id,
                map_id=pair.id,
                payload=pair.pending(survivor) or pair.snapshot(survivor) or {},
                reason=f"{name} was deleted ({how}); {survivor.value} {survivor_id} is kept and no "
                "longer synced (delete policy: flag)",
                error_class=ErrorClass.DELETED,
                final=True,
            ),
        )

    async def _write(
        self, pair: Pair, result: MergeResult, views: Mapping[Side, SideView], refs: RefTable
    ) -> None:
        for conflict in result.conflicts:
            self.counts.conflicts[f"{conflict.field}:{conflict.rule.value}:{conflict.winner}"] += 1
        for side in Side:
            changes = result.writes[side]
            record_id = pair.id_of(side)
            if not changes or record_id is None:
                continue
            body = to_remote(self.entity, side, changes, refs)
            await self.writes[side].update(self.entity.resource(side), record_id, body)
            self.counts.updated[side.value] += 1
            if result.reverted[side]:
                self.counts.reverted[side.value] += 1
        if result.writes_nothing:
            self.counts.unchanged += 1

    def _settled(self, pair: Pair, result: MergeResult, views: Mapping[Side, SideView]) -> Settled:
        snap = {side: result.snapshot(side, views[side]) for side in Side}
        key_field = self.entity.match_key
        return Settled(
            pair_id=pair.id,
            ecosire_id=pair.ecosire_id or "",
            crm_id=pair.crm_id or "",
            match_key=normalise_key(snap[Side.ECOSIRE].get(key_field)) if key_field else None,
            ecosire_snapshot=snap[Side.ECOSIRE],
            crm_snapshot=snap[Side.CRM],
            ecosire_seen_at=views[Side.ECOSIRE].updated_at,
            crm_seen_at=views[Side.CRM].updated_at,
            ecosire_pending_at=pair.ecosire_pending_at,
            crm_pending_at=pair.crm_pending_at,
        )

    def _view(self, pair: Pair, side: Side, refs: RefTable) -> SideView:
        pending = pair.pending(side)
        base = pair.snapshot(side)
        if pending is not None:
            values = canonicalize(self.entity, side, pending, refs)
            intended = pair.intended(side)
            if intended and base is not None:
                # A write of ours that landed before its bookkeeping was lost (a kill): where the
                # side now holds what we meant to write, that is the base, not a user's change.
                # A field the record did not show is unknown: it proves nothing either way.
                base = {
                    **base,
                    **{f: values[f] for f, vs in intended.items() if f in values and values[f] in vs},
                }
            return SideView(values, base, pair.pending_at(side))
        return SideView(base or {}, base, pair.seen_at(side))

    def plan(self, pair: Pair, refs: RefTable) -> JSON | None:
        """What this pair is about to write, per side, to be recorded before any remote call."""
        try:
            if pair.ecosire_id is not None and pair.crm_id is not None:
                views = {side: self._view(pair, side, refs) for side in Side}
                result = merge(self.entity, views[Side.ECOSIRE], views[Side.CRM])
                return {side.value: w for side, w in result.writes.items() if w} or None
            source = Side.ECOSIRE if pair.ecosire_id is not None else Side.CRM
            target = source.other
            return {target.value: self.create_values(self._view(pair, source, refs), target)}
        except (BadRecord, UnresolvedReference):
            return None  # the worker parks it with the reason

    # -- records with no counterpart yet ------------------------------------------------------

    async def _create(self, pair: Pair, refs: RefTable) -> Result:
        source = Side.ECOSIRE if pair.ecosire_id is not None else Side.CRM
        target = source.other
        source_view = self._view(pair, source, refs)
        connector = self.connectors[target]
        resource = self.entity.resource(target)
        counterpart: JSON | None = None
        values = self.create_values(source_view, target)
        # More than one claim means an earlier attempt may have created the record and died
        # before its bookkeeping: look before creating again.
        if pair.attempts > 1:
            # Looked up by what the earlier attempt sent, if it recorded it.
            counterpart = await self._find(pair, target, pair.last_intended(target) or values, refs)
        linked = counterpart is not None
        if counterpart is None:
            body = to_remote(self.entity, target, values, refs)
            try:
                # An API that answers a create with less than the record (only its id) is read
                # as holding what we sent.
                counterpart = {**body, **await self.writes[target].create(resource, body)}
            except ConnectorError as exc:
                if exc.outcome is not Outcome.CONFLICT:
                    raise
                # The match key is taken on the target: the record exists, link to it.
                counterpart = await self._find(pair, target, values, refs)
                if counterpart is None:
                    raise
                linked = True
            else:
                self.counts.created[target.value] += 1
        target_id = str(counterpart.get(connector.id_field, ""))
        if not target_id:
            raise ConnectorError(
                Outcome.RETRY, f"created {resource} record has no {connector.id_field!r}", side=target
            )
        try:
            return await self._after_create(pair, refs, source, source_view, counterpart, target_id, linked)
        except (ConnectorError, BadRecord, UnresolvedReference) as exc:
            if linked:
                raise
            stamp = _stamp(counterpart, self.connectors[target].updated_field)
            raise _AfterCreate(exc, Link(pair.id, target, target_id, counterpart, stamp)) from None

    async def _after_create(
        self,
        pair: Pair,
        refs: RefTable,
        source: Side,
        source_view: SideView,
        counterpart: JSON,
        target_id: str,
        linked: bool,
    ) -> Result:
        target = source.other
        connector = self.connectors[target]
        if linked:
            owner = await self.owner_of(self.entity.name, target, target_id)
            if owner is not None and owner != pair.id:
                return self._park(
                    pair,
                    source,
                    ErrorClass.CONFLICT,
                    f"{self._name(pair, source)}: its match on {target.value} ({target_id}) is "
                    f"already linked to another record (map row {owner})",
                )
            self.counts.linked += 1
        stamp = _stamp(counterpart, connector.updated_field)
        target_view = SideView(canonicalize(self.entity, target, counterpart, refs), None, stamp)
        views = {source: source_view, target: target_view}
        linked_pair = _with_id(pair, target, target_id)
        result = merge(self.entity, views[Side.ECOSIRE], views[Side.CRM])
        await self._write(linked_pair, result, views, refs)
        return self._settled(linked_pair, result, views)

    async def _find(self, pair: Pair, target: Side, values: Values, refs: RefTable) -> JSON | None:
        """The counterpart an earlier, unfinished attempt may have created: by the match key where
        the record has one, else by content among the target's records changed since the claim."""
        key_field = self.entity.match_key
        if key_field is None or pair.match_key is None:
            return await self._find_by_content(pair, target, values, refs)
        spec = self.entity.field(key_field)
        found = await self.connectors[target].find_by_field(
            self.entity.resource(target), spec.remote_name(target), pair.match_key
        )
        matches = [r for r in found if normalise_key(r.get(spec.remote_name(target))) == pair.match_key]
        return self._one(matches, target, f"{key_field} {pair.match_key!r}")

    async def _find_by_content(self, pair: Pair, target: Side, values: Values, refs: RefTable) -> JSON | None:
        connector = self.connectors[target]
        scan = await scan_for_creates(
            self.entity,
            connector,
            target,
            [(pair, values)],
            refs,
            max_requests=LOOKUP_PAGES,
            taken=functools.partial(self.linked_ids, self.entity.name, target),
        )
        matches = []
        for body in scan.matches.get(pair.id, []):
            record_id = str(body.get(connector.id_field, ""))
            if record_id and await self.owner_of(self.entity.name, target, record_id) is None:
                matches.append(body)
        if not matches and not scan.complete:
            # Not found is not proven: creating now could make a second copy. Wait, parked.
            raise ConnectorError(
                Outcome.RETRY,
                f"lookup incomplete: more than {LOOKUP_PAGES} pages of {target.value} "
                f"{self.entity.name} changed since the earlier attempt; not created again yet",
                side=target,
            )
        if not matches and pair.id in scan.unproven:
            raise ConnectorError(
                Outcome.RETRY,
                f"lookup not conclusive yet: {target.value}'s change feed shows a write up to "
                f"{connector.feed_lag.total_seconds():g}s after it is made, and the earlier attempt "
                "ended more recently; not created again yet",
                side=target,
                # Tried again once the feed can show that write (a second of margin).
                retry_after=connector.feed_lag.total_seconds() + 1.0,
            )
        return self._one(matches, target, "the same content")

    def _one(self, matches: list[JSON], target: Side, what: str) -> JSON | None:
        if len(matches) > 1:
            ids = ", ".join(str(r.get(self.connectors[target].id_field)) for r in matches)
            raise ConnectorError(
                Outcome.PERMANENT,
                f"ambiguous match: {what} matches {target.value} {self.entity.name} {ids}",
                side=target,
            )
        return matches[0] if matches else None

    def create_values(self, view: SideView, target: Side) -> Values:
        """What a create on `target` sends: the fields that flow there and hold something."""
        return {
            spec.name: view.values.get(spec.name)
            for spec in self.entity.fields
            if spec.direction.flows_to(target) and view.values.get(spec.name) not in (None, [])
        }

    def view_of(self, pair: Pair, side: Side, refs: RefTable) -> SideView:
        return self._view(pair, side, refs)

    # -- failures -----------------------------------------------------------------------------

    def _park(
        self,
        pair: Pair,
        side: Side,
        error_class: ErrorClass,
        reason: str,
        *,
        final: bool = False,
        not_before: float = 0.0,
    ) -> Parked:
        if pair.id_of(side) is None:
            side = side.other
        payload: JSON = pair.pending(side) or pair.snapshot(side) or {}
        self.counts.parked[error_class] += 1
        return Parked(
            pair.id,
            Failure(
                entity=self.entity.name,
                side=side,
                record_id=pair.id_of(side) or "",
                map_id=pair.id,
                payload=payload,
                reason=reason,
                error_class=error_class,
                final=final,
                not_before=not_before,
            ),
        )

    def _name(self, pair: Pair, side: Side) -> str:
        return f"{side.value} {self.entity.name} {pair.id_of(side) or pair.id_of(side.other)}"


def wanted_refs(entity: EntitySpec, batch: Sequence[Pair]) -> list[tuple[str, Side, str]]:
    """References a claimed batch may need translated, in either direction, for one lookup."""
    wanted: list[tuple[str, Side, str]] = []
    for pair in batch:
        if pair.crm_pending is not None:
            wanted.extend(ref_ids(entity, Side.CRM, pair.crm_pending))
        for spec in entity.refs:
            for holder in (pair.ecosire_pending, pair.ecosire_snapshot, pair.crm_snapshot):
                key = spec.ecosire if holder is pair.ecosire_pending else spec.name
                value = (holder or {}).get(key)
                if isinstance(value, str) and value:
                    wanted.append((spec.ref_entity or "", Side.ECOSIRE, value))
    return wanted


def _with_id(pair: Pair, side: Side, record_id: str) -> Pair:
    fields: dict[str, Any] = {name: getattr(pair, name) for name in Pair.__slots__}
    fields[f"{side.value}_id"] = record_id
    return Pair(**fields)


def _stamp(body: JSON, field: str) -> Any:
    try:
        return parse_timestamp(body.get(field), field)
    except BadRecord:
        return None


def _error_class(exc: ConnectorError) -> ErrorClass:
    return {
        Outcome.PERMANENT: ErrorClass.REJECTED,
        Outcome.CONFLICT: ErrorClass.CONFLICT,
        Outcome.NOT_FOUND: ErrorClass.NOT_FOUND,
        Outcome.RETRY: ErrorClass.TRANSIENT,
        Outcome.RATE_LIMITED: ErrorClass.RATE_LIMITED,
    }.get(exc.outcome, ErrorClass.TRANSIENT)  # refused credentials stop the pass before parking


def _final(exc: ConnectorError) -> bool:
    # A record deleted on one side is flagged (the default delete policy) and kept visible as a
    # dead row: retrying a write to a deleted record would only resurrect or fail it again.
    return exc.outcome is Outcome.NOT_FOUND
