"""Property definitions (`/crm/v3/properties/{objectType}`) and the checks of a written value.

Every value HubSpot stores is a string. What a write may hold follows the definition's `type`:
- `string`: anything; `email` must look like an address (INVALID_EMAIL).
- `number`: a decimal number (INVALID_INTEGER for anything else, HubSpot's code for both kinds).
- `datetime` / `date`: ISO 8601 or epoch milliseconds (INVALID_DATE), stored as ISO 8601 UTC
  with milliseconds (how v3 answers datetime properties).
- `enumeration`: one option's `value` (INVALID_OPTION); a `checkbox` field (multiple checkboxes)
  holds several values joined with `;`, each an option.
- read-only properties (`hs_object_id`, `lastmodifieddate`, `hs_lastmodifieddate`) refuse writes
  (READ_ONLY_VALUE).
A name no definition has is PROPERTY_DOESNT_EXIST. Values sent as JSON numbers or booleans are
taken as their string form, as HubSpot does; `null` and "" clear the property.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crmsyncd.domain.records import format_timestamp
from crmsyncd.sandbox.hubspot.errors import HubSpotError, PropertyProblem, validation

PROPERTY_TYPES = {"string", "number", "date", "datetime", "enumeration", "bool"}
FIELD_TYPES = {
    "textarea",
    "text",
    "date",
    "file",
    "number",
    "select",
    "radio",
    "checkbox",
    "booleancheckbox",
    "calculation_equation",
    "phonenumber",
    "html",
}
EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
READ_ONLY = {"hs_object_id", "lastmodifieddate", "hs_lastmodifieddate"}


@dataclass(slots=True)
class Option:
    label: str
    value: str
    display_order: int = -1
    hidden: bool = False

    def wire(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "displayOrder": self.display_order,
            "hidden": self.hidden,
        }


@dataclass(slots=True)
class PropertyDef:
    name: str
    label: str
    type: str
    field_type: str
    group_name: str
    options: list[Option] = field(default_factory=list)
    description: str = ""
    hubspot_defined: bool = True
    has_unique_value: bool = False
    created_at: str = "2020-01-01T00:00:00.000Z"

    @property
    def read_only(self) -> bool:
        return self.name in READ_ONLY

    def wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "description": self.description,
            "groupName": self.group_name,
            "options": [option.wire() for option in self.options],
            "displayOrder": -1,
            "calculated": False,
            "externalOptions": False,
            "hasUniqueValue": self.has_unique_value,
            "hidden": False,
            "hubspotDefined": self.hubspot_defined,
            "formField": not self.read_only,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "archived": False,
        }

    def clean(self, raw: object) -> tuple[str | None, PropertyProblem | None]:
        """The stored form of a written value (None clears it), or the problem with it."""
        if raw is None:
            return None, None
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, int | float):
            text = repr(raw) if isinstance(raw, float) else str(raw)
        elif isinstance(raw, str):
            text = raw
        else:
            return None, PropertyProblem(self.name, "INVALID_PROPERTY_VALUE", f"{raw!r} is not a valid value")
        if self.read_only:
            return None, PropertyProblem(
                self.name, "READ_ONLY_VALUE", f'The property "{self.name}" is read-only and cannot be set'
            )
        if text == "":
            return None, None
        if self.name == "email":
            address = text.strip()
            if not EMAIL.fullmatch(address):
                return None, PropertyProblem(self.name, "INVALID_EMAIL", f"Email address {text} is invalid")
            # HubSpot keeps contact emails in lower case, whatever case was written.
            return address.lower(), None
        if self.type == "number":
            if not NUMBER.fullmatch(text.strip()):
                return None, PropertyProblem(self.name, "INVALID_INTEGER", f"{text} was not a valid number.")
            return text.strip(), None
        if self.type in ("datetime", "date"):
            moment = parse_moment(text)
            if moment is None:
                return None, PropertyProblem(
                    self.name, "INVALID_DATE", f"{text} was not a valid long or ISO 8601 date."
                )
            return format_timestamp(moment), None
        if self.type == "enumeration":
            allowed = {option.value for option in self.options}
            chosen = text.split(";") if self.field_type == "checkbox" else [text]
            wrong = [value for value in chosen if value not in allowed]
            if wrong:
                return None, PropertyProblem(
                    self.name,
                    "INVALID_OPTION",
                    f"{wrong[0]} was not one of the allowed options: [{', '.join(sorted(allowed))}]",
                )
            return text, None
        if self.type == "bool":
            if text.lower() not in ("true", "false"):
                return None, PropertyProblem(self.name, "INVALID_BOOLEAN", f"{text} is not a valid boolean")
            return text.lower(), None
        return text, None


def parse_moment(text: str) -> datetime | None:
    """Epoch milliseconds or ISO 8601 (a bare date is midnight UTC), as HubSpot accepts both."""
    value = text.strip()
    if re.fullmatch(r"-?\d+", value):
        try:
            return datetime.fromtimestamp(int(value) / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _text(name: str, label: str, group: str, field_type: str = "text") -> PropertyDef:
    return PropertyDef(name, label, "string", field_type, group)


def _stamp(name: str, label: str, group: str) -> PropertyDef:
    return PropertyDef(name, label, "datetime", "date", group)


DEAL_STAGES = [
    ("appointmentscheduled", "Appointment Scheduled"),
    ("qualifiedtobuy", "Qualified To Buy"),
    ("presentationscheduled", "Presentation Scheduled"),
    ("decisionmakerboughtin", "Decision Maker Bought-In"),
    ("contractsent", "Contract Sent"),
    ("closedwon", "Closed Won"),
    ("closedlost", "Closed Lost"),
]


def default_properties(object_type: str) -> dict[str, PropertyDef]:
    """The HubSpot-defined properties a fresh portal has (the ones a sync touches)."""
    if object_type == "contacts":
        group = "contactinformation"
        defs = [
            _text("email", "Email", group),
            _text("firstname", "First Name", group),
            _text("lastname", "Last Name", group),
            _text("phone", "Phone Number", group, "phonenumber"),
            _text("company", "Company Name", group),
            _text("jobtitle", "Job Title", group),
            _stamp("createdate", "Create Date", group),
            _stamp("lastmodifieddate", "Last Modified Date", group),
            PropertyDef("hs_object_id", "Record ID", "number", "number", group),
        ]
    elif object_type == "deals":
        group = "dealinformation"
        defs = [
            _text("dealname", "Deal Name", group),
            PropertyDef("amount", "Amount", "number", "number", group),
            PropertyDef(
                "deal_currency_code",
                "Currency",
                "enumeration",
                "select",
                group,
                [Option(code, code) for code in ("EUR", "GBP", "USD")],
            ),
            PropertyDef(
                "dealstage",
                "Deal Stage",
                "enumeration",
                "radio",
                group,
                [Option(label, value, order) for order, (value, label) in enumerate(DEAL_STAGES)],
            ),
            PropertyDef(
                "pipeline", "Pipeline", "enumeration", "select", group, [Option("Sales Pipeline", "default")]
            ),
            _stamp("closedate", "Close Date", group),
            _stamp("createdate", "Create Date", group),
            _stamp("hs_lastmodifieddate", "Last Modified Date", group),
            PropertyDef("hs_object_id", "Record ID", "number", "number", group),
        ]
    else:
        raise KeyError(object_type)
    return {definition.name: definition for definition in defs}


def definition_from_request(body: object, now: str) -> PropertyDef:
    """A custom property from a `POST /crm/v3/properties/{objectType}` body, or a 400 naming
    the field at fault."""
    if not isinstance(body, dict):
        raise validation("The request body must be a JSON object")
    missing = [key for key in ("name", "label", "type", "fieldType", "groupName") if not body.get(key)]
    if missing:
        raise validation(f"Missing required fields: {', '.join(missing)}", fields=missing)
    name, kind, field_type = str(body["name"]), str(body["type"]), str(body["fieldType"])
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise validation(f"Property name {name!r} must be lower case letters, digits and underscores")
    if kind not in PROPERTY_TYPES:
        raise validation(f"{kind} is not a valid property type", type=[kind])
    if field_type not in FIELD_TYPES:
        raise validation(f"{field_type} is not a valid field type", fieldType=[field_type])
    options: list[Option] = []
    for index, raw in enumerate(body.get("options") or []):
        if not isinstance(raw, dict) or not raw.get("value") or not raw.get("label"):
            raise validation(f"options[{index}] needs a label and a value")
        order = raw.get("displayOrder")
        options.append(
            Option(
                str(raw["label"]),
                str(raw["value"]),
                int(order) if isinstance(order, int) else index,
                bool(raw.get("hidden", False)),
            )
        )
    if kind == "enumeration" and not options:
        raise validation(f"Property {name} of type enumeration needs options", options=[])
    return PropertyDef(
        name=name,
        label=str(body["label"]),
        type=kind,
        field_type=field_type,
        group_name=str(body["groupName"]),
        options=options,
        description=str(body.get("description") or ""),
        hubspot_defined=False,
        has_unique_value=bool(body.get("hasUniqueValue", False)),
        created_at=now,
    )


def already_exists(name: str) -> HubSpotError:
    return HubSpotError(
        409,
        "OBJECT_ALREADY_EXISTS",
        f"A property named '{name}' already exists.",
        sub_category="PropertyValidationError.PROPERTY_ALREADY_EXISTS",
        context={"name": [name]},
    )
