"""`crmsyncd run` as a subprocess whose JSON log lines (stderr) are read as they come.

A reader task drains stderr all the time (a full pipe would stall the daemon) and queues every
line as an event; a line that is not JSON (a traceback, APScheduler's plain warnings) becomes
`{"event": "(text)", "text": ...}` so that nothing the daemon says is lost to diagnostics.
Tests wait for events with deadlines (asyncio.wait_for on the queue), never with sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

Event = dict[str, Any]


def daemon_env(env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The process environment: ours without any crmsyncd variable, then the test's."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CRMSYNCD_", "ECOSIRE_", "CRM_"))}
    full["CRMSYNCD_HTTP_PORT"] = "0"  # any free port, unless the test's environment says one
    full.update(env)
    full.update(overrides)
    return full


class DaemonGone(AssertionError):
    """The daemon's stderr closed (it exited) while a test waited for an event."""


class Daemon:
    """One life of `crmsyncd run`: start, read events, kill -9 or stop."""

    def __init__(self, env: Mapping[str, str], life: int = 0, *, capture_stdout: bool = False) -> None:
        self.env = dict(env)
        self.life = life
        # Whatever the daemon writes on stdout (nothing, it logs on stderr), when asked for.
        self.capture_stdout = capture_stdout
        self.stdout = b""
        self.events: list[Event] = []
        self.started_at = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._out_reader: asyncio.Task[None] | None = None
        self._eof = False

    @property
    def proc(self) -> asyncio.subprocess.Process:
        assert self._proc is not None, "not started"
        return self._proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crmsyncd",
            "run",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if self.capture_stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        self.started_at = time.monotonic()
        self._reader = asyncio.create_task(self._read())
        if self.capture_stdout:
            self._out_reader = asyncio.create_task(self._read_stdout())

    async def _read_stdout(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        while chunk := await stream.read(65536):
            self.stdout += chunk

    async def _read(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        try:
            while line := await stream.readline():
                text = line.decode("utf-8", errors="replace").rstrip("\n")
                event: Event
                try:
                    parsed = orjson.loads(text) if text.startswith("{") else None
                except orjson.JSONDecodeError:
                    parsed = None
                event = parsed if isinstance(parsed, dict) else {"event": "(text)", "text": text}
                event["_life"] = self.life
                self.events.append(event)
                self._queue.put_nowait(event)
        finally:
            self._queue.put_nowait(None)

    async def next_event(self, wanted: Callable[[Event], bool], within: float) -> Event:
        """The next event (from now on) that `wanted` accepts; DaemonGone if the daemon ends
        first, TimeoutError after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            if self._eof:
                raise DaemonGone(f"life {self.life}: the daemon exited ({self.proc.returncode})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            event = await asyncio.wait_for(self._queue.get(), remaining)
            if event is None:
                self._eof = True
                continue
            if wanted(event):
                return event

    async def next_named(self, name: str, within: float) -> Event:
        return await self.next_event(lambda e: e.get("event") == name, within)

    async def live_until(self, deadline: float) -> bool:
        """Let the daemon run until `deadline` (monotonic). False if it exited by itself."""
        remaining = deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), remaining)
        return self.running

    async def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed."""
        if self.running:
            self.proc.kill()
        await self.proc.wait()
        await self._drain()

    async def stop(self, grace: float = 30) -> int:
        """SIGTERM and wait; kill -9 if it does not stop in time."""
        if self.running:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._drain()
        code = self.proc.returncode
        assert code is not None
        return code

    async def _drain(self) -> None:
        if self._reader is not None:
            await self._reader
        if self._out_reader is not None:
            await self._out_reader

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.get("event") == name]

    def tail(self, n: int = 30) -> str:
        return "\n".join(orjson.dumps(e, default=str).decode()[:400] for e in self.events[-n:])


def quiet(event: Event) -> bool:
    """A sync pass that found nothing to do: nothing written, staged, linked or parked."""
    return (
        event.get("event") == "sync_pass"
        and event.get("status") == "ok"
        and event.get("writes") == 0
        and event.get("staged") == 0
        and event.get("linked") == 0
        and not event.get("parked")
    )


class WriteSpy:
    """Notices the daemon's writes to chosen routes of a sandbox, through a fault rule whose
    predicate never matches (so nothing is ever injected): `hit` is set at the n-th write after
    `arm(n)`, and `counts` tallies every write seen."""

    def __init__(self) -> None:
        self.hit = asyncio.Event()
        self.counts: dict[str, int] = {}
        self._writes = 0
        self._threshold = 1

    def watch(self, server: Any, *routes: str) -> None:
        for route in routes:
            server.faults.add(route, times=1, when=self._observer(f"{server.side.value} {route}"))

    def _observer(self, name: str) -> Callable[[Any], bool]:
        def predicate(body: Any) -> bool:
            self.counts[name] = self.counts.get(name, 0) + 1
            self._writes += 1
            if self._writes >= self._threshold:
                self.hit.set()
            return False

        return predicate

    def arm(self, writes: int = 1) -> None:
        """`hit` is set once `writes` more writes have been seen."""
        self.hit.clear()
        self._writes = 0
        self._threshold = writes


class HeldAnswer:
    """One write (the first on `route` whose JSON body `when` accepts) is applied by the sandbox
    and its answer held back for `hold` seconds: the client waits, the record exists. A kill -9
    then lands exactly between the remote write and our bookkeeping of it."""

    def __init__(
        self,
        server: Any,
        route: str,
        when: Callable[[Any], bool] | None = None,
        hold: float = 60.0,
    ) -> None:
        self.arrived = asyncio.Event()
        self.body: Any = None

        def predicate(body: Any) -> bool:
            if when is not None and not when(body):
                return False
            self.body = body
            self.arrived.set()
            return True

        server.faults.add(route, times=1, after_commit=True, delay=hold, when=predicate)

    async def wait(self, within: float) -> Any:
        """The body of the held write, once it has arrived (and, the sandbox handling a request
        without yielding between its arrival and its commit, been applied)."""
        await asyncio.wait_for(self.arrived.wait(), within)
        return self.body
