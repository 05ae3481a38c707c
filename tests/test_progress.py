"""Progress of a long pass (issue 10, part 5): a log line at every CRMSYNCD_PROGRESS_INTERVAL
while the pass runs (set to 0.2 s here, with sandboxes slowed by latency, so that no test waits
the default 10 s), and the progress bar of `sync --once` in a terminal, absent when stderr is
not one."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import struct
import sys
import termios
from typing import Any

import orjson

from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.conftest import run_cli

ECO, CRM = 40, 10
CLEAR = "\r\x1b[K"  # the bar's redraw: back to the line's start, erased


def seed_slow(eco: EcosireSandbox, crm: CrmSandbox) -> None:
    eco.seed("contacts", [{"name": f"Eco {i}", "email": f"eco{i}@mail.example"} for i in range(ECO)])
    crm.seed(
        "contacts", [{"fullName": f"Crm {i}", "emailAddress": f"crm{i}@mail.example"} for i in range(CRM)]
    )
    eco.latency = crm.latency = 0.03  # every request takes a while: the pass lasts a second or two


SLOW = {"CRMSYNCD_WORKERS": "2", "CRM_PAGE_SIZE": "5", "CRMSYNCD_PROGRESS_INTERVAL": "0.2"}


def events(stderr: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]


async def test_a_long_pass_logs_progress_lines_with_its_figures(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    seed_slow(eco, crm)
    result = await run_cli("sync", "--once", env={**env, **SLOW})
    assert result.code == 0, result.stderr
    logged = events(result.stderr)
    summary = next(e for e in logged if e["event"] == "sync_pass")
    lines = [e for e in logged if e["event"] == "sync_progress"]
    assert len(lines) >= 2, [e["event"] for e in logged]
    assert all(e["run"] == summary["run"] and e["job"] == "sync" for e in lines)
    # Figures per entity and side: read against the feed's total, written, a rate, an ETA.
    last = lines[-1]
    sides = {(s["entity"], s["side"]): s for s in last["sides"]}
    assert sides[("contacts", "ecosire")]["total"] == ECO
    assert sides[("contacts", "crm")]["total"] == CRM
    assert sides[("contacts", "ecosire")]["read"] == ECO  # read in full before the writes end
    assert 0 < sides[("contacts", "crm")]["written"] <= ECO + CRM
    assert last["rate"] > 0 and last["seconds"] > 0
    assert any(e["entity"] == "contacts" and e["eta"] is not None for e in lines)
    # The counts only grow, and never pass what the pass reports at its end.
    written = [sum(s["written"] for s in e["sides"]) for e in lines]
    assert written == sorted(written)
    assert written[-1] <= summary["writes"]
    # Not a terminal: no bar, every line of stderr is a JSON log line.
    assert "\x1b[K" not in result.stderr and "\r" not in result.stderr
    assert all(line.startswith("{") for line in result.stderr.splitlines())


async def test_a_pass_shorter_than_the_interval_logs_no_progress(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    eco.seed("contacts", [{"name": "Quick", "email": "quick@mail.example"}])
    result = await run_cli("sync", "--once", env=env)  # the default interval, 10 s
    assert result.code == 0, result.stderr
    assert [e for e in events(result.stderr) if e["event"].endswith("_progress")] == []


async def test_sync_once_in_a_terminal_shows_a_progress_bar(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox
) -> None:
    seed_slow(eco, crm)
    leader, follower = os.openpty()
    # A terminal 160 columns wide: the bar is cut to the width (a wrapped line cannot be redrawn).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMSYNCD_", "ECOSIRE_", "CRM_"))}
    full_env.update({**env, **SLOW})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crmsyncd",
        "sync",
        "--once",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=follower,
        env=full_env,
    )
    os.close(follower)

    def read_all() -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        screen = (await asyncio.wait_for(asyncio.to_thread(read_all), 120)).decode()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        os.close(leader)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # The bar: redrawn in place, with the figures of the progress lines.
    assert CLEAR in screen
    assert re.search(rf"contacts ecosire read {ECO}/{ECO} written \d+", screen), screen[-2000:]
    assert re.search(r"\[#*-*\] +\d+% sync #\d+ ", screen)
    assert "rec/s" in screen and "ETA" in screen
    assert all(len(bar) < 160 for line in screen.split("\r\n") for bar in line.split(CLEAR) if "rec/s" in bar)
    # The log lines stay whole, never cut by the bar: after the bar's last erase, a JSON object.
    logged = [line.split(CLEAR)[-1] for line in screen.split("\r\n") if '"event"' in line]
    assert any(orjson.loads(line)["event"] == "sync_pass" for line in logged)
    assert all(isinstance(orjson.loads(line), dict) for line in logged)
