"""Paging under change (issue 3, item 1): no record is ever skipped and every pass terminates
while records move during paging, share one stamp by the thousand, commit late with older
stamps, or come from a server whose clock is minutes off ours.

The condition is injected where it happens in life, inside the server: the sandboxes here are
subclassed so that a test's hook runs right after a list page has been computed and before the
client reads it, and edits records between two page requests. Time is the server's own: a
stepping clock (`TickingClock` with a millisecond step) makes every stamp deterministic.

Design invariants exercised: 3 (no lost changes; the cursor never passes an unread record),
4 (convergence, then a pass that writes nothing), 1 (re-reads in the overlap change nothing).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from crmsyncd.app import App, open_app
from crmsyncd.config import load_settings
from crmsyncd.connectors.collection import CollectionConnector
from crmsyncd.connectors.ecosire import EcosireConnector, EcosireSettings
from crmsyncd.connectors.http import make_session
from crmsyncd.connectors.paging import read_changes
from crmsyncd.connectors.port import PagingLoop
from crmsyncd.connectors.rest import RestConnector, RestSettings
from crmsyncd.domain.records import JSON, Side, format_timestamp, parse_timestamp
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox, SandboxServer
from tests.conftest import TickingClock, by_email

T0 = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)

# resource, query, records served -> None; runs after the page is computed, before it is sent
Hook = Callable[[str, dict[str, str], list[JSON]], None]


def _after_list(
    server: HookedEcosire | HookedCrm, request: web.Request, resource: str, answer: web.StreamResponse
) -> web.StreamResponse:
    body = answer.body if isinstance(answer, web.Response) else None
    served: list[JSON] = (
        orjson.loads(body)["data"] if answer.status == 200 and isinstance(body, bytes) else []
    )
    query = dict(request.query)
    server.lists.append((resource, query))
    if server.after_page is not None and answer.status == 200:
        server.after_page(resource, query, served)
    return answer


def _one_page_only(request: web.Request) -> web.Request:
    """A careless server: every page number answers page 1."""
    return request.clone(rel_url=request.rel_url.update_query(page="1"))


class HookedEcosire(EcosireSandbox):
    """ECOSIRE's sandbox with a hook between list pages and a log of list queries."""

    def __init__(self) -> None:
        super().__init__(rate_limit_per_minute=None)
        self.after_page: Hook | None = None
        self.lists: list[tuple[str, dict[str, str]]] = []
        self.ignore_page = False

    async def _list(self, request: web.Request, resource: str) -> web.StreamResponse:
        served = await super()._list(_one_page_only(request) if self.ignore_page else request, resource)
        return _after_list(self, request, resource, served)


class HookedCrm(CrmSandbox):
    def __init__(self) -> None:
        super().__init__()
        self.after_page: Hook | None = None
        self.lists: list[tuple[str, dict[str, str]]] = []

    async def _list(self, request: web.Request, resource: str) -> web.StreamResponse:
        return _after_list(self, request, resource, await super()._list(request, resource))


# These shadow conftest's servers, so that `env` and `app` point at the hooked ones.
@pytest.fixture
async def eco() -> AsyncIterator[HookedEcosire]:
    async with HookedEcosire() as server:
        yield server


@pytest.fixture
async def crm() -> AsyncIterator[HookedCrm]:
    async with HookedCrm() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    http = make_session(10)
    try:
        yield http
    finally:
        await http.close()


def eco_connector(
    server: SandboxServer, session: aiohttp.ClientSession, page_size: int = 100
) -> EcosireConnector:
    settings = EcosireSettings(
        # The hooked sandbox sends no rate-limit headers: without a value the connector would pace
        # itself at ECOSIRE's documented 60 a minute.
        base_url=server.url,
        api_key=SecretStr(server.api_key),
        requests_per_minute=1_000_000,
        page_size=page_size,
    )
    return EcosireConnector(settings, session)


def crm_connector(
    server: SandboxServer, session: aiohttp.ClientSession, page_size: int = 100
) -> RestConnector:
    return RestConnector(
        RestSettings(base_url=server.url, api_key=SecretStr(server.api_key), page_size=page_size), session
    )


# --- data and oracles ----------------------------------------------------------------------------


def eco_people(n: int, prefix: str = "p", **extra: Any) -> list[JSON]:
    return [{"name": f"Person {prefix}{i}", "email": f"{prefix}{i}@mail.example", **extra} for i in range(n)]


def crm_people(n: int, prefix: str = "q", **extra: Any) -> list[JSON]:
    return [
        {"fullName": f"Person {prefix}{i}", "emailAddress": f"{prefix}{i}@mail.example", **extra}
        for i in range(n)
    ]


def spread(records: list[JSON], start: datetime, step: timedelta) -> list[JSON]:
    """Give records distinct, increasing stamps."""
    return [{**r, "updatedAt": format_timestamp(start + i * step)} for i, r in enumerate(records)]


Read = list[tuple[str, datetime, JSON]]


async def read_pass(
    connector: CollectionConnector, resource: str, since: datetime | None = None, page_size: int = 100
) -> Read:
    """One pass of the pager: every record it yields, in order."""
    got: Read = []
    pages = read_changes(connector, resource, since=since, page_size=page_size)
    async with contextlib.aclosing(pages):
        async for page in pages:
            assert not page.unusable
            got.extend(page.records)
    return got


def stamp(record: JSON) -> datetime:
    return parse_timestamp(record["updatedAt"])


def unread(server: SandboxServer, resource: str, got: Read, *, upto: datetime | None = None) -> list[str]:
    """Records whose current version was not read although stamped at or before `upto` (default:
    the last stamp read, which is where the cursor lands): exactly what invariant 3 forbids."""
    read = {(rid, at) for rid, at, _ in got}
    horizon = upto if upto is not None else max(at for _, at, _ in got)
    return sorted(
        r["id"] for r in server.records(resource) if (r["id"], stamp(r)) not in read and stamp(r) <= horizon
    )


def no_repeats(got: Read) -> None:
    """Each (id, stamp) is yielded once per pass: re-reads in the overlap are dropped."""
    assert len({(rid, at) for rid, at, _ in got}) == len(got)


class Editor:
    """A user editing records between the pages of delta reads: `per_page` edits after each of
    the first `pages` such answers, chosen by a fixed seed among `pool()`."""

    def __init__(
        self,
        server: SandboxServer,
        resource: str,
        field: str,
        pool: Callable[[], list[str]],
        *,
        per_page: int = 1,
        pages: int = 1_000_000,
        seed: int = 1,
    ) -> None:
        self.server, self.resource, self.field, self.pool = server, resource, field, pool
        self.per_page, self.pages = per_page, pages
        self.rng = random.Random(seed)
        self.calls = 0
        self.edited: list[str] = []

    def __call__(self, resource: str, query: dict[str, str], served: list[JSON]) -> None:
        if resource != self.resource or query.get("sortBy") != "updatedAt" or self.calls >= self.pages:
            return
        self.calls += 1
        candidates = self.pool()
        for record_id in self.rng.sample(candidates, min(self.per_page, len(candidates))):
            self.server.edit(self.resource, record_id, **{self.field: f"edited {len(self.edited)}"})
            self.edited.append(record_id)


def ids(server: SandboxServer, resource: str, at: datetime | None = None) -> list[str]:
    return [r["id"] for r in server.records(resource) if at is None or stamp(r) == at]


# --- the pager alone, over real HTTP --------------------------------------------------------------


async def test_records_updated_while_paging_are_all_read(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """Edits between page requests move records to the end and shift the rest; re-anchoring every
    page on the last stamp loses none of them, and the edited versions are read in the same pass."""
    eco.seed("contacts", spread(eco_people(1000), T0 - timedelta(hours=1), timedelta(seconds=1)))
    eco.clock = TickingClock(T0, MS)
    # Four edits after each of the first eight pages, among records read and not yet read.
    editor = Editor(eco, "contacts", "name", lambda: ids(eco, "contacts"), per_page=4, pages=8)
    eco.after_page = editor

    got = await read_pass(eco_connector(eco, session), "contacts")

    assert len(editor.edited) == 32
    # Every record read in its last version, the edited ones in this very pass.
    assert unread(eco, "contacts", got, upto=T0 + timedelta(days=1)) == []
    no_repeats(got)
    assert len(eco.lists) <= 12  # 1,032 versions at 100 a page: moving records cost no extra pages


async def test_twenty_five_hundred_records_with_one_stamp(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """A bulk import stamps 2,500 records alike: the anchor cannot move inside them, so the pager
    steps by page number and sweeps the block once more to prove nothing moved; then it goes on."""
    bulk = T0 - timedelta(minutes=30)
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(bulk)} for r in eco_people(2500)])
    eco.seed("contacts", spread(eco_people(30, "late"), bulk + timedelta(seconds=1), timedelta(seconds=1)))
    eco.clock = TickingClock(T0, MS)

    got = await read_pass(eco_connector(eco, session), "contacts")

    assert sorted(rid for rid, _, _ in got) == sorted(ids(eco, "contacts"))  # each exactly once
    # Page 1 (the anchor moves to the bulk stamp), the block's 25 pages and the one that ends it,
    # the same 26 again to see the block hold still, then one page after it.
    pages = [q["page"] for _, q in eco.lists]
    assert pages == ["1", *[str(p) for p in range(1, 27)] * 2, "1"]


async def test_a_same_stamp_block_edited_while_stepped_through(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """The known weakness of page-number stepping: an edit in the part of the block already read
    shifts an unread record onto a page already read. Sweeping again until a sweep sees the block
    hold still reads it; plain stepping (the control) does lose records to the same edits."""
    bulk = T0 - timedelta(minutes=30)
    block = [{**r, "updatedAt": format_timestamp(bulk)} for r in eco_people(2500)]

    async def scenario(
        server: HookedEcosire, read: Callable[[CollectionConnector], Any]
    ) -> tuple[Any, Editor]:
        server.seed("contacts", block)
        server.clock = TickingClock(T0, MS)
        editor = Editor(
            server, "contacts", "name", lambda: ids(server, "contacts", bulk), per_page=2, pages=30
        )
        server.after_page = editor
        return await read(eco_connector(server, session)), editor

    got, editor = await scenario(eco, lambda c: read_pass(c, "contacts"))
    assert unread(eco, "contacts", got, upto=T0 + timedelta(days=1)) == []
    no_repeats(got)
    assert len(editor.edited) == 60

    async def plain_stepping(connector: CollectionConnector) -> set[str]:
        seen: set[str] = set()
        page = 1
        while True:
            result = await connector.list_page("contacts", updated_after=None, page=page, limit=100)
            seen.update(str(r["id"]) for r in result.records)
            if page >= result.total_pages:
                return seen
            page += 1

    async with HookedEcosire() as control:
        seen, _ = await scenario(control, plain_stepping)
        assert set(ids(control, "contacts")) - seen, "the edits should make plain stepping skip"


async def test_records_deleted_while_a_block_is_stepped(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """Deletes also shift a block under page-number stepping, and may empty the list entirely:
    the sweeps still end, with every surviving record read; then the block goes for good."""
    bulk = T0 - timedelta(minutes=30)
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(bulk)} for r in eco_people(500)])
    eco.seed("contacts", spread(eco_people(20, "after"), bulk + timedelta(seconds=1), timedelta(seconds=1)))
    rng = random.Random(3)

    def delete_some(resource: str, query: dict[str, str], served: list[JSON]) -> None:
        if len(eco.lists) <= 6:
            for rid in rng.sample(ids(eco, "contacts", bulk), 30):
                eco.remove("contacts", rid)

    eco.after_page = delete_some
    got = await read_pass(eco_connector(eco, session), "contacts")
    assert unread(eco, "contacts", got, upto=T0) == []
    assert len(ids(eco, "contacts")) == 520 - 6 * 30

    # Everything left under the anchor is deleted after the first page of the block.
    eco.lists.clear()
    bulk2 = T0 - timedelta(minutes=10)
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(bulk2)} for r in eco_people(150, "gone")])

    def delete_all(resource: str, query: dict[str, str], served: list[JSON]) -> None:
        if "updatedAfter" in query:
            for rid in ids(eco, "contacts", bulk2):
                eco.remove("contacts", rid)

    eco.after_page = delete_all
    got = await read_pass(eco_connector(eco, session), "contacts", since=bulk2 - MS)
    assert len(got) == 100 and not ids(eco, "contacts", bulk2)
    # The block's page 1, its page 2 (empty), then page 1 empty twice: a sweep that holds still.
    assert [q["page"] for _, q in eco.lists] == ["1", "2", "1", "1"]


async def test_a_block_that_never_holds_still_stops_with_a_clear_error(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """Edits after every request keep the block changing: after the bound on sweeps the pager
    raises PagingLoop, having yielded nothing past the block (the cursor passes no unread record)."""
    bulk = T0 - timedelta(minutes=30)
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(bulk)} for r in eco_people(400)])
    eco.seed("contacts", spread(eco_people(10, "after"), bulk + timedelta(seconds=5), timedelta(seconds=1)))
    eco.clock = TickingClock(T0, MS)
    eco.after_page = Editor(eco, "contacts", "name", lambda: ids(eco, "contacts", bulk))
    got: Read = []

    with pytest.raises(
        PagingLoop, match=r"ecosire contacts: \d+ records updated just after .* kept changing"
    ):
        pages = read_changes(
            eco_connector(eco, session), "contacts", since=None, page_size=100, max_block_sweeps=3
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                got.extend(page.records)

    assert got and all(at == bulk for _, at, _ in got)
    assert len(eco.lists) <= 1 + 4 * 5  # page 1, then four sweeps of at most five pages


async def test_a_server_that_ignores_the_page_number_is_caught(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """A server answering page 1 whatever page is asked would have a block stepped for ever."""
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(T0)} for r in eco_people(250)])
    eco.ignore_page = True
    with pytest.raises(PagingLoop, match="ignore the page parameter"):
        await read_pass(eco_connector(eco, session), "contacts")
    assert [q["page"] for _, q in eco.lists] == ["1", "1", "2"]


async def test_a_list_not_sorted_ascending_is_refused(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """A CRM that ignores sortOrder answers newest first: anchoring on such a page would jump over
    everything between, so the pager refuses it instead of losing records quietly."""
    eco.seed("contacts", spread(eco_people(150), T0 - timedelta(hours=1), timedelta(seconds=1)))

    class NewestFirst(EcosireConnector):
        def list_params(self, *, updated_after: datetime | None, page: int, limit: int) -> dict[str, str]:
            asked = super().list_params(updated_after=updated_after, page=page, limit=limit)
            return {**asked, "sortOrder": "desc"}

    connector = NewestFirst(eco_connector(eco, session).settings, session)
    with pytest.raises(PagingLoop, match="not sorted by updatedAt ascending"):
        await read_pass(connector, "contacts")


async def test_users_editing_all_along_do_not_keep_a_pass_running(
    eco: HookedEcosire, session: aiohttp.ClientSession
) -> None:
    """An edit after every page request, for ever: the read budget (what the list held at its
    first answer, plus a page) ends the pass; what changed after it is the next pass's, and
    together the two passes read every record's last version."""
    eco.seed("contacts", spread(eco_people(600), T0 - timedelta(hours=1), timedelta(seconds=1)))
    eco.clock = TickingClock(T0, MS)
    # More records move to the end after each page than a page reads: without the budget the
    # pass would chase them for ever.
    editor = Editor(eco, "contacts", "name", lambda: ids(eco, "contacts"), per_page=120)
    eco.after_page = editor
    connector = eco_connector(eco, session)

    first = await read_pass(connector, "contacts")
    assert len(eco.lists) < 40  # ended although edits never stopped
    assert unread(eco, "contacts", first) == []  # nothing at or before its cursor is left behind
    eco.after_page = None
    cursor = max(at for _, at, _ in first)
    second = await read_pass(connector, "contacts", since=cursor - timedelta(seconds=2))
    assert unread(eco, "contacts", first + second, upto=T0 + timedelta(days=1)) == []


# --- the whole engine: both sides, real PostgreSQL ------------------------------------------------


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    patch = pytest.MonkeyPatch()
    for name, value in values.items():
        patch.setenv(name, value)
    try:
        yield
    finally:
        patch.undo()


@contextlib.asynccontextmanager
async def app_with(**values: str) -> AsyncIterator[App]:
    """The app as `crmsyncd` builds it from the environment (the `env` fixture's) plus `values`."""
    with environment(**values):
        settings = load_settings()
    async with open_app(settings) as app:
        yield app


def converged(eco: SandboxServer, crm: SandboxServer) -> dict[str, str]:
    """Each contact has exactly one counterpart with the same name; email -> name."""
    eco_all, crm_all = eco.records("contacts"), crm.records("contacts")
    eco_by, crm_by = by_email(eco_all, "email"), by_email(crm_all, "emailAddress")
    assert len(eco_by) == len(eco_all) == len(crm_all) == len(crm_by)
    names = {key: record["name"] for key, record in eco_by.items()}
    assert names == {key: record["fullName"] for key, record in crm_by.items()}
    return names


def delta_limits(server: HookedEcosire | HookedCrm) -> set[str]:
    return {q["limit"] for _, q in server.lists if q.get("sortBy") == "updatedAt"}


async def cursor(app: App, side: Side) -> datetime:
    at: datetime = await app.pool.fetchval(
        "SELECT updated_at FROM sync_cursor WHERE entity = 'contacts' AND side = $1", side.value
    )
    return at


async def test_edits_on_both_sides_while_the_pass_pages_sync_in_that_pass(
    env: dict[str, str], eco: HookedEcosire, crm: HookedCrm
) -> None:
    """Both pagers read while users edit between their pages; the CRM pages by its own size
    (CRM_PAGE_SIZE=30), ECOSIRE by its 100. The first pass already carries every edit made while
    it paged (invariant 3), and the next one writes nothing (invariant 4)."""
    eco.seed("contacts", spread(eco_people(400), T0 - timedelta(hours=2), timedelta(seconds=1)))
    crm.seed("contacts", spread(crm_people(300), T0 - timedelta(hours=2), timedelta(seconds=1)))
    eco.clock, crm.clock = TickingClock(T0, MS), TickingClock(T0, MS)
    seeded_eco, seeded_crm = ids(eco, "contacts"), ids(crm, "contacts")
    eco.after_page = eco_edits = Editor(eco, "contacts", "name", lambda: seeded_eco, per_page=5, pages=3)
    crm.after_page = crm_edits = Editor(crm, "contacts", "fullName", lambda: seeded_crm, per_page=5, pages=8)

    async with app_with(CRM_PAGE_SIZE="30") as app:
        first = await app.engine.sync_pass(app.entities)
        eco.after_page = crm.after_page = None
        assert first.status == "ok"
        assert first.counts.created == {"crm": 400, "ecosire": 300}
        assert len(eco_edits.edited) == 15 and len(crm_edits.edited) == 40
        names = converged(eco, crm)
        assert sum(name.startswith("edited") for name in names.values()) == len(
            set(eco_edits.edited) | set(crm_edits.edited)
        )
        assert delta_limits(crm) == {"30"} and delta_limits(eco) == {"100"}

        second = await app.engine.sync_pass(app.entities)
        assert second.counts.writes == 0
        assert converged(eco, crm) == names


async def test_late_commits_with_older_stamps_are_read_within_the_overlap(
    env: dict[str, str], eco: HookedEcosire, crm: HookedCrm
) -> None:
    """A record that becomes visible after a pass read, stamped up to CRMSYNCD_OVERLAP seconds
    before the newest stamp that pass read (a late commit), or at that very stamp: the next pass
    re-reads that much before it and finds it; one committed later than the window allows waits
    for a wider window."""
    eco.clock, crm.clock = TickingClock(T0, MS), TickingClock(T0, MS)
    eco.seed("contacts", spread(eco_people(50), T0 - timedelta(seconds=20), timedelta(milliseconds=100)))
    crm.seed("contacts", spread(crm_people(50), T0 - timedelta(seconds=20), timedelta(milliseconds=100)))

    async with app_with() as app:  # the default overlap, 2 s
        await app.engine.sync_pass(app.entities)
        eco_newest, crm_newest = await cursor(app, Side.ECOSIRE), await cursor(app, Side.CRM)
        # Late commits: stamped 1.5 s before the newest stamp read on each side, one at that very
        # stamp, and one 10 s before it.
        eco.seed(
            "contacts", [{**eco_people(1, "elate")[0], "updatedAt": format_timestamp(eco_newest - 1500 * MS)}]
        )
        crm.seed(
            "contacts", [{**crm_people(1, "clate")[0], "updatedAt": format_timestamp(crm_newest - 1500 * MS)}]
        )
        eco.seed("contacts", [{**eco_people(1, "same")[0], "updatedAt": format_timestamp(eco_newest)}])
        eco.seed(
            "contacts",
            [{**eco_people(1, "later")[0], "updatedAt": format_timestamp(eco_newest - 10_000 * MS)}],
        )

        # And one committed while the next pass pages, stamped a second before the server's now.
        def commit_late(resource: str, query: dict[str, str], served: list[JSON]) -> None:
            crm.after_page = None
            late = {
                **crm_people(1, "during")[0],
                "updatedAt": format_timestamp(crm.now() - timedelta(seconds=1)),
            }
            crm.seed("contacts", [late])

        crm.after_page = commit_late

        second = await app.engine.sync_pass(app.entities)
        crm.after_page = None
        assert second.counts.created["crm"] == 2
        eco_by = by_email(eco.records("contacts"), "email")
        crm_by = by_email(crm.records("contacts"), "emailAddress")
        assert {"elate0@mail.example", "same0@mail.example"} <= crm_by.keys()
        assert "clate0@mail.example" in eco_by
        assert "later0@mail.example" not in crm_by  # 10 s is outside a 2 s window

        third = await app.engine.sync_pass(app.entities)
        # The one committed during the second pass: read by it, or by the third within the overlap.
        assert second.counts.created["ecosire"] + third.counts.created["ecosire"] == 2
        assert "during0@mail.example" in by_email(eco.records("contacts"), "email")

    async with app_with(CRMSYNCD_OVERLAP="30") as app:
        wider = await app.engine.sync_pass(app.entities)
        assert wider.counts.created == {"crm": 1}
        converged(eco, crm)
        assert (await app.engine.sync_pass(app.entities)).counts.writes == 0


async def test_without_overlap_the_cursor_stamp_itself_is_read_again(
    env: dict[str, str], eco: HookedEcosire, crm: HookedCrm
) -> None:
    """CRMSYNCD_OVERLAP=0: the list filter is strictly after, so the cursor's own stamp must still
    be asked for; a record sharing it that the last pass did not see (committed late, or left by
    a read cut short inside a group of equal stamps) is not lost."""
    eco.clock, crm.clock = TickingClock(T0, MS), TickingClock(T0, MS)
    at = T0 - timedelta(minutes=5)
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(at)} for r in eco_people(5)])

    async with app_with(CRMSYNCD_OVERLAP="0") as app:
        await app.engine.sync_pass(app.entities)
        assert await cursor(app, Side.ECOSIRE) == at
        eco.seed("contacts", [{**eco_people(1, "same")[0], "updatedAt": format_timestamp(at)}])
        again = await app.engine.sync_pass(app.entities)
        assert again.counts.created == {"crm": 1}
        converged(eco, crm)


# --- clocks that are minutes off ours ------------------------------------------------------------


def people(server: SandboxServer, n: int, prefix: str) -> list[JSON]:
    return eco_people(n, prefix) if isinstance(server, EcosireSandbox) else crm_people(n, prefix)


@pytest.mark.parametrize("offset", [300, -300])
async def test_stamps_minutes_off_the_date_header_hide_nothing(
    eco: HookedEcosire, crm: HookedCrm, session: aiohttp.ClientSession, offset: int
) -> None:
    """Each server's Date header is five minutes ahead of its records' stamps, or behind (a front
    end and a database on two machines). A pass reads every record the list holds, however its
    stamp compares with the Date header, and the next pass, from the newest stamp read, finds an
    edit made after it at once."""
    for server, connector in ((eco, eco_connector(eco, session)), (crm, crm_connector(crm, session, 30))):
        server.date_offset = offset
        server.clock = TickingClock(T0, MS)
        server.seed("contacts", spread(people(server, 150, "b"), T0 - timedelta(seconds=60), 100 * MS))
        # Stamped up to a minute after the server's present: past any Date-based horizon.
        ahead = spread(people(server, 3, "ahead"), T0 + timedelta(seconds=1), timedelta(seconds=30))
        server.seed("contacts", ahead)

        first = await read_pass(connector, "contacts", page_size=connector.page_size)
        assert len({rid for rid, _, _ in first}) == 153
        assert unread(server, "contacts", first, upto=T0 + timedelta(days=1)) == []

        newest = max(at for _, at, _ in first)
        [edited] = [r["id"] for r in server.records("contacts") if r[name_field(server)] == "Person b7"]
        server.edit(
            "contacts", edited, **{name_field(server): "edited", "updatedAt": format_timestamp(newest + MS)}
        )
        second = await read_pass(
            connector, "contacts", since=newest - timedelta(seconds=2), page_size=connector.page_size
        )
        assert edited in {rid for rid, _, _ in second}


def name_field(server: SandboxServer) -> str:
    return "name" if isinstance(server, EcosireSandbox) else "fullName"


@pytest.mark.parametrize(("eco_offset", "crm_offset"), [(300, -300), (-300, 300)])
async def test_servers_minutes_apart_sync_every_change_in_the_next_pass(
    env: dict[str, str], eco: HookedEcosire, crm: HookedCrm, eco_offset: int, crm_offset: int
) -> None:
    """ECOSIRE five minutes ahead of us and the CRM five behind (and the other way round): bulk
    records (one stamp each side), then edits on both sides just before a pass; that very pass
    carries them all, and the one after writes nothing (invariants 3 and 4)."""
    start = datetime.now(UTC).replace(microsecond=0)
    eco.clock, crm.clock = TickingClock(start, MS), TickingClock(start, MS)
    eco.clock_offset, crm.clock_offset = eco_offset, crm_offset
    eco.seed("contacts", eco_people(120))
    crm.seed("contacts", crm_people(80))
    crm_own = ids(crm, "contacts")

    async with app_with(CRM_PAGE_SIZE="25") as app:
        first = await app.engine.sync_pass(app.entities)
        assert first.counts.created == {"crm": 120, "ecosire": 80}
        converged(eco, crm)

        for n, rid in enumerate(ids(eco, "contacts")[:10]):
            eco.edit("contacts", rid, name=f"Eco edit {n}")
        for n, rid in enumerate(crm_own[:10]):
            crm.edit("contacts", rid, fullName=f"Crm edit {n}")
        second = await app.engine.sync_pass(app.entities)
        assert second.counts.updated == {"crm": 10, "ecosire": 10}
        names = converged(eco, crm)
        assert sum(name.startswith(("Eco edit", "Crm edit")) for name in names.values()) == 20

        assert (await app.engine.sync_pass(app.entities)).counts.writes == 0


# --- a block that never settles, through the engine -----------------------------------------------


async def test_a_pass_whose_block_never_settles_ends_and_the_next_loses_nothing(
    env: dict[str, str], eco: HookedEcosire, crm: HookedCrm
) -> None:
    """A user edits the bulk-stamped block after every page request for the whole pass: the
    ECOSIRE read gives up after its sweeps with a clear error in the log, its cursor stays before
    the block, the CRM side and the merge carry on, and the next pass syncs everything."""
    bulk = T0 - timedelta(minutes=30)
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(bulk)} for r in eco_people(300)])
    crm.seed("contacts", spread(crm_people(20), bulk, timedelta(seconds=1)))
    eco.clock, crm.clock = TickingClock(T0, MS), TickingClock(T0, MS)
    eco.after_page = Editor(eco, "contacts", "name", lambda: ids(eco, "contacts", bulk))

    async with app_with() as app:
        with capture_logs() as logs:
            first = await app.engine.sync_pass(app.entities)
        eco.after_page = None
        assert first.status == "ok"
        [stopped] = [e for e in logs if e["event"] == "paging_stopped"]
        assert stopped["side"] == "ecosire" and stopped["log_level"] == "error"
        assert "kept changing while read by page number" in stopped["error"]
        assert await cursor(app, Side.ECOSIRE) <= bulk
        assert first.counts.created["ecosire"] == 20

        second = await app.engine.sync_pass(app.entities)
        assert second.status == "ok"
        names = converged(eco, crm)
        assert len(names) == 320
        assert (await app.engine.sync_pass(app.entities)).counts.writes == 0


async def test_bulk_imports_on_both_sides_edited_while_paged_all_sync(
    env: dict[str, str], eco: HookedEcosire, crm: HookedCrm
) -> None:
    """2,500 ECOSIRE contacts share one stamp (page size 100) and 1,000 CRM contacts another (the
    CRM's page size 70): both blocks are stepped by page number while users edit block members on
    both sides. The first pass syncs every record in its edited version (invariant 3); the next
    writes nothing (invariant 4)."""
    bulk = T0 - timedelta(minutes=30)
    eco.seed("contacts", [{**r, "updatedAt": format_timestamp(bulk)} for r in eco_people(2500)])
    crm.seed("contacts", [{**r, "updatedAt": format_timestamp(bulk)} for r in crm_people(1000)])
    eco.clock, crm.clock = TickingClock(T0, MS), TickingClock(T0, MS)
    eco.after_page = eco_edits = Editor(
        eco, "contacts", "name", lambda: ids(eco, "contacts", bulk), per_page=2, pages=20
    )
    crm.after_page = crm_edits = Editor(
        crm, "contacts", "fullName", lambda: ids(crm, "contacts", bulk), per_page=2, pages=10
    )

    async with app_with(CRM_PAGE_SIZE="70") as app:
        first = await app.engine.sync_pass(app.entities)
        eco.after_page = crm.after_page = None
        assert first.counts.created == {"crm": 2500, "ecosire": 1000}
        names = converged(eco, crm)
        assert (
            sum(name.startswith("edited") for name in names.values())
            == len(eco_edits.edited) + len(crm_edits.edited)
            == 60
        )
        assert delta_limits(crm) == {"70"}
        assert (await app.engine.sync_pass(app.entities)).counts.writes == 0


# --- property: stamps skewed from the Date header, late commits in the overlap ------------------

_example = iter(range(1, 1_000_000))
skews = st.integers(min_value=-600, max_value=600)  # seconds the Date header runs ahead of stamps


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    # The examples share servers and a database: shrinking would replay against a changed world.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    eco_skew=skews,
    crm_skew=skews,
    new=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    edits=st.tuples(st.sets(st.integers(0, 5), max_size=4), st.sets(st.integers(0, 5), max_size=4)),
    # Late commits per side, each stamped this many ms before the newest stamp read (0: the very
    # stamp), within the default 2 s overlap.
    late=st.tuples(st.lists(st.integers(0, 2000), max_size=3), st.lists(st.integers(0, 2000), max_size=3)),
)
async def test_skewed_date_headers_and_late_commits_lose_nothing_and_write_once(
    app: App,
    eco: HookedEcosire,
    crm: HookedCrm,
    eco_skew: int,
    crm_skew: int,
    new: tuple[int, int],
    edits: tuple[set[int], set[int]],
    late: tuple[list[int], list[int]],
) -> None:
    """Any skew of -10 to +10 minutes between each server's Date header and its records' stamps:
    every record and every edit made after a pass is synced by the next pass, late commits up to
    the overlap before the newest stamp read included; each change costs exactly one write (a
    re-read in the overlap never becomes a second one), and the pass after writes nothing. The
    fixtures are shared by the examples: each has its own records and emails."""
    n = next(_example)
    for server in (eco, crm):
        if not isinstance(server.clock, TickingClock):
            server.clock = TickingClock(T0, MS)
    eco.date_offset, crm.date_offset = eco_skew, crm_skew
    eco_new = eco.seed("contacts", eco_people(new[0], f"e{n}x"))
    # The type ECOSIRE gives a contact by default, so that a create writes nothing back.
    crm_new = crm.seed("contacts", crm_people(new[1], f"c{n}x", accountType="person"))
    first = await app.engine.sync_pass(app.entities)
    assert first.counts.created == {"crm": new[0], "ecosire": new[1]}
    assert first.counts.updated == {}

    for i in sorted(edits[0]):
        if i < len(eco_new):
            eco.edit("contacts", eco_new[i]["id"], name=f"edited e{n}.{i}")
    for i in sorted(edits[1]):
        if i < len(crm_new):
            crm.edit("contacts", crm_new[i]["id"], fullName=f"edited c{n}.{i}")
    newest = {side: await cursor(app, side) for side in Side}
    for k, ms in enumerate(late[0]):
        stamp_at = format_timestamp(newest[Side.ECOSIRE] - ms * MS)
        eco.seed("contacts", [{**eco_people(1, f"e{n}late{k}.")[0], "updatedAt": stamp_at}])
    for k, ms in enumerate(late[1]):
        stamp_at = format_timestamp(newest[Side.CRM] - ms * MS)
        crm.seed(
            "contacts", [{**crm_people(1, f"c{n}late{k}.", accountType="person")[0], "updatedAt": stamp_at}]
        )

    second = await app.engine.sync_pass(app.entities)
    assert second.status == "ok"
    assert second.counts.created["crm"] == len(late[0])
    assert second.counts.created["ecosire"] == len(late[1])
    assert second.counts.updated["crm"] == len([i for i in edits[0] if i < new[0]])
    assert second.counts.updated["ecosire"] == len([i for i in edits[1] if i < new[1]])
    names = converged(eco, crm)
    edited = {
        name
        for name in names.values()
        if name.startswith(f"edited e{n}.") or name.startswith(f"edited c{n}.")
    }
    assert len(edited) == len([i for i in edits[0] if i < new[0]]) + len([i for i in edits[1] if i < new[1]])

    quiet = await app.engine.sync_pass(app.entities)
    assert quiet.counts.writes == 0


async def test_a_dense_overlap_window_is_read_again_until_it_settles_then_quiet_passes_cost_one_list(
    env: dict[str, str], eco: HookedEcosire, crm: HookedCrm
) -> None:
    """A burst (250 records stamped within a second) fills the overlap window before the newest
    stamp: passes re-read it whole, late commits included, until a complete read has done so at
    least the overlap after the newest stamp was read; from then on a quiet pass costs one list
    request a side, and a new record opens a new window."""
    eco.clock, crm.clock = TickingClock(T0, MS), TickingClock(T0, MS)
    eco.seed("contacts", spread(eco_people(250), T0 - timedelta(hours=1), 4 * MS))

    def eco_lists() -> int:
        return len(
            [q for resource, q in eco.lists if resource == "contacts" and q.get("sortBy") == "updatedAt"]
        )

    async with app_with(CRMSYNCD_OVERLAP="60") as app:
        first = await app.engine.sync_pass(app.entities)
        assert first.counts.created == {"crm": 250}
        newest = await cursor(app, Side.ECOSIRE)

        before = eco_lists()
        eco.seed(
            "contacts", [{**eco_people(1, "late")[0], "updatedAt": format_timestamp(newest - 30_000 * MS)}]
        )
        second = await app.engine.sync_pass(app.entities)
        assert eco_lists() - before == 3  # the whole window, 251 records at 100 a page
        assert second.counts.created == {"crm": 1}

        # The next pass a few minutes later, as the daemon's interval has it.
        await app.pool.execute("UPDATE sync_cursor SET saved_at = saved_at - interval '5 minutes'")
        before = eco_lists()
        third = await app.engine.sync_pass(app.entities)
        assert eco_lists() - before == 3 and third.counts.writes == 0  # read whole once more: settled
        for _ in range(2):
            before = eco_lists()
            quiet = await app.engine.sync_pass(app.entities)
            assert eco_lists() - before == 1 and quiet.counts.writes == 0

        # A new record moves the cursor: its window is read again by the next pass.
        eco.seed("contacts", eco_people(1, "new"))
        assert (await app.engine.sync_pass(app.entities)).counts.created == {"crm": 1}
        eco.seed(
            "contacts",
            [{**eco_people(1, "late2")[0], "updatedAt": format_timestamp(eco.now() - 10_000 * MS)}],
        )
        assert (await app.engine.sync_pass(app.entities)).counts.created == {"crm": 1}
        converged(eco, crm)
