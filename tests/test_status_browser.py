"""The status page in a real headless browser (issue 10, part 4): Playwright for Python driving
Debian's chromium against a real `crmsyncd run`. The page renders, shows a parked record's reason
as text (its `<script>` never runs), and shows a later pass by itself (it refreshes itself).

Needs the `playwright` package (in the dev extra) and a chromium binary (Debian's `chromium`:
/usr/bin/chromium, or CRMSYNCD_TEST_CHROMIUM); skipped, saying which is missing, without them."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from tests.crash_daemon import Daemon, daemon_env
from tests.test_http import SCRIPT_NAME, TOKEN, refuse_script_names, seed

playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
CHROMIUM = os.environ.get("CRMSYNCD_TEST_CHROMIUM") or shutil.which("chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set CRMSYNCD_TEST_CHROMIUM)")
    async with playwright_api.async_playwright() as pw:
        # As root (CI, containers) chromium runs only without its sandbox.
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def test_the_status_page_renders_the_parked_reason_as_text_and_follows_the_passes(
    env: dict[str, str], eco: EcosireSandbox, crm: CrmSandbox, browser: Any, tmp_path: Path
) -> None:
    seed(eco, crm)
    eco.seed("contacts", [{"name": SCRIPT_NAME, "email": "eve@mail.example"}])
    refuse_script_names(crm)
    daemon = Daemon(
        daemon_env(env, CRMSYNCD_SYNC_INTERVAL="1", CRMSYNCD_RETRY_INTERVAL="3600", CRMSYNCD_HTTP_TOKEN=TOKEN)
    )
    try:
        await daemon.start()
        url = str((await daemon.next_named("http_started", 60))["url"])
        first = await daemon.next_named("sync_pass", 60)

        context = await browser.new_context(extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
        page = await context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        answer = await page.goto(f"{url}/")
        assert answer is not None and answer.status == 200
        assert await page.title() == "crmsyncd status"
        expect = playwright_api.expect
        await expect(page.locator("#readiness")).to_have_text("ready: ok")
        # The parked record's reason, as the API gave it, shown as text; nothing of it ran.
        reason = page.locator("#retry-queue td", has_text="is not allowed")
        await expect(reason).to_contain_text(f"crm 422 POST /contacts: fullName {SCRIPT_NAME} is not allowed")
        assert await page.locator("script").count() == 0
        await expect(page.locator("#cursors")).to_contain_text("contacts")
        await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

        # A later pass: the page shows it by itself (its refresh), newest first.
        later = await daemon.next_event(
            lambda e: e.get("event") == "sync_pass" and e["run"] > first["run"], 30
        )
        newest = page.locator("#passes tr:nth-child(2) td:first-child")
        await expect(newest).not_to_have_text(str(first["run"]), timeout=15000)
        assert int(await newest.inner_text()) >= later["run"]
        assert dialogs == []
        await context.close()
    finally:
        if daemon.running:
            assert await daemon.stop() == 0
