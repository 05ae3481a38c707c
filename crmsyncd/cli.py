"""Command line: the daemon, one-off passes, the state and the retry queue, the demo, the sandbox.

Exit codes: 0 done; 1 a fatal error (credentials refused, no database); 2 bad configuration or
usage; 141 the reader of the output closed it early (`| head`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO, cast

import orjson

from crmsyncd.app import (
    DatabaseUnavailable,
    accept_resource,
    build_connectors,
    configured_mapping,
    configured_secrets,
    load_app_mapping,
    open_app,
    open_database,
    rebind_systems,
)
from crmsyncd.config import ConfigError, Settings, load_settings
from crmsyncd.connectors.base import ConnectorError
from crmsyncd.connectors.http import make_session
from crmsyncd.domain.fieldcheck import mapped_fields
from crmsyncd.domain.mapping import MappingError
from crmsyncd.domain.records import Side
from crmsyncd.engine.backfill import MappingStateChanged, RereadOutcome, orphan_warnings, rename_entity
from crmsyncd.engine.fieldcheck import check_mapping
from crmsyncd.engine.passes import PassReport
from crmsyncd.observability.logging import configure_logging
from crmsyncd.observability.progress import TerminalBar, terminal_bar
from crmsyncd.store.cursors import CursorStore
from crmsyncd.store.errors import Backoff, ErrorStore
from crmsyncd.store.fieldseen import FieldCheck, FieldCheckStore
from crmsyncd.store.fingerprints import Backfill, FingerprintStore
from crmsyncd.store.identity import IdentityStore, SystemsChanged
from crmsyncd.store.pairs import PairStore
from crmsyncd.store.runs import RunStore, prune_history

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2
# What a shell reports for a command whose reader went away (128 + SIGPIPE, as `yes | head`), so
# that a script tells a truncated listing from a fatal error; Python's own default would be 1.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crmsyncd",
        description="Keep contacts and deals in step between ECOSIRE and a CRM, both ways. "
        "Configured by environment variables (see the README); state in PostgreSQL.",
        epilog="Exit codes: 0 done, 1 fatal error (credentials refused, no database), "
        "2 bad configuration or usage, 141 the output's reader closed it early.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="the daemon: migrate, sync every CRMSYNCD_SYNC_INTERVAL, retry parked records")
    sync = sub.add_parser("sync", help="one pass of both directions, then exit")
    sync.add_argument("--once", action="store_true", required=True, help="run one pass and exit (required)")
    sync.add_argument(
        "--entity", action="append", help="only this entity (repeatable); default CRMSYNCD_ENTITIES"
    )
    retry = sub.add_parser("retry", help="retry parked records whose time has come, then exit")
    retry.add_argument(
        "--once", action="store_true", required=True, help="one retry pass and exit (required)"
    )
    retry.add_argument("--all", action="store_true", help="retry every pending record, due or not")
    reconcile = sub.add_parser(
        "reconcile", help="list both sides in full to find deleted records, apply the delete policy, exit"
    )
    reconcile.add_argument("--once", action="store_true", required=True, help="one sweep and exit (required)")
    reconcile.add_argument("--entity", action="append", help="only this entity (repeatable)")
    resync = sub.add_parser(
        "resync",
        help="read both sides in full, ignoring the cursors, and merge every field anew; writes only "
        "real differences",
    )
    resync.add_argument(
        "--entity", action="append", help="only this entity (repeatable); default CRMSYNCD_ENTITIES"
    )
    resync.add_argument("--json", action="store_true", help="a machine-readable summary")
    status = sub.add_parser("status", help="cursors, mapped pairs, queue counts and the last pass")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    errors = sub.add_parser("errors", help="the retry queue")
    errors_sub = errors.add_subparsers(dest="errors_command", required=True, metavar="ACTION")
    listing = errors_sub.add_parser("list", help="open rows of the retry queue")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--dead", action="store_true", help="only rows past the attempt limit")
    replay = errors_sub.add_parser("replay", help="retry rows now with a fresh attempt budget")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=int, help="the row's id (see errors list)")
    target.add_argument("--all", action="store_true", help="every open row, dead ones included")
    sub.add_parser("migrate", help="apply the database migrations, then exit")
    prune = sub.add_parser(
        "prune", help="delete passes and resolved error rows older than CRMSYNCD_HISTORY_DAYS, then exit"
    )
    prune.add_argument("--json", action="store_true", help="machine-readable output")
    state = sub.add_parser("state", help="the systems the state belongs to")
    state_sub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    state_sub.add_parser(
        "rebind",
        help="record the configured ECOSIRE and CRM as the state's systems (after a move of the "
        "same systems to a new URL; other systems need a fresh database)",
    )
    rename = state_sub.add_parser(
        "rename-entity", help="carry an entity's state over to its new name in the mapping"
    )
    rename.add_argument("old", help="the name the state is stored under")
    rename.add_argument("new", help="the entity's name in the mapping now")
    forget = state_sub.add_parser(
        "forget-entity",
        help="delete an entity's pairs, cursors, error rows and fingerprint (its records are then "
        "matched afresh by match key)",
    )
    forget.add_argument("name")
    accept = state_sub.add_parser(
        "accept-resource",
        help="take an entity's resources as now configured as its own (the same records moved)",
    )
    accept.add_argument("name")
    demo = sub.add_parser(
        "demo", help="embedded PostgreSQL and both sandbox APIs in process, seeded; sync and report"
    )
    demo.add_argument("--contacts", type=int, default=300, help="contacts per side (default 300)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the data set")
    demo.add_argument(
        "--rate-limit",
        type=int,
        default=3000,
        help="ECOSIRE requests per minute in the sandbox (the real API allows 60)",
    )
    demo.add_argument(
        "--crm",
        choices=("rest", "hubspot"),
        default="rest",
        help="the CRM sandbox: rest (default) or hubspot (at HubSpot's limits)",
    )
    mapping = sub.add_parser("mapping", help="the mapping file against the APIs")
    mapping_sub = mapping.add_subparsers(dest="mapping_command", required=True, metavar="ACTION")
    check = mapping_sub.add_parser(
        "check",
        help="read one page of each side per entity; report unknown fields, wrong types and fields "
        "mapped twice (exit 1 if any)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--entity", action="append", help="only this entity (repeatable)")
    sandbox = sub.add_parser("sandbox", help="serve fake ECOSIRE and CRM APIs on loopback for manual tries")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--ecosire-port", type=int, default=8081)
    sandbox.add_argument("--crm-port", type=int, default=8082)
    sandbox.add_argument("--seed-demo", action="store_true", help="load the demo data set")
    sandbox.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        help="ECOSIRE requests per minute in the sandbox (default: 60, as the real API allows)",
    )
    sandbox.add_argument(
        "--crm",
        choices=("rest", "hubspot"),
        default="rest",
        help="rest (default): ECOSIRE and the REST CRM; hubspot: a fake HubSpot CRM v3 account alone",
    )
    sandbox.add_argument("--port", type=int, default=8083, help="the HubSpot sandbox's port (0: a free one)")
    hubspot = sub.add_parser("hubspot", help="HubSpot chores (needs only the HUBSPOT_* variables)")
    hubspot_sub = hubspot.add_subparsers(dest="hubspot_command", required=True, metavar="ACTION")
    hubspot_setup = hubspot_sub.add_parser(
        "setup", help="create the custom contact properties ecosire_type and ecosire_tags (idempotent)"
    )
    hubspot_setup.add_argument(
        "--tags", default="", help="comma-separated tags in use: the options of ecosire_tags (a checkbox)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """A reader that closes the pipe early (`crmsyncd errors list | head`) ends the output
    quietly, for every command: no traceback, exit code 141."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # here, inside the guard, rather than at the interpreter's exit
    except BrokenPipeError:
        # Whatever is still buffered goes nowhere, so the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"crmsyncd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format, configured_secrets(settings))
    command: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]] = COMMANDS[args.command]
    try:
        return asyncio.run(command(args, settings))
    except (ConfigError, MappingError, SystemsChanged, MappingStateChanged) as exc:
        print(f"crmsyncd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DatabaseUnavailable as exc:
        print(f"crmsyncd: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        return 130


def _report_exit(report: PassReport) -> int:
    if report.status in ("ok", "stopped"):
        return EXIT_OK
    print(f"crmsyncd: {report.kind} pass {report.status}: {report.error}", file=sys.stderr)
    return EXIT_FATAL


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from crmsyncd.daemon import run_daemon

    return await run_daemon(settings)


async def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    # In a terminal, a progress bar on stderr; the log goes through it so the two never mix.
    bar = TerminalBar(sys.stderr) if sys.stderr.isatty() else None
    if bar is not None:
        configure_logging(
            settings.log_level, settings.log_format, configured_secrets(settings), stream=cast(TextIO, bar)
        )
    async with open_app(settings) as app, terminal_bar(bar, lambda: app.engine.live):
        report = await app.engine.sync_pass(app.select(args.entity))
    return _report_exit(report)


async def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    async with open_app(settings) as app:
        report = await app.engine.retry_pass(app.entities, include_not_due=args.all)
    return _report_exit(report)


async def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    async with open_app(settings) as app:
        report = await app.engine.reconcile_pass(app.select(args.entity))
    return _report_exit(report)


async def cmd_resync(args: argparse.Namespace, settings: Settings) -> int:
    async with open_app(settings) as app:
        entities = app.select(args.entity)
        report, outcomes = await app.engine.resync_pass(entities)
    counts = report.counts.as_dict()
    complete = len(outcomes) == len(entities) and all(o.complete for o in outcomes)
    if args.json:
        doc = {
            "run": report.run_id,
            "status": report.status,
            "complete": complete,
            "entities": [o.entity for o in outcomes],
            "read": counts["seen"],
            **{k: counts[k] for k in ("created", "updated", "writes", "parked", "conflicts", "staged")},
            "per_entity": [_outcome_row(o) for o in outcomes],
            "error": report.error,
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    for o in outcomes if not args.json else ():
        fields = f", {', '.join(o.fields)} merged as on a first link" if o.fields else ""
        print(
            f"resync {o.entity}: read {_by_side(dict(o.read))}, wrote {_by_side(o.written)}"
            f"{fields}: {'complete' if o.complete else 'INCOMPLETE, run it again'}"
        )
    if report.status == "ok" and not complete:
        done = {o.entity for o in outcomes if o.complete}
        left = ", ".join(e.name for e in entities if e.name not in done)
        print(f"crmsyncd: resync incomplete for {left} (see the log); run it again", file=sys.stderr)
        return EXIT_FATAL
    return _report_exit(report)


def _outcome_row(o: RereadOutcome) -> dict[str, Any]:
    return {"entity": o.entity, "fields": list(o.fields), "complete": o.complete, **o.progress()}


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from crmsyncd.store.migrate import migrate

    async with open_database(settings, apply_migrations=False) as pool:
        applied = await migrate(pool)
    print(f"migrations applied: {applied or 'none, the schema is current'}")
    return EXIT_OK


async def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    async with open_database(settings) as pool:
        pruned = await prune_history(pool, settings.history_days)
    if args.json:
        print(orjson.dumps({"days": pruned.days, "runs": pruned.runs, "errors": pruned.errors}).decode())
    else:
        print(
            f"removed {pruned.runs} pass(es) and {pruned.errors} resolved error row(s) older than "
            f"{pruned.days} days (CRMSYNCD_HISTORY_DAYS); open error rows and the last pass of "
            "each kind are kept"
        )
    return EXIT_OK


def _cursor_rows(entities: Sequence[str], cursors: Sequence[Any]) -> list[dict[str, Any]]:
    """Every configured entity and side, in order (a side with no record read yet has no position:
    cursors are placed on record stamps only), then any other entity the database still holds."""
    stored = {(c["entity"], c["side"]): c for c in cursors}
    names = [*entities, *sorted({entity for entity, _ in stored} - set(entities))]
    rows = []
    for entity in names:
        for side in Side:
            c = stored.get((entity, side.value))
            rows.append(
                {
                    "entity": entity,
                    "side": side.value,
                    "updated_at": c["updated_at"].isoformat() if c else None,
                    "record_id": c["record_id"] if c else None,
                }
            )
    return rows


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async with open_database(settings) as pool:
        cursors = await CursorStore(pool).all()
        pairs = await PairStore(pool).counts()
        queue = await ErrorStore(pool, Backoff()).counts()
        last = await RunStore(pool).last("sync")
        systems = await IdentityStore(pool).recorded()
        field_checks = await FieldCheckStore(pool).all()
        backfills = await FingerprintStore(pool).backfills()
        mapping_warnings = await _mapping_warnings(pool, settings)
    doc: dict[str, Any] = {
        "systems": {
            side.value: None
            if side not in systems
            else {
                "kind": systems[side].identity.kind,
                "base_url": systems[side].identity.base_url,
                "account": systems[side].identity.account,
                "recorded_at": systems[side].recorded_at.isoformat(),
            }
            for side in Side
        },
        "cursors": _cursor_rows(settings.entities, cursors),
        "field_checks": _field_check_rows(settings, field_checks),
        "backfills": [_backfill_row(b) for b in backfills],
        "mapping_warnings": mapping_warnings,
        "pairs": [dict(p) for p in pairs],
        "errors": queue,
        "last_pass": None
        if last is None
        else {
            "id": last["id"],
            "status": last["status"],
            "started_at": last["started_at"].isoformat(),
            "finished_at": last["finished_at"].isoformat() if last["finished_at"] else None,
            "counts": last["counts"],
            "requests": last["requests"],
            "error": last["error"],
        },
    }
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    print("systems:")
    for side in Side:
        recorded = systems.get(side)
        where = (
            f"{recorded.identity.describe()}  (since {recorded.recorded_at.isoformat()})"
            if recorded
            else "none recorded yet (the first start that syncs records it)"
        )
        print(f"  {side.value:<8} {where}")
    print("mapped records:")
    for p in doc["pairs"]:
        print(
            f"  {p['entity']:<10} linked {p['linked']:>7}  unlinked {p['unlinked']:>5}  "
            f"pending {p['pending']:>5}  parked {p['parked']:>5}"
        )
    print("cursors:")
    for c in doc["cursors"]:
        where = f"{c['updated_at']}  {c['record_id']}" if c["updated_at"] else "nothing read yet"
        print(f"  {c['entity']:<10} {c['side']:<8} {where}")
    print(f"retry queue: {queue['pending']} pending, {queue['dead']} dead, {queue['resolved']} resolved")
    lp = doc["last_pass"]
    print(
        "last pass: "
        + (
            "none yet"
            if lp is None
            else f"#{lp['id']} {lp['status']} at {lp['started_at']} requests {lp['requests']}"
        )
    )
    if lp is not None and lp["counts"]:
        counts = lp["counts"]
        print(
            f"  writes {counts.get('writes', 0)}: created {_by_side(counts.get('created'))}, "
            f"updated {_by_side(counts.get('updated'))}, of which reverted {_by_side(counts.get('reverted'))}"
        )
    _print_field_checks(doc["field_checks"])
    _print_backfills(doc["backfills"], mapping_warnings)
    return EXIT_OK


async def _mapping_warnings(pool: Any, settings: Settings) -> list[str]:
    try:
        return await orphan_warnings(pool, load_app_mapping(settings))
    except (MappingError, ConfigError):
        return []  # a mapping that cannot be read is reported by the commands that need it


def _backfill_row(b: Backfill) -> dict[str, Any]:
    return {
        "entity": b.entity,
        "kind": b.kind,
        "fields": list(b.fields),
        "state": "done" if b.finished_at else "in progress",
        "run": b.run_id,
        "started_at": b.started_at.isoformat(),
        "finished_at": b.finished_at.isoformat() if b.finished_at else None,
        "progress": b.progress,
    }


def _print_backfills(rows: Sequence[dict[str, Any]], warnings: Sequence[str]) -> None:
    """The last full re-read of each entity (a backfill after a mapping change, or a resync)."""
    for r in rows:
        progress = r["progress"]
        totals = progress.get("total", {})
        read = " ".join(
            f"{side} {n}" + (f"/{totals[side]}" if side in totals else "")
            for side, n in sorted(progress.get("read", {}).items())
        )
        what = ", ".join(r["fields"]) or "all fields"
        when = r["finished_at"] or f"started {r['started_at']}, run #{r['run']}"
        print(
            f"{r['kind']} {r['entity']} ({what}): {r['state']} at {when}; read {read or 'nothing yet'}, "
            f"wrote {_by_side(progress.get('written'))}"
        )
    for warning in warnings:
        print(f"warning: {warning}")


def _by_side(counter: dict[str, int] | None) -> str:
    """A per-side counter of the run history as `ecosire N crm M`; passes from before a counter
    existed have none."""
    return " ".join(f"{side} {n}" for side, n in sorted((counter or {}).items())) or "none"


def _field_check_rows(settings: Settings, checks: Sequence[FieldCheck]) -> list[dict[str, Any]]:
    """The stored field checks; `current` says whether the mapping still maps those fields (if it
    does not, the next pass checks again; None when the mapping cannot be read)."""
    try:
        mapping = load_app_mapping(settings)
    except MappingError:
        mapping = None
    rows = []
    for c in checks:
        current: bool | None = None
        if mapping is not None:
            try:
                current = mapped_fields(mapping.entity(c.entity), c.side) == c.fields
            except KeyError:
                current = False
        rows.append(
            {
                "entity": c.entity,
                "side": c.side.value,
                "unseen": list(c.unseen),
                "sampled": c.sampled,
                "fields": list(c.fields),
                "run": c.run_id,
                "checked_at": c.checked_at.isoformat(),
                "current": current,
            }
        )
    return rows


def _print_field_checks(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    print("mapped fields against what the APIs return (first records read):")
    for r in rows:
        where = f"  {r['entity']} {r['side']}: "
        if r["current"] is False:
            print(where + "the mapping changed since; checked again at the next pass")
        elif not r["unseen"]:
            print(where + f"all {len(r['fields'])} mapped fields returned ({r['sampled']} records read)")
        for name in r["unseen"] if r["current"] is not False else ():
            print(
                where + f"{name!r} was in none of the {r['sampled']} records read: a misspelling in "
                "the mapping? (`crmsyncd mapping check` reads a page of each side)"
            )


async def cmd_mapping(args: argparse.Namespace, settings: Settings) -> int:
    # The only action today: check. Duplicates are loaded, to be reported with the rest.
    mapping = configured_mapping(settings, allow_duplicates=True)
    entities = mapping.select(args.entity or settings.entities)
    settings.require_remotes()
    session = make_session(settings.http_timeout)
    try:
        report = await check_mapping(build_connectors(settings, session, mapping), entities)
    except ConnectorError as exc:
        print(f"crmsyncd: mapping check: {exc}", file=sys.stderr)
        return EXIT_FATAL
    finally:
        await session.close()
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(report.lines()))
    return EXIT_OK if report.ok else EXIT_FATAL


async def cmd_errors(args: argparse.Namespace, settings: Settings) -> int:
    if args.errors_command == "list":
        async with open_database(settings) as pool:
            rows = await ErrorStore(pool, Backoff()).list(dead_only=args.dead)
        items = [
            {
                "id": r["id"],
                "entity": r["entity"],
                "side": r["side"],
                "record_id": r["record_id"],
                "reason": r["reason"],
                "error_class": r["error_class"],
                "attempts": r["attempts"],
                "status": r["status"],
                "next_attempt_at": r["next_attempt_at"].isoformat(),
            }
            for r in rows
        ]
        if args.json:
            print(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
        elif not items:
            print("the retry queue is empty")
        else:
            print(f"{'id':>6}  {'entity':<9} {'side':<8} {'record':<38} {'tries':>5}  {'status':<8} reason")
            for i in items:
                print(
                    f"{i['id']:>6}  {i['entity']:<9} {i['side']:<8} {i['record_id']:<38} "
                    f"{i['attempts']:>5}  {i['status']:<8} {i['reason']}"
                )
        return EXIT_OK
    async with open_app(settings) as app:
        count = await app.engine.errors.replay(None if args.all else [args.id])
        if count == 0:
            print(f"crmsyncd: no open error row {'' if args.all else args.id}".rstrip(), file=sys.stderr)
            return EXIT_FATAL if not args.all else EXIT_OK
        report = await app.engine.retry_pass(app.entities)
    print(
        f"replayed {count} row(s): {report.counts.retried_ok} resolved, "
        f"{sum(report.counts.parked.values())} parked again"
    )
    return _report_exit(report)


async def cmd_state(args: argparse.Namespace, settings: Settings) -> int:
    if args.state_command != "rebind":
        return await _state_entity(args, settings)
    rebound = await rebind_systems(settings)
    print("the state now belongs to the configured systems:")
    for side, (replaced, recorded) in rebound.items():
        if replaced is None:
            change = "(none was recorded before)"
        elif replaced == recorded:
            change = "(unchanged)"
        else:
            change = f"replacing {replaced.describe()}"
        print(f"  {side.value:<8} {recorded.describe()}  {change}")
    return EXIT_OK


async def _state_entity(args: argparse.Namespace, settings: Settings) -> int:
    """rename-entity, forget-entity, accept-resource: what a start refused for a renamed entity
    or a moved resource points to (engine/backfill.py)."""
    if args.state_command == "accept-resource":
        accepted = await accept_resource(settings, args.name)
        if accepted is None:
            print(f"nothing is stored for entity {args.name!r}: nothing to accept")
            return EXIT_OK
        for side in Side:
            old, new = accepted[0][side], accepted[1][side]
            change = "(unchanged)" if old == new else f"(was {old!r})"
            print(f"{args.name} {side.value}: {new!r} {change}")
        return EXIT_OK
    async with open_database(settings) as pool:
        if args.state_command == "rename-entity":
            moved = await rename_entity(pool, load_app_mapping(settings), args.old, args.new)
            print(f"the state of {args.old!r} ({moved} records in the map) is now {args.new!r}'s")
        else:
            gone = await FingerprintStore(pool).forget_entity(args.name)
            print(f"forgot entity {args.name!r}: {gone} records in the map, its cursors and error rows")
    return EXIT_OK


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from crmsyncd.demo import run_demo

    return await run_demo(
        settings, contacts=args.contacts, seed=args.seed, rate_limit=args.rate_limit, crm_kind=args.crm
    )


async def cmd_sandbox(args: argparse.Namespace, settings: Settings) -> int:
    if args.crm == "hubspot":
        from crmsyncd.sandbox.hubspot import run_hubspot_sandbox

        await run_hubspot_sandbox(args.host, args.port, seed_demo=args.seed_demo)
        return EXIT_OK
    from crmsyncd.sandbox import run_sandbox

    await run_sandbox(
        args.host, args.ecosire_port, args.crm_port, args.seed_demo, ecosire_rate_limit=args.rate_limit
    )
    return EXIT_OK


async def cmd_hubspot(args: argparse.Namespace, settings: Settings) -> int:
    from crmsyncd.connectors.hubspot import load_hubspot_settings
    from crmsyncd.connectors.hubspot.client import HubSpotClient
    from crmsyncd.connectors.hubspot.setup import setup_properties

    hub = load_hubspot_settings(timeout=settings.http_timeout)
    session = make_session(settings.http_timeout)
    try:
        lines = await setup_properties(HubSpotClient(hub, session), args.tags.split(","))
    except ConnectorError as exc:
        print(f"crmsyncd: hubspot setup failed: {exc}", file=sys.stderr)
        return EXIT_FATAL
    finally:
        await session.close()
    for line in lines:
        print(line)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "run": cmd_run,
    "sync": cmd_sync,
    "retry": cmd_retry,
    "reconcile": cmd_reconcile,
    "resync": cmd_resync,
    "status": cmd_status,
    "errors": cmd_errors,
    "migrate": cmd_migrate,
    "prune": cmd_prune,
    "state": cmd_state,
    "demo": cmd_demo,
    "sandbox": cmd_sandbox,
    "mapping": cmd_mapping,
    "hubspot": cmd_hubspot,
}
