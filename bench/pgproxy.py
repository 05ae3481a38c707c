"""A counting TCP proxy in front of PostgreSQL: how many round trips a client really makes.

Both the baseline and crmsyncd reach the database through it, so they are measured the same way,
whatever driver, pool or prepared-statement cache sits in between. It reads the server's side of
the wire protocol (v3) and counts:

- round trips: `ReadyForQuery` messages. The server sends exactly one per simple `Query` and per
  `Sync` of the extended protocol, i.e. one each time the client stops and waits for the server:
  a query, a prepare, BEGIN, COMMIT, a pool's reset on release, the start-up handshake. A client
  that pipelines several Syncs without waiting would be over-counted, never under-counted.
- by statement: the client's side says what each round trip was for (the query text of a simple
  Query, or of the statement a Sync completes), and the time until its ReadyForQuery came back.

(Rows written are not read from the wire: a `fetchrow` of an `INSERT ... RETURNING` ends in
PortalSuspended, without the CommandComplete that carries the row count. The bench takes them from
`pg_stat_user_tables` instead.)

Bytes are forwarded untouched, as they come; the parsing only looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


@dataclass(slots=True)
class WireCounts:
    round_trips: int = 0
    connections: int = 0
    # Round trips by what the client asked for: the statement text (shortened), "prepare: ..."
    # for a Sync after a Parse alone, "(start-up)" for the handshake.
    by_statement: dict[str, int] = field(default_factory=dict)
    # Seconds from the request leaving the client to its ReadyForQuery, by the same key.
    seconds_by_statement: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> WireCounts:
        return WireCounts(
            self.round_trips, self.connections, dict(self.by_statement), dict(self.seconds_by_statement)
        )

    def count_request(self, what: str) -> None:
        self.by_statement[what] = self.by_statement.get(what, 0) + 1

    def add_time(self, what: str, seconds: float) -> None:
        self.seconds_by_statement[what] = self.seconds_by_statement.get(what, 0.0) + seconds


class _ServerStream:
    """Incremental parser of the server-to-client byte stream."""

    def __init__(self, counts: WireCounts) -> None:
        self.counts = counts
        self.single_bytes = 0  # answers to SSLRequest/GSSENCRequest: one untyped byte each
        self.opaque = False  # TLS was accepted: nothing more can be read
        self.in_flight: deque[tuple[str, float]] = deque()  # requests waiting for ReadyForQuery
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        if self.opaque:
            return
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while True:
            if self.single_bytes:
                if pos >= end:
                    break
                answer = buf[pos]
                pos += 1
                self.single_bytes -= 1
                if answer == ord("S"):
                    self.opaque = True
                    break
                continue
            if end - pos < 5:
                break
            kind = buf[pos]
            (length,) = struct.unpack_from("!I", buf, pos + 1)
            if end - pos < 1 + length:
                break
            if kind == 0x5A:  # 'Z' ReadyForQuery
                self.counts.round_trips += 1
                if self.in_flight:
                    what, sent = self.in_flight.popleft()
                    self.counts.add_time(what, time.perf_counter() - sent)
            pos += 1 + length
        del buf[:pos]


def _statement_key(query: bytes) -> str:
    text = " ".join(query.decode("utf-8", "replace").split())
    return text if len(text) <= 90 else text[:87] + "..."


def _cstring(buf: bytearray, start: int) -> tuple[bytes, int]:
    end = buf.index(0, start)
    return bytes(buf[start:end]), end + 1


class _ClientStream:
    """Watches the client's start-up packets for SSL/GSS requests (whose answer is one byte), then
    attributes each round trip it asks for (a simple Query, or a Sync) to its statement."""

    def __init__(self, server: _ServerStream) -> None:
        self.server = server
        self.startup = True
        self._buf = bytearray()
        self._prepared: dict[bytes, str] = {}  # statement name -> its text, from Parse
        self._pending: str | None = None  # what the next Sync completes

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while self.startup and end - pos >= 8:
            length, code = struct.unpack_from("!II", buf, pos)
            if end - pos < length:
                break
            pos += length
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                self.server.single_bytes += 1
            else:  # StartupMessage or CancelRequest: typed messages from now on
                self.startup = False
                self._ask("(start-up)")
        while not self.startup and end - pos >= 5:
            kind = buf[pos]
            (length,) = struct.unpack_from("!I", buf, pos + 1)
            if end - pos < 1 + length:
                break
            body = pos + 5
            if kind == 0x51:  # 'Q' simple query
                query, _ = _cstring(buf, body)
                self._ask(_statement_key(query))
            elif kind == 0x50:  # 'P' Parse: statement name, query text
                name, after = _cstring(buf, body)
                query, _ = _cstring(buf, after)
                key = _statement_key(query)
                self._prepared[name] = key
                self._pending = "prepare: " + key
            elif kind == 0x42:  # 'B' Bind: portal name, statement name
                _, after = _cstring(buf, body)
                name, _ = _cstring(buf, after)
                self._pending = self._prepared.get(name, "(unknown statement)")
            elif kind == 0x53:  # 'S' Sync: the server answers with one ReadyForQuery
                self._ask(self._pending or "(sync)")
                self._pending = None
            pos += 1 + length
        del buf[:pos]

    def _ask(self, what: str) -> None:
        self.server.counts.count_request(what)
        self.server.in_flight.append((what, time.perf_counter()))


class CountingProxy:
    """Listens on 127.0.0.1 and forwards each connection to PostgreSQL's Unix socket."""

    def __init__(self, socket_dir: str, port: int = 5432) -> None:
        self.socket_path = f"{socket_dir}/.s.PGSQL.{port}"
        self.counts = WireCounts()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def reset(self) -> None:
        """Zero the counts (in place: connections still open count on into them)."""
        counts = self.counts
        counts.round_trips = counts.connections = 0
        counts.by_statement.clear()
        counts.seconds_by_statement.clear()

    def dsn(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        counts = self.counts
        counts.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            client_writer.close()
            self._tasks.discard(task)
            return
        server_side = _ServerStream(counts)
        client_side = _ClientStream(server_side)
        try:
            await asyncio.gather(
                _pump(client_reader, server_writer, client_side.feed),
                _pump(server_reader, client_writer, server_side.feed),
            )
        finally:
            for writer in (client_writer, server_writer):
                writer.close()
            self._tasks.discard(task)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, feed: Callable[[bytes], None]
) -> None:
    try:
        while data := await reader.read(1 << 16):
            feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
