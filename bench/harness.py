"""The bench's environment: an embedded PostgreSQL, the sandbox APIs, and measured subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from aiohttp import web

from bench.pgproxy import CountingProxy
from crmsyncd.domain.records import JSON
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox, SandboxServer
from crmsyncd.store.db import EmbeddedPostgres, database_name_dsn

# Variables of ours a developer's shell may have set: a run must see only what the bench gives it.
_OWN_PREFIXES = ("CRMSYNCD_", "ECOSIRE_", "CRM_", "HUBSPOT_", "DATABASE_URL")


# ----- PostgreSQL -------------------------------------------------------------------------------


class Postgres:
    """One embedded server for the whole bench run; a fresh database per measured run."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "pgdata"
        self._embedded = EmbeddedPostgres(self.data_dir)
        self.dsn = ""
        self.socket_dir = ""
        self.proxy: CountingProxy | None = None
        self._databases = 0

    async def start(self) -> None:
        self.dsn = await self._embedded.start()
        self.socket_dir = parse_qs(urlsplit(self.dsn).query)["host"][0]
        self.proxy = CountingProxy(self.socket_dir)
        await self.proxy.start()

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        await self._embedded.stop()  # leaves the server running (cleanup_mode=None): stop it here
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGINT)  # fast shutdown of the postmaster this bench started
            for _ in range(100):
                await asyncio.sleep(0.1)
                if not pid_file.exists():
                    break

    async def new_database(self, label: str) -> str:
        """Create an empty database; returns its name."""
        self._databases += 1
        name = f"bench_{self._databases:02d}_{label}"
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    @property
    def pid(self) -> int | None:
        """The postmaster's process id."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def direct_dsn(self, database: str) -> str:
        return database_name_dsn(self.dsn, database)

    def proxied_dsn(self, database: str) -> str:
        assert self.proxy is not None
        return self.proxy.dsn(database)

    async def query(self, database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.direct_dsn(database))
        try:
            for name in ("json", "jsonb"):
                await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def table_writes(self, database: str) -> dict[str, int]:
        """Rows inserted, updated or deleted so far, per table (pg_stat_user_tables).

        Waits until the database's other sessions are gone first: a backend reports its counts
        when it exits at the latest (before it leaves pg_stat_activity)."""
        conn = await asyncpg.connect(self.direct_dsn(database))
        try:
            for _ in range(100):
                others = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                if not others:
                    break
                await asyncio.sleep(0.05)
            rows = await conn.fetch(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS written FROM pg_stat_user_tables"
            )
            return {str(r["relname"]): int(r["written"]) for r in rows}
        finally:
            await conn.close()

    async def settings(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.dsn)
        try:
            out = {"version": str(await conn.fetchval("SHOW server_version"))}
            for name in ("shared_buffers", "fsync", "synchronous_commit", "max_connections"):
                out[name] = str(await conn.fetchval(f"SHOW {name}"))
            return out
        finally:
            await conn.close()


# ----- sandbox APIs -----------------------------------------------------------------------------


def _count_statuses(
    app: web.Application, statuses: Counter[int], timeline: list[tuple[float, int]] | None
) -> web.Application:
    """Count API answers by status (the sandbox itself counts requests by route only) and, when
    asked, keep (monotonic time, status) of each."""

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith("/api/"):
            statuses[response.status] += 1
            if timeline is not None:
                timeline.append((time.monotonic(), response.status))

    app.on_response_prepare.append(count)
    return app


class _CountsStatuses(SandboxServer):
    """A sandbox that also counts its answers by status (and, on request, when it gave them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statuses: Counter[int] = Counter()
        self.timeline: list[tuple[float, int]] | None = None  # set to a list to record

    def build_app(self) -> web.Application:
        return _count_statuses(super().build_app(), self.statuses, self.timeline)


class BenchEcosire(_CountsStatuses, EcosireSandbox):
    pass


class BenchCrm(_CountsStatuses, CrmSandbox):
    pass


@dataclass(slots=True)
class ApiUse:
    """What one side's API saw during a run."""

    requests: int = 0  # every request, 429s included
    ok: int = 0  # answered 2xx
    rate_limited: int = 0  # answered 429
    errors: int = 0  # any other status
    by_route: dict[str, int] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        return sum(n for route, n in self.by_route.items() if route.split(" ")[0] in ("POST", "PATCH"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rate_limited": self.rate_limited,
            "errors": self.errors,
            "by_route": self.by_route,
        }


def api_use(server: SandboxServer) -> ApiUse:
    statuses: Counter[int] = getattr(server, "statuses", None) or Counter()
    routes = {k: v for k, v in server.requests.items() if k != "rate_limited"}
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    limited = statuses.get(429, 0)
    return ApiUse(
        requests=sum(routes.values()),
        ok=ok,
        rate_limited=limited,
        errors=sum(statuses.values()) - ok - limited,
        by_route=dict(sorted(routes.items())),
    )


def reset_counts(*servers: SandboxServer) -> None:
    for server in servers:
        server.reset_counts()
        counter = getattr(server, "statuses", None)
        if counter is not None:
            counter.clear()


@contextlib.asynccontextmanager
async def sandboxes(
    *,
    latency: float,
    rate_limit: int | None,
    ecosire: Iterable[list[JSON]] = (),
    crm: Iterable[list[JSON]] = (),
    timeline: bool = False,
) -> AsyncIterator[tuple[BenchEcosire, BenchCrm]]:
    """Both fake APIs, seeded (chunk by chunk), serving on loopback ports; `timeline` keeps the
    time and status of every answer."""
    eco = BenchEcosire(rate_limit_per_minute=rate_limit, latency=latency)
    crm_server = BenchCrm(rate_limit_per_minute=rate_limit, latency=latency)
    if timeline:
        eco.timeline, crm_server.timeline = [], []
    for chunk in ecosire:
        eco.seed("contacts", chunk)
    for chunk in crm:
        crm_server.seed("contacts", chunk)
    async with eco, crm_server:
        yield eco, crm_server


# ----- measured subprocesses --------------------------------------------------------------------


@dataclass(slots=True)
class ProcessResult:
    argv: list[str]
    exit_code: int
    wall_seconds: float
    cpu_seconds: float  # user + system of the process
    # The kernel's high-water mark of the process's resident set (VmHWM), read until it exits.
    peak_rss_bytes: int
    rss_samples: list[tuple[float, int]]  # (seconds since start, VmRSS bytes)
    bench_cpu_seconds: float  # this process meanwhile: the sandbox APIs and the proxy
    postgres_cpu_seconds: float  # the PostgreSQL server meanwhile
    log: Path


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env.update(extra)
    return env


def _memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in bytes, or None once the process has gone."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None if rss is None or hwm is None else (rss, hwm)


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, comes first)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process, of the children it has reaped, and of its live children."""
    if pid is None:
        return 0.0
    own = _stat(pid)
    if own is None:
        return 0.0
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = _stat(entry.name)
            if child is not None and child[1] == str(pid):  # ppid
                ticks += int(child[11]) + int(child[12])
    return ticks / _TICKS


def _spawn(argv: list[str], env: Mapping[str, str], log: Path, cwd: Path | None) -> subprocess.Popen[bytes]:
    """Start the command with its output to `log` (the child keeps the file open)."""
    with open(log, "wb") as out:
        return subprocess.Popen(  # noqa: S603
            argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_measured(
    argv: list[str],
    env: Mapping[str, str],
    log: Path,
    *,
    postgres_pid: int | None = None,
    sample_every: float = 0.1,
    cwd: Path | None = None,
) -> ProcessResult:
    """Run a command to its end while this event loop keeps serving; measure its time, CPU and
    peak resident memory, and the CPU this process and PostgreSQL spent meanwhile.

    Peak memory is the kernel's VmHWM of the process, polled until it exits: getrusage's
    ru_maxrss cannot be used, because Linux carries the high-water mark of the image a child
    had before exec() (a fork of this big process, sandbox data and all) into it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, int]] = []
    peak = 0
    bench_before, pg_before = _self_cpu(), _tree_cpu(postgres_pid)
    started = time.monotonic()
    proc = _spawn(argv, env, log, cwd)
    waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, proc.pid, 0))
    next_sample = 0.0
    while not waiter.done():
        memory = _memory(proc.pid)
        now = time.monotonic() - started
        if memory is not None:
            peak = max(peak, memory[1])
            if now >= next_sample:
                samples.append((now, memory[0]))
                next_sample = now + 0.5
        await asyncio.wait({waiter}, timeout=sample_every)
    _, status, usage = waiter.result()
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcessResult(
        argv=argv,
        exit_code=proc.returncode,
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=peak,
        rss_samples=samples,
        bench_cpu_seconds=_self_cpu() - bench_before,
        postgres_cpu_seconds=_tree_cpu(postgres_pid) - pg_before,
        log=log,
    )


def daemon_env(
    database_url: str,
    eco: SandboxServer,
    crm: SandboxServer,
    *,
    ecosire_rate_limit: int | None,
    crm_rate_limit: int | None,
    workers: int | None = None,
    data_dir: Path,
    source: SourceSnapshot | None = None,
    crm_kind: str = "rest",
) -> dict[str, str]:
    """`crm_kind` "hubspot": `crm` is a HubSpot sandbox, reached through the HUBSPOT_* variables
    (a private-app token)."""
    values = {
        "CRMSYNCD_DATABASE_URL": database_url,
        "CRMSYNCD_DATA_DIR": str(data_dir),
        "ECOSIRE_API_URL": eco.url,
        "ECOSIRE_API_KEY": eco.api_key,
        "CRMSYNCD_CRM": crm_kind,
        "CRMSYNCD_ENTITIES": "contacts",
        "CRMSYNCD_LOG_FORMAT": "json",
        "CRMSYNCD_LOG_LEVEL": "info",
    }
    if crm_kind == "hubspot":
        values.update({"HUBSPOT_API_URL": crm.url, "HUBSPOT_ACCESS_TOKEN": crm.api_key})
    else:
        values.update({"CRM_API_URL": crm.url, "CRM_API_KEY": crm.api_key})
    # None leaves a variable unset: the server's rate-limit headers alone set the pace.
    if ecosire_rate_limit is not None:
        values["ECOSIRE_RATE_LIMIT"] = str(ecosire_rate_limit)
    if crm_rate_limit is not None:
        values["CRM_RATE_LIMIT"] = str(crm_rate_limit)
    if workers is not None:
        values["CRMSYNCD_WORKERS"] = str(workers)
    env = clean_env(values)
    if source is not None:
        env["PYTHONPATH"] = str(source.root)
    return env


def daemon_argv() -> list[str]:
    return [sys.executable, "-m", "crmsyncd", "sync", "--once"]


@dataclass(frozen=True, slots=True)
class SourceSnapshot:
    """A copy of the crmsyncd package taken when the bench starts. Every daemon of the run imports
    this copy (PYTHONPATH, and the copy as working directory), so that edits made to the working
    tree while the bench runs cannot mix two versions of the engine into one report."""

    root: Path  # the directory holding the copied `crmsyncd` package
    digest: str  # sha256 of the copied sources (paths and contents), shortened
    files: int


def snapshot_source(dest: Path) -> SourceSnapshot:
    import hashlib
    import shutil

    import crmsyncd

    package = Path(crmsyncd.__file__).resolve().parent
    target = dest / "crmsyncd"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha256()
    files = sorted(p for p in target.rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes() + b"\0")
    return SourceSnapshot(dest, digest.hexdigest()[:12], len(files))


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="crmsyncd-bench-"))
