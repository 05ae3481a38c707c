"""`/`: a read-only status page, rendered on the server as plain HTML (no script, no build step).
Every value shown is escaped: record names, API messages and reasons are other people's text.
It refreshes itself every few seconds with a meta tag, so a pass in flight is seen moving."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crmsyncd.observability.progress import describe
from crmsyncd.store.fingerprints import FingerprintStore
from crmsyncd.store.locks import lock_holders

if TYPE_CHECKING:
    from crmsyncd.app import App

REFRESH_SECONDS = 5
_ROWS = 50  # rows shown per table of the retry queue
_REASON_CHARS = 500

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .bad { color: #a00; } .ok { color: #070; } .muted { color: #777; }
"""


def _e(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.isoformat(timespec="seconds")
    elif isinstance(value, float):
        value = f"{value:.1f}"
    elif isinstance(value, dict | list):
        value = json.dumps(value, default=str, sort_keys=True)
    return html.escape(str(value), quote=True)


def _table(section: str, headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> str:
    body = ["<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    if not body:
        return f'<p class="muted" id="{section}-empty">{_e(empty)}</p>'
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"
    return f'<table id="{section}">{head}{"".join(body)}</table>'


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= _REASON_CHARS:
        return text
    return text[:_REASON_CHARS] + "..."


async def render_status(app: App, *, ready: tuple[bool, str]) -> str:
    engine = app.engine
    runs = await engine.runs.recent(20)
    lags = await engine.cursors.lags()
    pairs = await engine.pairs.counts()
    pending = await engine.errors.latest("pending", _ROWS)
    dead = await engine.errors.latest("dead", _ROWS)
    backfills = await FingerprintStore(app.pool).backfills()
    locks = await lock_holders(app.pool, [e.name for e in app.entities])
    queue = await engine.errors.counts()
    live = engine.live

    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>crmsyncd status</title><style>{_STYLE}</style></head><body>",
        "<h1>crmsyncd</h1>",
        f'<p id="readiness" class="{"ok" if ready[0] else "bad"}">'
        f"{'ready' if ready[0] else 'not ready'}: {_e(ready[1])}</p>",
        '<h2>Pass in flight</h2><div id="progress">',
    ]
    if live is None:
        parts.append('<p class="muted">no pass running</p>')
    else:
        progress = live.progress()
        parts.append(f"<p>{_e(describe(progress))}</p>")
        parts.append(
            _table(
                "progress-sides",
                ("entity", "side", "read", "total", "written"),
                ((s.entity, s.side, s.read, s.total, s.written) for s in progress.sides),
                "nothing read yet",
            )
        )
    parts.append("</div><h2>Last passes</h2>")
    parts.append(
        _table(
            "passes",
            ("id", "kind", "status", "started", "seconds", "writes", "parked", "requests", "error"),
            (
                (
                    r["id"],
                    r["kind"],
                    r["status"] or "running",
                    r["started_at"],
                    r["seconds"],
                    (r["counts"] or {}).get("writes"),
                    (r["counts"] or {}).get("parked"),
                    r["requests"],
                    _short(r["error"]),
                )
                for r in runs
            ),
            "no pass yet",
        )
    )
    parts.append("<h2>Cursors</h2>")
    parts.append(
        _table(
            "cursors",
            ("entity", "side", "newest stamp read", "record id", "lag (s)", "saved (s ago)"),
            ((r["entity"], r["side"], r["updated_at"], r["record_id"], r["lag"], r["age"]) for r in lags),
            "nothing read yet",
        )
    )
    parts.append("<h2>Entity locks</h2>")
    parts.append(
        _table(
            "locks",
            ("entity", "held by database session"),
            ((e.name, locks.get(e.name, "free")) for e in app.entities),
            "no entity",
        )
    )
    parts.append("<h2>Mapped records</h2>")
    parts.append(
        _table(
            "pairs",
            ("entity", "linked", "unlinked", "pending", "parked", "deleted"),
            (
                (p["entity"], p["linked"], p["unlinked"], p["pending"], p["parked"], p["deleted"])
                for p in pairs
            ),
            "no record mapped yet",
        )
    )
    error_headers = ("id", "entity", "side", "record id", "class", "attempts", "next attempt", "reason")

    def error_rows(rows: Iterable[Any]) -> Iterable[Sequence[Any]]:
        return (
            (
                r["id"],
                r["entity"],
                r["side"],
                r["record_id"],
                r["error_class"],
                r["attempts"],
                r["next_attempt_at"],
                _short(r["reason"]),
            )
            for r in rows
        )

    parts.append(f"<h2>Retry queue ({queue['pending']} pending)</h2>")
    parts.append(_table("retry-queue", error_headers, error_rows(pending), "nothing parked"))
    parts.append(f"<h2>Dead letters ({queue['dead']})</h2>")
    parts.append(_table("dead-letters", error_headers, error_rows(dead), "no dead letter"))
    parts.append("<h2>Backfills</h2>")
    parts.append(
        _table(
            "backfills",
            ("entity", "kind", "fields", "run", "started", "finished", "progress"),
            (
                (b.entity, b.kind, ", ".join(b.fields), b.run_id, b.started_at, b.finished_at, b.progress)
                for b in backfills
            ),
            "no backfill",
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)
