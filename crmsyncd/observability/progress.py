"""Progress of a long pass, two ways over the same live figures (engine/live.py): a log line at
every interval while it runs, and for `sync --once` in a terminal, a bar on stderr redrawn in
place (log lines written meanwhile clear it first, so the two never mix on one line)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from crmsyncd.engine.live import LivePass, Progress
from crmsyncd.observability.logging import get_logger

log = get_logger()

# Seconds between two redraws of the terminal bar: smooth to a reader, a few writes a second.
BAR_REFRESH = 0.25
_CLEAR = "\r\x1b[K"  # back to the line's start, erase to its end
_BAR_WIDTH = 20


async def progress_lines(live: LivePass, interval: float) -> None:
    """Log `<kind>_progress` every `interval` seconds until cancelled (when the pass ends): a
    pass shorter than one interval logs none."""
    while True:
        await asyncio.sleep(interval)
        progress = live.progress()
        log.info(f"{progress.kind}_progress", **progress.as_dict())


def describe(progress: Progress, entity: str | None = None) -> str:
    """The figures in one line of text (the status page's summary; the bar's, for `entity`)."""
    parts = [f"{progress.kind} #{progress.run_id}"]
    for s in progress.sides:
        if entity is None or s.entity == entity:
            total = "?" if s.total is None else str(s.total)
            parts.append(f"{s.entity} {s.side} read {s.read}/{total} written {s.written}")
    parts.append(f"{progress.rate:.1f} rec/s")
    parts.append("ETA " + ("?" if progress.eta is None else f"{progress.eta:.0f}s"))
    return "  ".join(parts)


def bar_text(progress: Progress, width: int) -> str:
    """The entity in flight (or the last one begun): a gauge of its read where its feeds gave
    totals, and its figures; cut to the terminal's width, since a wrapped line cannot be
    redrawn in place."""
    entity = progress.entity or (progress.sides[-1].entity if progress.sides else None)
    current = [s for s in progress.sides if s.entity == entity]
    totals = [s.total for s in current]
    if current and all(t is not None for t in totals) and sum(t or 0 for t in totals) > 0:
        share = min(sum(s.read for s in current) / sum(t or 0 for t in totals), 1.0)
        filled = round(share * _BAR_WIDTH)
        gauge = f"[{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {share:4.0%} "
    else:
        gauge = ""
    return (gauge + describe(progress, entity))[: max(width - 1, 10)]


class TerminalBar:
    """stderr for the log while a bar is shown: a write erases the bar first and, once its line
    is complete, draws it again below. `run` redraws it from the pass in flight until cancelled.
    (print() writes a line and its newline in two calls: the bar waits for the newline.)"""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.shown = ""  # the bar's text, "" when none
        self.visible = False  # the bar is what the cursor's line holds now
        self.midline = False  # a log line was begun and not ended

    def write(self, text: str) -> int:
        if self.visible:
            self.out.write(_CLEAR)
            self.visible = False
        written = self.out.write(text)
        self.midline = not text.endswith("\n") if text else self.midline
        if self.shown and not self.midline:
            self.out.write(self.shown)
            self.visible = True
        self.out.flush()
        return written

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return True

    def columns(self) -> int:
        try:
            columns = os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        return columns or 80  # a terminal that says 0 (a fresh pty) gets the classic width

    def draw(self, text: str) -> None:
        self.shown = text
        if self.midline:  # never over a log line being written
            return
        self.out.write(_CLEAR + text)
        self.visible = True
        self.out.flush()

    def clear(self) -> None:
        if self.visible:
            self.out.write(_CLEAR)
            self.out.flush()
        self.shown = ""
        self.visible = False

    async def run(self, source: Callable[[], LivePass | None]) -> None:
        while True:
            live = source()
            if live is not None:
                self.draw(bar_text(live.progress(), self.columns()))
            await asyncio.sleep(BAR_REFRESH)


@contextlib.asynccontextmanager
async def terminal_bar(bar: TerminalBar | None, source: Callable[[], LivePass | None]) -> AsyncIterator[None]:
    """Show `bar` (None: no terminal, nothing shown) while the block runs; erased at its end."""
    if bar is None:
        yield
        return
    task = asyncio.create_task(bar.run(source))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bar.clear()
