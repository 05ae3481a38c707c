"""A deal's contact, through associations v4 and HubSpot's unlabelled default type.

- read: `POST /crm/v4/associations/deals/contacts/batch/read` (100 deals a call; a 207 names the
  deals that have none);
- made with a create: the `associations` of the create input (`HUBSPOT_DEFINED`, type 3, deal to
  contact), so a deal and its link are one write;
- changed by an update: `PUT /crm/v4/objects/deals/{id}/associations/default/contacts/{toId}`,
  then the old ones removed (`POST .../batch/archive`): the new link is made before the old goes,
  so a failure between the two leaves the deal with both contacts, never with none.
"""

from __future__ import annotations

from collections.abc import Sequence

from crmsyncd.connectors.http import ApiResponse, MalformedResponse, path_segment
from crmsyncd.connectors.hubspot.client import HubSpotClient, nothing
from crmsyncd.domain.records import JSON

DEAL_TO_CONTACT = 3  # associations v4: HubSpot's default deal -> contact type
BATCH = 100


def create_association(contact_id: str) -> list[JSON]:
    """The `associations` of a deal's create input."""
    return [
        {
            "to": {"id": contact_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": DEAL_TO_CONTACT}],
        }
    ]


def _numeric(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 62, value)


def _parse_links(response: ApiResponse) -> dict[str, list[str]]:
    body = response.body
    if not isinstance(body, dict) or not isinstance(body.get("results", []), list):
        raise MalformedResponse("associations batch read: expected an object with results")
    found: dict[str, list[str]] = {}
    for row in body.get("results", []):
        source = row.get("from", {}).get("id") if isinstance(row, dict) else None
        targets = row.get("to") if isinstance(row, dict) else None
        if source is None or not isinstance(targets, list):
            raise MalformedResponse("associations batch read: a result without from.id and to")
        ids = [
            str(t["toObjectId"]) for t in targets if isinstance(t, dict) and t.get("toObjectId") is not None
        ]
        found[str(source)] = sorted(ids, key=_numeric)
    return found


async def contacts_of(client: HubSpotClient, deal_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each deal's associated contact ids, in id order; deals with none are left out."""
    found: dict[str, list[str]] = {}
    unique = list(dict.fromkeys(deal_ids))
    for start in range(0, len(unique), BATCH):
        inputs = [{"id": deal_id} for deal_id in unique[start : start + BATCH]]
        found.update(
            await client.call(
                "POST",
                "/crm/v4/associations/deals/contacts/batch/read",
                kind="reads",
                body={"inputs": inputs},
                read=True,
                parse=_parse_links,
            )
        )
    return found


async def move_contact(client: HubSpotClient, deal_id: str, new: str | None, old: Sequence[str]) -> None:
    """Make `new` the deal's contact (None: no contact) and remove the others."""
    if new is not None and new not in old:
        await client.call(
            "PUT",
            f"/crm/v4/objects/deals/{path_segment(deal_id)}/associations/default/contacts/{path_segment(new)}",
            kind="updates",
            read=True,  # idempotent: making a link twice makes it once
            parse=nothing,
            expect_json=False,
        )
    stale = [contact for contact in old if contact != new]
    if stale:
        await client.call(
            "POST",
            "/crm/v4/associations/deals/contacts/batch/archive",
            kind="updates",
            body={"inputs": [{"from": {"id": deal_id}, "to": [{"id": c} for c in stale]}]},
            read=True,  # idempotent too
            parse=nothing,
            expect_json=False,
        )
