"""Mapping changes after the first sync, and full re-reads (backfills and resyncs).

* **Fingerprints.** Per entity, the database keeps what its mapping said when its state was last
  brought in line with it (store/fingerprints.py): the resource read on each side, the match key,
  and per field its remote names, direction, rule, transform and whether it is immutable. The
  first pass of an entity (or of a database from before fingerprints) stores the mapping as it is.
* **Backfill.** A field new to the mapping, or whose fingerprint changed, is backfilled by the
  next sync pass: both sides are read in full (no cursor) and every record is staged again, even
  one not newer than the version last merged; the pairs' bases of those fields are dropped first,
  so they merge as on a first link (domain/merge.py: an empty value never erases, a missing one
  never writes), while the other fields keep their three-way merge with fresh values (they write
  only what a missed change left different). A changed match key re-reads the entity the same way,
  with no base dropped, so records not linked yet are keyed anew. Removing a field needs nothing
  but the new fingerprint. The fingerprint is saved only once both sides were read to their end
  and the merge finished: a backfill cut short (a kill, a refused key, a stop) runs again at the
  next pass, for its fields whatever the mapping says by then.
* **Resync** (`crmsyncd resync`): the same full re-read and merge on demand, every field under the
  normal three-way rules with fresh values (and a backfill due is done with it). Echoes cost
  nothing, so it writes only real differences, and a second resync writes nothing.
* **At start** (`check_mapping_state`): the state of an entity the mapping no longer has, while
  the mapping has an entity with none (a rename), and an entity whose resource changed on a side,
  are refused with exit 2 and the ways on, before anything is read: a renamed entity started
  afresh would copy again every record without a match key."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from crmsyncd.connectors.port import Connector, FeedPage
from crmsyncd.domain.mapping import EntitySpec, FieldSpec, MappingSpec, Transform
from crmsyncd.domain.records import JSON, Side
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.sync import FullRead, sync_entity
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.db import Pool
from crmsyncd.store.fingerprints import Fingerprint, FingerprintStore

log = get_logger()

BACKFILL = "backfill"
RESYNC = "resync"


class MappingStateChanged(Exception):
    """The mapping does not fit the state the database holds (the CLI exits 2); each problem
    says what differs and how to go on."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "the mapping does not fit the state in this database; nothing was read or written:\n"
            + "\n".join(problems)
        )
        self.problems = problems


# -- fingerprints -------------------------------------------------------------------------------


def field_print(spec: FieldSpec) -> JSON:
    transform = f"ref:{spec.ref_entity}" if spec.transform is Transform.REF else spec.transform.value
    return {
        "ecosire": spec.ecosire,
        "crm": spec.crm,
        "direction": spec.direction.value,
        "rule": spec.rule.value,
        "transform": transform,
        "immutable": spec.immutable,
    }


def resource_paths(entity: EntitySpec, connectors: Mapping[Side, Connector]) -> dict[Side, str]:
    """Per side, the path the connector reads the entity from (a REST CRM's CRM_RESOURCE_PATHS
    entry), or the resource's name for a connector that has no paths."""
    paths: dict[Side, str] = {}
    for side in Side:
        resource = entity.resource(side)
        path_of = getattr(connectors[side], "collection_path", None)
        try:
            path = path_of(resource) if callable(path_of) else resource
        except ValueError:  # no path configured: the start-up check of the paths says so
            path = resource
        paths[side] = str(path)
    return paths


def fingerprint(entity: EntitySpec, connectors: Mapping[Side, Connector]) -> Fingerprint:
    return Fingerprint(
        resource_paths(entity, connectors),
        entity.match_key,
        {spec.name: field_print(spec) for spec in entity.fields},
    )


def changed_fields(stored: Fingerprint, current: Fingerprint) -> list[str]:
    """Fields new to the mapping or mapped differently, in mapping order."""
    return [name for name, spec in current.fields.items() if stored.fields.get(name) != spec]


# -- the sync pass: a backfill when the mapping changed -------------------------------------------


async def sync_or_backfill(ctx: EngineContext, entity: EntitySpec, run_id: int, counts: PassCounts) -> None:
    fields = await _due(ctx, entity)
    if fields is None:
        await sync_entity(ctx, entity, run_id, counts)
    else:
        await reread(ctx, entity, run_id, counts, kind=BACKFILL, fields=fields)


async def resync_entity(
    ctx: EngineContext, entity: EntitySpec, run_id: int, counts: PassCounts
) -> RereadOutcome:
    return await reread(ctx, entity, run_id, counts, kind=RESYNC, fields=await _due(ctx, entity) or ())


async def _due(ctx: EngineContext, entity: EntitySpec) -> tuple[str, ...] | None:
    """The fields a backfill of `entity` must merge without a base (none for a re-key), or None
    when no backfill is due; a mapping change that needs none is recorded here."""
    store = FingerprintStore(ctx.pool)
    current = fingerprint(entity, ctx.connectors)
    stored = await store.load(entity.name)
    if stored is None:
        # The entity's first pass, or a database from before fingerprints: nothing to compare.
        await store.save(entity.name, current)
        log.info("mapping_fingerprint_saved", entity=entity.name, fields=list(current.fields))
        return None
    fields = changed_fields(stored, current)
    left = await store.backfill(entity.name)
    if left is not None and left.finished_at is None:
        # Cut short: its fields' bases are gone already, so it is finished whatever the mapping
        # says now (for those of its fields the mapping still has).
        fields += [name for name in left.fields if name in current.fields and name not in fields]
    if fields or stored.match_key != current.match_key:
        return tuple(fields)
    if stored != current:
        removed = sorted(set(stored.fields) - set(current.fields))
        await store.save(entity.name, current)
        log.info("mapping_fingerprint_saved", entity=entity.name, removed=removed)
    return None


@dataclass(slots=True)
class RereadOutcome:
    """What a full re-read of one entity did."""

    entity: str
    kind: str
    fields: tuple[str, ...]
    read: Counter[str] = field(default_factory=Counter)  # records read, by side
    total: dict[str, int] = field(default_factory=dict)  # what each list said it held
    written: dict[str, int] = field(default_factory=dict)  # creates and updates, by side written
    complete: bool = False

    def progress(self) -> JSON:
        return {"read": dict(self.read), "total": self.total, "written": self.written}


def _writes(counts: PassCounts) -> Counter[str]:
    return counts.created + counts.updated


async def reread(
    ctx: EngineContext,
    entity: EntitySpec,
    run_id: int,
    counts: PassCounts,
    *,
    kind: str,
    fields: tuple[str, ...],
) -> RereadOutcome:
    """Read both sides of `entity` in full and merge, `fields` without a base; once complete, the
    mapping applied becomes the entity's fingerprint."""
    store = FingerprintStore(ctx.pool)
    current = fingerprint(entity, ctx.connectors)
    outcome = RereadOutcome(entity.name, kind, fields)
    before = _writes(counts)
    await store.start(entity.name, kind, fields, run_id)
    log.info(
        "backfill_started",
        entity=entity.name,
        kind=kind,
        fields=list(fields),
        detail="both sides read in full; "
        + (f"{', '.join(fields)} merged as on a first link" if fields else "every field merged anew"),
    )

    async def on_page(side: Side, page: FeedPage) -> None:
        outcome.read[side.value] += len(page.records) + len(page.unusable)
        if page.total is not None:
            outcome.total.setdefault(side.value, page.total)
        log.info(
            "backfill_progress",
            entity=entity.name,
            kind=kind,
            side=side.value,
            read=outcome.read[side.value],
            total=outcome.total.get(side.value),
            staged=counts.staged,
        )
        await store.note_progress(entity.name, outcome.progress())

    full = FullRead(on_page)
    await sync_entity(ctx, entity, run_id, counts, full)
    after = _writes(counts)
    outcome.written = {side.value: after[side.value] - before[side.value] for side in Side}
    outcome.complete = full.complete == set(Side) and not ctx.stopping.is_set()
    if outcome.complete:
        await store.finish(entity.name, outcome.progress(), current)
        log.info(
            "backfill_done",
            entity=entity.name,
            kind=kind,
            fields=list(fields),
            read=dict(outcome.read),
            written=outcome.written,
        )
    else:
        await store.note_progress(entity.name, outcome.progress())
        log.warning(
            "backfill_incomplete",
            entity=entity.name,
            kind=kind,
            fields=list(fields),
            read=dict(outcome.read),
            detail="a side was not read to its end (stopped, or its list kept changing); "
            + ("the next pass runs the backfill again" if fields or kind == BACKFILL else "run it again"),
        )
    return outcome


# -- at start: renamed entities and moved resources -------------------------------------------------


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _orphans(held: Mapping[str, int], mapping: MappingSpec) -> tuple[dict[str, int], list[str]]:
    """Entities with state the mapping no longer has, and the mapping's entities with none."""
    known = {e.name for e in mapping.entities}
    orphans = {name: rows for name, rows in held.items() if name not in known}
    fresh = [e.name for e in mapping.entities if e.name not in held]
    return orphans, fresh


def _rename_problem(source: str, orphans: Mapping[str, int], fresh: list[str]) -> str:
    old = list(orphans)
    rows = sum(orphans.values())
    one_each = len(old) == 1 and len(fresh) == 1
    old_name, new_name = (old[0], fresh[0]) if one_each else ("OLD", "NEW")
    return (
        f"  the database holds state for entity {_names(old)} ({rows} records in the map), which the "
        f"mapping ({source}) no longer has, while its entity {_names(fresh)} has none: if it was "
        "renamed, starting afresh would copy again every record without a match key. Either:\n"
        f"    - rename it back in the mapping;\n"
        f"    - carry the state over to the new name: `crmsyncd state rename-entity {old_name} {new_name}`;\n"
        f"    - or, if it is gone for good, drop its state: `crmsyncd state forget-entity {old_name}` "
        "(its records are then matched afresh by their match key, and those without one copied "
        "again);\n"
        "    - or use a fresh database."
    )


def _resource_problem(entity: EntitySpec, side: Side, old: str, new: str, rows: int) -> str:
    where = (
        f"CRM_RESOURCE_PATHS or the mapping's entities.{entity.name}.crm"
        if side is Side.CRM
        else f"the mapping's entities.{entity.name}.ecosire"
    )
    return (
        f"  entity {entity.name!r}: its {side.value} resource is now {new!r} ({where}), but its state "
        f"({rows} records in the map) links records read from {old!r}. If the same records are "
        f"served there now, run `crmsyncd state accept-resource {entity.name}`; otherwise set it back "
        f"to {old!r}, drop the state with `crmsyncd state forget-entity {entity.name}`, or use a "
        "fresh database."
    )


async def check_mapping_state(pool: Pool, mapping: MappingSpec, connectors: Mapping[Side, Connector]) -> None:
    """Refuse (MappingStateChanged) a start whose mapping renamed an entity or moved a resource
    of one that has state; an entity simply dropped from the mapping is only warned about."""
    store = FingerprintStore(pool)
    held = await store.entities_with_state()
    problems: list[str] = []
    orphans, fresh = _orphans(held, mapping)
    if orphans and fresh:
        problems.append(_rename_problem(mapping.source, orphans, fresh))
    else:  # dropped from the mapping, nothing in its place: kept, and said at every start
        for name, rows in orphans.items():
            log.warning("entity_state_orphaned", entity=name, records=rows, detail=orphan_warning(name, rows))
    for entity in mapping.entities:
        stored = await store.load(entity.name) if entity.name in held else None
        if stored is None:
            continue
        now = resource_paths(entity, connectors)
        for side in Side:
            if stored.resources[side] != now[side]:
                problems.append(
                    _resource_problem(entity, side, stored.resources[side], now[side], held[entity.name])
                )
    if problems:
        raise MappingStateChanged(problems)


def orphan_warning(name: str, rows: int) -> str:
    return (
        f"the database holds state for entity {name!r} ({rows} records in the map), which the mapping "
        f"no longer has: `crmsyncd state rename-entity {name} NEW` carries it over if it was renamed, "
        f"`crmsyncd state forget-entity {name}` drops it if it is gone"
    )


async def orphan_warnings(pool: Pool, mapping: MappingSpec) -> list[str]:
    orphans, _ = _orphans(await FingerprintStore(pool).entities_with_state(), mapping)
    return [orphan_warning(name, rows) for name, rows in orphans.items()]


# -- the state commands ------------------------------------------------------------------------------


async def rename_entity(pool: Pool, mapping: MappingSpec, old: str, new: str) -> int:
    """`crmsyncd state rename-entity OLD NEW`: the map rows carried over."""
    store = FingerprintStore(pool)
    held = await store.entities_with_state()
    problems = []
    if old not in held:
        problems.append(f"  the database holds no state for entity {old!r} (it holds {_names(list(held))})")
    if new in held:
        problems.append(
            f"  entity {new!r} has state of its own already; `crmsyncd state forget-entity {new}` drops it"
        )
    if new not in {e.name for e in mapping.entities}:
        problems.append(f"  the mapping ({mapping.source}) has no entity {new!r}")
    if problems:
        raise MappingStateChanged(problems)
    return await store.rename_entity(old, new)


async def accept_resources(
    pool: Pool, mapping: MappingSpec, connectors: Mapping[Side, Connector], name: str
) -> tuple[dict[Side, str], dict[Side, str]] | None:
    """`crmsyncd state accept-resource NAME`: (old, new) paths per side, None when no state of
    the entity records any."""
    try:
        entity = mapping.entity(name)
    except KeyError:
        raise MappingStateChanged([f"  the mapping ({mapping.source}) has no entity {name!r}"]) from None
    store = FingerprintStore(pool)
    stored = await store.load(name)
    if stored is None:
        return None
    now = resource_paths(entity, connectors)
    await store.save_resources(name, now)
    return dict(stored.resources), now
