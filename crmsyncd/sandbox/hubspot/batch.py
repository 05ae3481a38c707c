"""The batch endpoints: `/crm/v3/objects/{objectType}/batch/{read,create,update,upsert,archive}`.

What HubSpot documents, imitated:
- at most 100 inputs (more is a 400);
- success answers 201 (create) or 200 (read, update, upsert), and 204 (archive, which ignores ids
  that do not exist);
- a batch where some inputs failed answers 207 with `results` (the ones done), `numErrors` and
  `errors` (HubSpot's StandardError: status, category, message, context, errors, links), each
  error naming its inputs in `context` (`ids`, or `objectWriteTraceId`);
- read: ids that do not exist are one OBJECT_NOT_FOUND error listing them (207); `idProperty`
  reads by another unique property (email for contacts);
- update: ids that do not exist are refused, the others updated (207; HubSpot's changelog
  "Simplifying batch update response codes": 200 when all succeed, 207 when one or more fails);
- create, and the property checks of update and upsert, are all-or-nothing: one refused input
  (an unknown property, a bad option, an email a contact already holds) fails the whole batch
  with that input's error and nothing is written; unless every input carries an
  `objectWriteTraceId`, which (error-handling docs, "Multi-status errors") turns on per-input
  results: the others are written, each refused one is an error whose context holds its trace id.
  `BatchPolicy.multi_status` switches this ("trace_ids", "always", "never");
- upsert by `idProperty` (email for contacts): an existing object is updated (`new: false`), a
  missing one created with the id value set (`new: true`).

Chosen where the docs are silent: HubSpot does not promise results in the inputs' order, so the
sandbox answers them sorted by id as strings (`BatchPolicy.ordered=True` keeps the inputs' order),
which makes a client that pairs results with inputs by position fail here as it would there;
the same id twice in one batch is a 400 naming it, as is the same email twice in a create.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crmsyncd.domain.records import JSON, format_timestamp
from crmsyncd.sandbox.hubspot import objects
from crmsyncd.sandbox.hubspot.errors import HubSpotError, json_answer, validation
from crmsyncd.sandbox.hubspot.store import SINGULAR, HubObject

if TYPE_CHECKING:
    from crmsyncd.sandbox.hubspot.app import HubSpotSandbox

BATCH_LIMIT = 100


@dataclass(slots=True)
class BatchPolicy:
    multi_status: str = "trace_ids"  # "trace_ids" (documented), "always" or "never"
    ordered: bool = False

    def per_input(self, inputs: list[JSON]) -> bool:
        if self.multi_status == "always":
            return True
        if self.multi_status == "never":
            return False
        return all(isinstance(i.get("objectWriteTraceId"), str) and i["objectWriteTraceId"] for i in inputs)


class _Answer:
    """Results and errors of one batch, and the envelope they go out in."""

    def __init__(self, server: HubSpotSandbox) -> None:
        self.server = server
        self.started = format_timestamp(server.now())
        self.results: list[JSON] = []
        self.errors: list[JSON] = []

    def fail(self, error: HubSpotError, trace_id: str | None = None) -> None:
        item = error.batch_item()
        if trace_id is not None:
            item["context"] = {**item["context"], "objectWriteTraceId": [trace_id]}
        self.errors.append(item)

    def response(self, ok_status: int) -> web.Response:
        results = (
            self.results if self.server.batch.ordered else sorted(self.results, key=lambda r: str(r["id"]))
        )
        body: JSON = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": self.started,
            "completedAt": format_timestamp(self.server.now()),
        }
        if not self.errors:
            return json_answer(body, ok_status)
        body["numErrors"] = len(self.errors)
        body["errors"] = self.errors
        return json_answer(body, 207)


def batch_inputs(body: JSON) -> list[JSON]:
    """A batch body's `inputs`: a list of at most BATCH_LIMIT objects, else a 400."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise validation("inputs must be a list of objects")
    if len(inputs) > BATCH_LIMIT:
        raise validation(f"Batch input size is {len(inputs)}: at most {BATCH_LIMIT} inputs are allowed")
    return inputs


def _duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    twice: set[str] = set()
    for value in values:
        (twice if value in seen else seen).add(value)
    return sorted(twice)


def _trace(item: JSON) -> str | None:
    trace = item.get("objectWriteTraceId")
    return trace if isinstance(trace, str) and trace else None


def _with_trace(body: JSON, item: JSON) -> JSON:
    trace = _trace(item)
    if trace is not None:
        body["objectWriteTraceId"] = trace
    return body


def batch_routes(server: HubSpotSandbox, object_type: str) -> list[web.RouteDef]:
    base = f"/crm/v3/objects/{object_type}/batch"
    portal = server.portal
    upper = SINGULAR[object_type].upper()

    def run(inputs: list[JSON], answer: _Answer, step: Callable[[JSON], Callable[[], JSON]]) -> None:
        """Check every input with `step` (which returns the write to do), then write: all or
        nothing, or per input when multi-status is on."""
        per_input = server.batch.per_input(inputs)
        writes: list[tuple[JSON, Callable[[], JSON]]] = []
        for item in inputs:
            try:
                writes.append((item, step(item)))
            except HubSpotError as error:
                if not per_input:
                    raise
                answer.fail(error, _trace(item))
        for item, write in writes:
            answer.results.append(_with_trace(write(), item))

    async def read(request: web.Request) -> web.StreamResponse:
        body = await objects.json_body(request)
        inputs = batch_inputs(body)
        id_property = body.get("idProperty")
        if id_property is not None and not isinstance(id_property, str):
            raise validation("idProperty must be a property name")
        names = objects.names_in(body, "properties")
        if id_property and names is not None and id_property not in names:
            names = [*names, id_property]
        archived = objects.flag(request, "archived")
        answer = _Answer(server)
        missing: list[str] = []
        for item in inputs:
            value = str(item.get("id", ""))
            found = (
                portal.get(object_type, value, archived=True)
                if archived
                else portal.find(object_type, id_property, value)
            )
            if found is None:
                missing.append(value)
            else:
                answer.results.append(portal.wire(object_type, found, names))
        if missing:
            answer.fail(
                HubSpotError(
                    404,
                    "OBJECT_NOT_FOUND",
                    f"Could not get some {upper} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    context={"ids": missing},
                )
            )
        return answer.response(200)

    async def create(request: web.Request) -> web.StreamResponse:
        inputs = batch_inputs(await objects.json_body(request))
        emails: set[str] = set()

        def step(item: JSON) -> Callable[[], JSON]:
            values = objects.clean_values(portal, object_type, item.get("properties"))
            objects.check_unique(portal, object_type, values, None)
            email = values.get("email") if object_type == "contacts" else None
            if email is not None:
                if email in emails:
                    raise validation(f"Duplicate email in batch input: {email}", email=[email])
                emails.add(email)
            links = objects.parse_associations(portal, object_type, item.get("associations"))

            def write() -> JSON:
                obj = objects.create(server, object_type, values, links)
                return portal.wire(object_type, obj, list(values) or None)

            return write

        answer = _Answer(server)
        run(inputs, answer, step)
        return answer.response(201)

    async def update(request: web.Request) -> web.StreamResponse:
        inputs = batch_inputs(await objects.json_body(request))
        duplicates = _duplicates([str(i.get("id", "")) for i in inputs])
        if duplicates:
            raise validation(f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]", ids=duplicates)
        answer = _Answer(server)
        missing: list[str] = []
        present: list[tuple[JSON, HubObject]] = []
        for item in inputs:
            id_property = item.get("idProperty")
            found = portal.find(
                object_type, id_property if isinstance(id_property, str) else None, str(item.get("id", ""))
            )
            if found is None:
                missing.append(str(item.get("id", "")))
            else:
                present.append((item, found))
        by_item = {id(item): obj for item, obj in present}

        def step(item: JSON) -> Callable[[], JSON]:
            obj = by_item[id(item)]
            values = objects.clean_values(portal, object_type, item.get("properties"))
            objects.check_unique(portal, object_type, values, obj.id)

            def write() -> JSON:
                objects.update(server, object_type, obj, values)
                return portal.wire(object_type, obj, list(values) or None)

            return write

        run([item for item, _ in present], answer, step)
        if missing:
            answer.fail(
                HubSpotError(
                    404,
                    "OBJECT_NOT_FOUND",
                    f"Could not update some {upper} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    context={"ids": missing},
                )
            )
        return answer.response(200)

    async def upsert(request: web.Request) -> web.StreamResponse:
        inputs = batch_inputs(await objects.json_body(request))
        unique = {"email"} if object_type == "contacts" else set()
        unique |= {d.name for d in portal.definitions[object_type].values() if d.has_unique_value}
        keys: list[str] = []
        for index, item in enumerate(inputs):
            id_property = item.get("idProperty")
            if id_property not in unique:
                raise validation(
                    f"inputs[{index}]: idProperty {id_property!r} is not a unique property of {object_type}"
                    f" (use one of: {', '.join(sorted(unique)) or 'none'})",
                    idProperty=[str(id_property)],
                )
            keys.append(f"{id_property}:{str(item.get('id', '')).strip().lower()}")
        duplicates = _duplicates(keys)
        if duplicates:
            raise validation(f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]", ids=duplicates)

        def step(item: JSON) -> Callable[[], JSON]:
            id_property, key = str(item["idProperty"]), str(item.get("id", ""))
            raw = (
                dict(item.get("properties") or {}) if isinstance(item.get("properties") or {}, dict) else None
            )
            if raw is None:
                raise validation("properties must be an object of property names to values")
            raw.setdefault(id_property, key)
            values = objects.clean_values(portal, object_type, raw)
            found = portal.find(object_type, id_property, key)
            objects.check_unique(portal, object_type, values, None if found is None else found.id)

            def write() -> JSON:
                if found is None:
                    obj, new = objects.create(server, object_type, values, []), True
                else:
                    obj, new = objects.update(server, object_type, found, values), False
                wired: dict[str, Any] = portal.wire(object_type, obj, list(values) or None)
                wired["new"] = new
                return wired

            return write

        answer = _Answer(server)
        run(inputs, answer, step)
        return answer.response(200)

    async def archive(request: web.Request) -> web.StreamResponse:
        for item in batch_inputs(await objects.json_body(request)):
            found = portal.get(object_type, str(item.get("id", "")))
            if found is not None:
                objects.archive(server, object_type, found)
        return web.Response(status=204)

    return [
        web.post(f"{base}/read", read),
        web.post(f"{base}/create", create),
        web.post(f"{base}/update", update),
        web.post(f"{base}/upsert", upsert),
        web.post(f"{base}/archive", archive),
    ]
