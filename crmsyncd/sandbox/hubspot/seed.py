"""The demo data set in HubSpot's shape: `crmsyncd demo --crm hubspot` and
`crmsyncd sandbox --crm hubspot --seed-demo`.

One data set, not a second generator: `demo_dataset()` (sandbox/seed.py) draws both sides, and
its CRM side is converted here, record by record, into the objects a HubSpot portal holds:
- contacts: `fullName` -> `firstname` + `lastname` (split as the default mapping writes them: the
  first word, the rest), `emailAddress` -> `email` (HubSpot keeps it in lower case, as the
  sandbox's seed does), `phoneNumber` -> `phone`, `labels` -> `ecosire_tags` `;`-joined (the
  options `crmsyncd hubspot setup --tags` creates: DEMO_TAGS). `accountType` is left out:
  `ecosire_type` is crmsyncd's own property, written from ECOSIRE, that a portal does not hold
  before its first sync. A contact whose email HubSpot's own check refuses (the REST CRM's
  `ops@intranet`, no dot in the domain) cannot exist in a portal and is left out: so the HubSpot
  demo has no record to park.
- deals: `title` -> `dealname`, `amount` -> the decimal string HubSpot answers, `currency` ->
  `deal_currency_code`, `stage` -> `dealstage` through the default mapping's stage table, the
  default `pipeline`, and `contactId` -> an association with that contact.
Records stamped `createdAt` / `updatedAt` (the bench's data, which grew over time) keep their
stamps. The REST CRM's pre-drawn contact ids (`c_900001`) become numeric portal ids (`900001`), above the
ones the portal's counter hands out first (and it skips taken ids anyway).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import SecretStr

from crmsyncd.connectors.http import make_session
from crmsyncd.connectors.hubspot.client import HubSpotClient
from crmsyncd.connectors.hubspot.mapping import default_mapping
from crmsyncd.connectors.hubspot.settings import BATCH_LIMIT, SEARCH_LIMIT, HubSpotSettings
from crmsyncd.connectors.hubspot.setup import setup_properties
from crmsyncd.domain.canonical import split_name
from crmsyncd.domain.records import JSON
from crmsyncd.sandbox.hubspot.app import HubSpotSandbox
from crmsyncd.sandbox.hubspot.properties import EMAIL
from crmsyncd.sandbox.seed import TAGS, demo_dataset, load_dataset

DEMO_TAGS = TAGS  # every tag the demo data set uses: the options of ecosire_tags


def hubspot_demo_dataset(
    seed: int = 7, contacts: int = 300
) -> tuple[dict[str, list[JSON]], dict[str, list[JSON]]]:
    """(ECOSIRE records by resource, HubSpot objects by type); the same for the same arguments."""
    ecosire, crm = demo_dataset(seed=seed, contacts=contacts)
    return ecosire, as_hubspot(crm)


def as_hubspot(crm: Mapping[str, list[JSON]]) -> dict[str, list[JSON]]:
    """The REST CRM's demo records as HubSpot objects (see the module's docstring)."""
    stages = _stage_table()
    contacts: list[JSON] = []
    kept: set[str] = set()
    for record in crm.get("contacts", []):
        email = record.get("emailAddress")
        if email is not None and not EMAIL.fullmatch(str(email).strip()):
            continue  # HubSpot refuses this address (INVALID_EMAIL): no portal holds it
        first, last = split_name(record.get("fullName"))
        properties = {
            "firstname": first,
            "lastname": last,
            "email": email,
            "phone": record.get("phoneNumber"),
        }
        if record.get("labels"):
            properties["ecosire_tags"] = ";".join(record["labels"])
        contact: JSON = {"properties": {k: v for k, v in properties.items() if v is not None}}
        contact.update({k: record[k] for k in ("createdAt", "updatedAt") if k in record})  # stamped data
        if "id" in record:
            contact["id"] = _portal_id(record["id"])
            kept.add(contact["id"])
        contacts.append(contact)
    deals: list[JSON] = []
    for record in crm.get("deals", []):
        deal: JSON = {
            "properties": {
                "dealname": record["title"],
                "amount": f"{record['amount']}",
                "deal_currency_code": record["currency"],
                "dealstage": stages[record["stage"]],
                "pipeline": "default",
            }
        }
        contact_id = None if record.get("contactId") is None else _portal_id(record["contactId"])
        if contact_id is not None and contact_id in kept:
            deal["associations"] = {"contacts": [contact_id]}
        deals.append(deal)
    return {"contacts": contacts, "deals": deals}


def _portal_id(rest_id: object) -> str:
    """`c_900001` -> `900001`: a portal's ids are numeric strings."""
    return str(rest_id).removeprefix("c_")


def _stage_table() -> dict[str, str]:
    """ECOSIRE stage -> HubSpot dealstage, from the default mapping (one table, not two)."""
    stage = default_mapping().entity("deals").field("stage")
    return dict(stage.table)


async def prepare_demo_portal(
    hub: HubSpotSandbox, records: Mapping[str, list[JSON]], *, http_timeout: float = 30.0
) -> list[str]:
    """Make `hub` (serving) the demo's portal: its custom properties created over HTTP by the code
    of `crmsyncd hubspot setup --tags <DEMO_TAGS>` (the requests are not left in `hub.requests`),
    then the objects loaded. Returns setup's lines."""
    settings = sandbox_settings(hub, timeout=http_timeout)
    session = make_session(http_timeout)
    try:
        lines = await setup_properties(HubSpotClient(settings, session), DEMO_TAGS)
    finally:
        await session.close()
    hub.reset_counts()
    load_dataset(hub, records)
    return lines


def sandbox_settings(hub: HubSpotSandbox, *, timeout: float = 30.0) -> HubSpotSettings:
    """The HubSpot connector's settings for `hub`, every field given: the caller's HUBSPOT_*
    variables are not read (a user's real token or OAuth client never meets the sandbox)."""
    return HubSpotSettings(
        access_token=SecretStr(hub.api_key),
        client_id=None,
        client_secret=None,
        refresh_token=None,
        api_url=hub.url,
        page_size=SEARCH_LIMIT,
        batch_size=BATCH_LIMIT,
        rate_limit=None,
        search_per_second=hub.limits.search_per_second or 100,
        timeout=timeout,
    )
