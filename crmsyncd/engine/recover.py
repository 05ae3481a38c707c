"""Before anything is read: creates that may have happened without our hearing of it (a lost
answer, a kill) are looked up on their target, one scan per side, and linked instead of being
created again. Shared by the sync and retry jobs."""

from __future__ import annotations

import functools

from crmsyncd.connectors.base import ConnectorError
from crmsyncd.domain.canonical import UnresolvedReference
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import BadRecord, Side, parse_timestamp
from crmsyncd.engine.apply import PairWorker, wanted_refs
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.engine.doubts import scan_for_creates
from crmsyncd.engine.stage import resolve_refs
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.pairs import Link

log = get_logger()


async def resolve_doubts(ctx: EngineContext, entity: EntitySpec, counts: PassCounts) -> None:
    """Before anything is read: creates that may have happened without our hearing of it (a
    lost answer, a kill) are looked up on the target in one scan per side, so that such a
    record, when the delta shows it, is known as ours and not taken for a new one to copy
    back. Doubts the scan proves absent are cleared; the rest stay doubts."""
    doubts = await ctx.links.in_doubt(entity.name)
    if not doubts:
        return
    worker = PairWorker(entity, ctx.connectors, ctx.pairs.owner, ctx.pairs.linked_ids, counts)
    wanted = wanted_refs(entity, doubts)
    refs = await resolve_refs(ctx.pairs, entity, wanted) if wanted else {}
    found: list[Link] = []
    cleared: list[int] = []
    too_recent = 0  # not found, but written maybe too recently for the target's feed to show
    for target in Side:
        items = []
        for pair in doubts:
            source = Side.ECOSIRE if pair.ecosire_id is not None else Side.CRM
            if source.other is not target:
                continue
            try:
                # What the unfinished attempt sent, if it recorded it; else what it would send.
                values = pair.last_intended(target) or worker.create_values(
                    worker.view_of(pair, source, refs), target
                )
            except (BadRecord, UnresolvedReference):
                continue  # its merge parks it with the reason
            items.append((pair, values))
        if not items:
            continue
        connector = ctx.connectors[target]
        try:
            scan = await scan_for_creates(
                entity,
                connector,
                target,
                items,
                refs,
                max_requests=ctx.settings.reconcile_budget,
                taken=functools.partial(ctx.pairs.linked_ids, entity.name, target),
            )
        except ConnectorError as exc:
            if exc.outcome.stops_pass:
                raise
            log.warning("doubts_unresolved", entity=entity.name, side=target.value, error=str(exc))
            continue
        if scan.by_likeness:
            log.warning(
                "doubts_matched_by_likeness",
                entity=entity.name,
                side=target.value,
                count=scan.by_likeness,
                detail="copies we created and users edited before we could look for them",
            )
        for pair, sent in items:
            bodies = {str(b.get(connector.id_field)): b for b in scan.matches.get(pair.id, [])}
            if len(bodies) == 1:
                [(record_id, body)] = bodies.items()
                stamp = body.get(connector.updated_field)
                at = parse_timestamp(stamp) if stamp else None
                # What the create sent is what both sides agreed on at that moment.
                found.append(Link(pair.id, target, record_id, body, at, base=sent))
            elif not bodies and scan.complete:
                if pair.id in scan.unproven:
                    too_recent += 1
                else:
                    cleared.append(pair.id)
    refused = await ctx.links.adopt(found)
    await ctx.links.clear_doubt(cleared)
    counts.linked += len(found) - len(refused)
    for link in refused:
        log.warning(
            "doubt_conflict",
            entity=entity.name,
            pair=link.pair_id,
            record=link.record_id,
            detail="the record found is already linked to another pair",
        )
    log.info(
        "doubts_resolved",
        entity=entity.name,
        doubts=len(doubts),
        found=len(found) - len(refused),
        proven_absent=len(cleared),
        too_recent_to_prove=too_recent,
    )
