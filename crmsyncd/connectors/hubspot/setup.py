"""`crmsyncd hubspot setup`: the custom contact properties the default mapping writes.

- `ecosire_type`: a single-line text property (ECOSIRE's `type`, person or company);
- `ecosire_tags`: a multiple-checkboxes property (ECOSIRE's `tags`, `;`-joined as HubSpot stores
  them). HubSpot accepts only a checkbox's defined options, so the tags in use are given as its
  options (`--tags vip,partner`); a tag that is not one is refused by HubSpot with INVALID_OPTION
  naming the property, and the record parked until the option is added (in HubSpot's property
  settings).

Idempotent: a property that exists (409) is left as it is, and said so; for `ecosire_tags` the
tags asked for that it lacks as options are listed.
"""

from __future__ import annotations

from collections.abc import Sequence

from crmsyncd.connectors.base import ConnectorError, Outcome
from crmsyncd.connectors.hubspot.client import HubSpotClient, body_of
from crmsyncd.domain.records import JSON

PROPERTIES_PATH = "/crm/v3/properties/contacts"
GROUP = "contactinformation"


def definitions(tags: Sequence[str]) -> list[JSON]:
    return [
        {
            "name": "ecosire_type",
            "label": "ECOSIRE type",
            "type": "string",
            "fieldType": "text",
            "groupName": GROUP,
            "description": "ECOSIRE's contact type (person or company), written by crmsyncd",
        },
        {
            "name": "ecosire_tags",
            "label": "ECOSIRE tags",
            "type": "enumeration",
            "fieldType": "checkbox",
            "groupName": GROUP,
            "description": "ECOSIRE's contact tags, synced both ways by crmsyncd",
            "options": [
                {"label": tag, "value": tag, "displayOrder": order, "hidden": False}
                for order, tag in enumerate(tags)
            ],
        },
    ]


async def setup_properties(client: HubSpotClient, tags: Sequence[str]) -> list[str]:
    """Create what is missing; one line per property saying what was done."""
    wanted = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
    lines: list[str] = []
    for definition in definitions(wanted):
        name = definition["name"]
        if name == "ecosire_tags" and not wanted:
            existing = await _existing(client, name)
            if existing is None:
                lines.append(
                    f"contacts property {name}: NOT created: HubSpot needs its options, the tags in "
                    "use: run again with --tags tag1,tag2,..."
                )
            else:
                lines.append(f"contacts property {name}: exists already, left as it is")
            continue
        try:
            await client.call("POST", PROPERTIES_PATH, kind="creates", body=definition, parse=body_of)
        except ConnectorError as exc:
            if exc.outcome is not Outcome.CONFLICT:
                raise
            lines.append(
                f"contacts property {name}: exists already, left as it is{await _missing(client, definition)}"
            )
            continue
        options = f" with options {', '.join(wanted)}" if name == "ecosire_tags" else ""
        lines.append(
            f"contacts property {name}: created ({definition['type']}, {definition['fieldType']}{options})"
        )
    return lines


async def _existing(client: HubSpotClient, name: str) -> JSON | None:
    try:
        return await client.call("GET", f"{PROPERTIES_PATH}/{name}", kind="reads", parse=body_of)
    except ConnectorError as exc:
        if exc.outcome is Outcome.NOT_FOUND:
            return None
        raise


async def _missing(client: HubSpotClient, definition: JSON) -> str:
    """For a checkbox property that exists: the asked options it lacks."""
    if not definition.get("options"):
        return ""
    existing = await _existing(client, definition["name"]) or {}
    have = {str(o.get("value")) for o in existing.get("options") or [] if isinstance(o, dict)}
    lacking = [o["value"] for o in definition["options"] if o["value"] not in have]
    if not lacking:
        return ""
    return f"; it lacks the options {', '.join(lacking)}: add them in HubSpot's property settings"
