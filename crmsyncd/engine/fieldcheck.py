"""Mapped field names checked against the APIs (the rules: domain/fieldcheck.py).

* During a sync pass (`FieldWatch`): per entity and side, until a check is stored for the side's
  current mapped field list, the first records read are looked at. The first pass reads from the
  list's start anyway, so this costs nothing; after a mapping change, when the delta read holds
  too few records to tell, the start of the list is read for it (one request per page, usually
  one). A mapped field none of them holds is a warning in the log (`mapping_field_unseen`), in the
  pass summary (`unseen_fields`) and, from the stored result, in `crmsyncd status`.
* `crmsyncd mapping check` (`check_mapping`): one list request per entity and side, then unknown
  fields, wrong types and fields mapped twice."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crmsyncd.connectors.base import ConnectorError
from crmsyncd.connectors.port import Connector, PagingLoop
from crmsyncd.domain.fieldcheck import (
    FieldSample,
    Problem,
    check_entity,
    mapped_fields,
    unseen_detail,
)
from crmsyncd.domain.mapping import EntitySpec
from crmsyncd.domain.records import JSON, Side
from crmsyncd.engine.context import EngineContext
from crmsyncd.engine.counts import PassCounts
from crmsyncd.observability.logging import get_logger
from crmsyncd.store.fieldseen import FieldCheckStore

log = get_logger()

# Pages of the list's start a check after a mapping change may read (SAMPLE_SIZE records fill
# fewer with the usual page sizes; an API answering short pages is not followed for ever).
_MAX_START_PAGES = 10


class FieldWatch:
    """The check of one entity's side during a pass, fed with the pages its read yields."""

    def __init__(self, ctx: EngineContext, entity: EntitySpec, side: Side, run_id: int) -> None:
        self.ctx = ctx
        self.entity = entity
        self.side = side
        self.run_id = run_id
        self.sample = FieldSample(mapped_fields(entity, side))

    def feed(self, bodies: Iterable[JSON]) -> None:
        self.sample.add(bodies)

    async def finish(self, counts: PassCounts, *, read_whole_side: bool) -> None:
        """Conclude after the side's read; `read_whole_side`: it read the list from its start to
        its end, so a sample of fewer than SAMPLE_SIZE records is the whole side."""
        if not (self.sample.full or read_whole_side):
            # A delta read shows recent changes only: take the first records of the list instead.
            self.sample = FieldSample(self.sample.fields)
            if not await self._read_start():
                return
        if self.sample.sampled == 0:
            return  # no record yet: nothing to check, the next pass looks again
        unseen = self.sample.unseen
        await FieldCheckStore(self.ctx.pool).save(
            self.entity.name, self.side, self.sample.fields, unseen, self.sample.sampled, self.run_id
        )
        for remote in unseen:
            log.warning(
                "mapping_field_unseen",
                entity=self.entity.name,
                side=self.side.value,
                field=remote,
                sampled=self.sample.sampled,
                detail=unseen_detail(self.entity.name, self.side, remote, self.sample.sampled),
            )
            counts.unseen_fields.append(
                {
                    "entity": self.entity.name,
                    "side": self.side.value,
                    "field": remote,
                    "sampled": self.sample.sampled,
                }
            )
        if not unseen:
            log.info(
                "mapping_fields_seen",
                entity=self.entity.name,
                side=self.side.value,
                sampled=self.sample.sampled,
            )

    async def _read_start(self) -> bool:
        """Sample the list's first records; False when the API could not be read now (the check
        waits for the next pass rather than fail an entity whose sync went well)."""
        connector = self.ctx.connectors[self.side]
        resource = self.entity.resource(self.side)
        try:
            pages = connector.changes(resource, since=None, max_requests=_MAX_START_PAGES)
            async with contextlib.aclosing(pages):
                async for page in pages:
                    self.sample.add([body for _, _, body in page.records])
                    self.sample.add([body for body, _ in page.unusable])
                    if self.sample.full:
                        return True
        except PagingLoop:
            return True  # the pages it allowed were read: the sample is what they held
        except ConnectorError as exc:
            if exc.outcome.stops_pass:
                raise
            log.warning(
                "mapping_field_check_deferred",
                entity=self.entity.name,
                side=self.side.value,
                error=str(exc),
                detail="the mapped fields are checked at the next pass",
            )
            return False
        return True


async def field_watches(ctx: EngineContext, entity: EntitySpec, run_id: int) -> dict[Side, FieldWatch]:
    """The sides of `entity` with no stored check for their current mapped fields."""
    stored = await FieldCheckStore(ctx.pool).of_entity(entity.name)
    return {
        side: FieldWatch(ctx, entity, side, run_id)
        for side in Side
        if side not in stored or stored[side].fields != mapped_fields(entity, side)
    }


# -- crmsyncd mapping check ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SideRead:
    entity: str
    side: Side
    resource: str
    records: int


@dataclass(slots=True)
class MappingCheck:
    sides: list[SideRead] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sides": [
                {"entity": s.entity, "side": s.side.value, "resource": s.resource, "records": s.records}
                for s in self.sides
            ],
            "problems": [p.as_dict() for p in self.problems],
        }

    def lines(self) -> list[str]:
        width = max([8, *(len(s.entity) for s in self.sides)])
        out = [
            f"{s.entity:<{width}} {s.side.value:<8} "
            + (f"{s.records} records read" if s.records else "no records: nothing to check")
            for s in self.sides
        ]
        out.extend(f"{p.entity} {p.side.value}: {p.message}" for p in self.problems)
        n = len(self.problems)
        out.append("no problem found" if n == 0 else f"{n} problem{'s' if n > 1 else ''} found")
        return out


async def check_mapping(connectors: Mapping[Side, Connector], entities: Sequence[EntitySpec]) -> MappingCheck:
    """One page of each side per entity (its first: the oldest records), checked."""
    report = MappingCheck()
    for entity in entities:
        pages: dict[Side, list[JSON]] = {}
        for side in Side:
            connector = connectors[side]
            resource = entity.resource(side)
            pages[side] = await _first_page(connector, resource)
            report.sides.append(SideRead(entity.name, side, resource, len(pages[side])))
        report.problems.extend(
            check_entity(entity, pages, {side: connectors[side].id_field for side in Side})
        )
    return report


async def _first_page(connector: Connector, resource: str) -> list[JSON]:
    """The records of the feed's first page (its oldest), in one list request."""
    pages = connector.changes(resource, since=None, max_requests=1)
    async with contextlib.aclosing(pages):
        try:
            async for page in pages:
                records = [body for _, _, body in page.records] + [body for body, _ in page.unusable]
                if records or page.complete:
                    return records
        except PagingLoop:
            pass  # a second request was needed for more: one page is what the check reads
    return []
