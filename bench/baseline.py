"""The guide's own sync loop (Custom CRM Sync Guide, Steps 2-4), ported line by line to Python.

This is the baseline the benchmark measures crmsyncd against. It is never imported by crmsyncd.
It keeps what the guide's TypeScript does, on purpose:

- Step 2's two tables, `crm_sync_map` and `crm_sync_errors`, exactly as printed;
- Step 3 (outbound, ECOSIRE -> CRM): pages by page number (`page`, `limit=100`,
  `updatedAfter`, `sortBy=updatedAt&sortOrder=asc`) until `meta.totalPages`; per contact one
  `SELECT external_id ...`, then one CRM call (PATCH if mapped, else POST and one `INSERT`);
- Step 4 (inbound, CRM -> ECOSIRE): `crmApiFetchUpdated` reads every changed CRM contact first
  (the same page loop), then per contact one `SELECT ecosire_id ...` and one ECOSIRE call (PATCH
  if mapped, else POST and one `INSERT`); a failure goes to `crm_sync_errors` with one `INSERT`;
- no batching, no concurrency: every await finishes before the next starts; outbound, then inbound.

Where the guide leaves a helper undefined, the port does the obvious thing with the API docs:
`crmApiCreate` POSTs and returns the answer's `id`, `crmApiUpdate` PATCHes, `crmApiFetchUpdated`
pages like Step 3. Like `fetch`, no call checks the HTTP status: a 409 answer simply has no `id`,
so the following `INSERT` of a NULL id fails (NOT NULL) and that is the error recorded.

One deviation, so that a run can finish at all: Step 3 has no try/catch, so the first failed
create (an email the CRM already holds) would abort the whole sync. Step 3's loop body gets
Step 4's own catch (record the error in `crm_sync_errors`, go on).

Favourable to the baseline: one kept-alive HTTP session (node-fetch opens a connection per
call), and one database connection (`pool.query` in node-postgres is one round trip; asyncpg's
pool would add a reset query on every release).

Run: `python -m bench.baseline` with DATABASE_URL, ECOSIRE_API_URL, ECOSIRE_API_KEY,
CRM_API_URL, CRM_API_KEY in the environment (the guide's own `process.env` names where it has
them). Prints one JSON line of counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

# Step 2, verbatim.
SCHEMA = """
CREATE TABLE IF NOT EXISTS crm_sync_map (
id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
ecosire_id TEXT NOT NULL,
external_id TEXT NOT NULL,
entity_type TEXT NOT NULL, -- 'contact', 'deal', etc.
last_synced TIMESTAMPTZ NOT NULL DEFAULT NOW(),
sync_checksum TEXT, -- hash of last synced payload
UNIQUE (external_id, entity_type)
);

CREATE TABLE IF NOT EXISTS crm_sync_errors (
id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
entity_type TEXT,
external_id TEXT,
error TEXT,
payload JSONB,
retry_count INT DEFAULT 0,
created_at TIMESTAMPTZ DEFAULT NOW()
);
"""


def to_iso_string(moment: datetime) -> str:
    """JavaScript's Date.prototype.toISOString()."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class GuideSync:
    def __init__(self, pool: asyncpg.Connection, http: aiohttp.ClientSession, env: dict[str, str]) -> None:
        self.pool = pool
        self.http = http
        self.ecosire = env["ECOSIRE_API_URL"].rstrip("/")
        self.ecosire_key = env["ECOSIRE_API_KEY"]
        self.crm = env["CRM_API_URL"].rstrip("/")
        self.crm_key = env["CRM_API_KEY"]
        self.counts = {"outbound": 0, "inbound": 0, "errors": 0}

    async def fetch(self, url: str, method: str = "GET", body: Any = None, key: str = "") -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = json.dumps(body) if body is not None else None
        async with self.http.request(method, url, headers=headers, data=data) as res:
            return await res.json(content_type=None)

    # ----- Step 3 -- Implement Delta Sync (Outbound: ECOSIRE -> CRM) --------------------------

    async def sync_ecosire_to_crm(self, last_sync_at: datetime) -> None:
        page = 1
        limit = 100

        while True:
            # Fetch contacts updated since last sync
            res = await self.fetch(
                f"{self.ecosire}/contacts?page={page}&limit={limit}"
                f"&updatedAfter={to_iso_string(last_sync_at)}&sortBy=updatedAt&sortOrder=asc",
                key=self.ecosire_key,
            )
            contacts, meta = res["data"], res["meta"]

            for contact in contacts:
                try:  # the one deviation: Step 4's catch, so that one failure does not end the run
                    await self.upsert_to_crm(contact)
                except Exception as err:
                    await self.pool.execute(
                        "INSERT INTO crm_sync_errors (entity_type, external_id, error, payload)"
                        " VALUES ($1, $2, $3, $4)",
                        "contact",
                        contact["id"],
                        str(err),
                        json.dumps(contact),
                    )
                    self.counts["errors"] += 1

            if page >= meta["totalPages"]:
                break
            page += 1

    async def upsert_to_crm(self, contact: dict[str, Any]) -> None:
        rows = await self.pool.fetch(
            "SELECT external_id FROM crm_sync_map WHERE ecosire_id = $1 AND entity_type = $2",
            contact["id"],
            "contact",
        )

        mapped = {
            "fullName": contact.get("name"),
            "emailAddress": contact.get("email"),
            "phoneNumber": contact.get("phone"),
        }

        if len(rows) > 0:
            # Update existing CRM record
            await self.crm_api_update(rows[0]["external_id"], mapped)
        else:
            # Create new CRM record and store mapping
            external_id = await self.crm_api_create(mapped)
            await self.pool.execute(
                "INSERT INTO crm_sync_map (ecosire_id, external_id, entity_type) VALUES ($1, $2, $3)",
                contact["id"],
                external_id,
                "contact",
            )
        self.counts["outbound"] += 1

    async def crm_api_create(self, mapped: dict[str, Any]) -> Any:
        created = await self.fetch(f"{self.crm}/contacts", "POST", mapped, key=self.crm_key)
        return created.get("id") if isinstance(created, dict) else None

    async def crm_api_update(self, external_id: str, mapped: dict[str, Any]) -> None:
        await self.fetch(f"{self.crm}/contacts/{external_id}", "PATCH", mapped, key=self.crm_key)

    async def crm_api_fetch_updated(self, last_sync_at: datetime) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            res = await self.fetch(
                f"{self.crm}/contacts?page={page}&limit=100"
                f"&updatedAfter={to_iso_string(last_sync_at)}&sortBy=updatedAt&sortOrder=asc",
                key=self.crm_key,
            )
            found.extend(res["data"])
            if page >= res["meta"]["totalPages"]:
                return found
            page += 1

    # ----- Step 4 -- Implement Delta Sync (Inbound: CRM -> ECOSIRE) ---------------------------

    async def sync_crm_to_ecosire(self, last_sync_at: datetime) -> None:
        crm_contacts = await self.crm_api_fetch_updated(last_sync_at)

        for crm_contact in crm_contacts:
            try:
                await self.upsert_to_ecosire(crm_contact)
            except Exception as err:
                # Store in retry queue
                await self.pool.execute(
                    "INSERT INTO crm_sync_errors (entity_type, external_id, error, payload)"
                    " VALUES ($1, $2, $3, $4)",
                    "contact",
                    crm_contact["id"],
                    str(err),
                    json.dumps(crm_contact),
                )
                self.counts["errors"] += 1

    async def upsert_to_ecosire(self, crm_contact: dict[str, Any]) -> None:
        rows = await self.pool.fetch(
            "SELECT ecosire_id FROM crm_sync_map WHERE external_id = $1 AND entity_type = $2",
            crm_contact["id"],
            "contact",
        )

        payload = {
            "name": crm_contact.get("fullName"),
            "email": crm_contact.get("emailAddress"),
            "type": "person",
        }

        if len(rows) > 0:
            await self.fetch(
                f"{self.ecosire}/contacts/{rows[0]['ecosire_id']}", "PATCH", payload, key=self.ecosire_key
            )
        else:
            created = await self.fetch(f"{self.ecosire}/contacts", "POST", payload, key=self.ecosire_key)
            await self.pool.execute(
                "INSERT INTO crm_sync_map (ecosire_id, external_id, entity_type) VALUES ($1, $2, $3)",
                created.get("id") if isinstance(created, dict) else None,
                crm_contact["id"],
                "contact",
            )
        self.counts["inbound"] += 1


async def main() -> int:
    env = dict(os.environ)
    pool = await asyncpg.connect(env["DATABASE_URL"])
    try:
        await pool.execute(SCHEMA)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            sync = GuideSync(pool, http, env)
            # A first sync: nothing was synced before.
            last_sync_at = datetime(1970, 1, 1, tzinfo=UTC)
            started = time.monotonic()
            await sync.sync_ecosire_to_crm(last_sync_at)
            outbound_done = time.monotonic()
            await sync.sync_crm_to_ecosire(last_sync_at)
            finished = time.monotonic()
    finally:
        await pool.close()
    print(
        json.dumps(
            {
                **sync.counts,
                "outbound_seconds": round(outbound_done - started, 3),
                "inbound_seconds": round(finished - outbound_done, 3),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
