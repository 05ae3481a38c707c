"""The fake "custom CRM" API (shared/api/custom-crm.md): its fields, rules and wording.

Differences from ECOSIRE that a sync must cope with:
- Email validation is lenient: something@something once surrounding blanks are trimmed, and the
  value is stored as sent (blanks included). `ops@intranet` is accepted here, refused by ECOSIRE.
- Validation failures are 422 with `message` as one string ("emailAddress must be an email"),
  several problems joined by "; ".
- Amounts are decimal numbers in major units, currencies uppercase ISO 4217.
- A 429 carries `Retry-After` seconds (and X-RateLimit-* when a limit is configured).
- `GET /contacts?emailAddress=E` is an exact match, trimmed and case-insensitive.
- Ids are opaque counters: `c_000001` for contacts, `d_000001` for deals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from crmsyncd.domain.records import JSON, Side
from crmsyncd.sandbox.base import SandboxServer
from crmsyncd.sandbox.responses import ApiError
from crmsyncd.sandbox.schema import (
    Field,
    Schema,
    email,
    matches,
    number,
    string_list,
    text,
    unique_key,
)
from crmsyncd.sandbox.store import CounterIds, IdFactory

DEFAULT_CRM_KEY = "crm-test-key"

EMAIL = re.compile(r"[^\s@]+@[^\s@]+")
CURRENCY = re.compile(r"[A-Z]{3}")
REQUIRED = "{name} is required"
LABELS = "{name} must be an array of strings"


def _email_equals(value: str, record: JSON) -> bool:
    wanted = unique_key(value)
    return wanted is not None and unique_key(record.get("emailAddress")) == wanted


CONTACTS = Schema(
    singular="contact",
    fields={
        "fullName": Field(text(nullable=False, non_empty=True), required=True),
        "emailAddress": Field(email(EMAIL, strip=True)),
        "phoneNumber": Field(text()),
        "accountType": Field(text()),
        "labels": Field(string_list(LABELS, LABELS), default=list),
    },
    required_message=REQUIRED,
    unique="emailAddress",
    unique_message="{name} already exists",
    filters={"emailAddress": _email_equals},
)

DEALS = Schema(
    singular="deal",
    fields={
        "title": Field(text(nullable=False, non_empty=True), required=True),
        "amount": Field(number()),  # major units, decimals allowed
        "currency": Field(matches(CURRENCY, "an uppercase ISO 4217 currency code")),
        "stage": Field(text()),
        "contactId": Field(text()),
    },
    required_message=REQUIRED,
    references={"contactId": ("contacts", "contactId must reference an existing contact")},
)


class CrmSandbox(SandboxServer):
    side: ClassVar[Side] = Side.CRM
    schemas: ClassVar[Mapping[str, Schema]] = {"contacts": CONTACTS, "deals": DEALS}
    sends_retry_after = True

    def __init__(
        self,
        api_key: str = DEFAULT_CRM_KEY,
        *,
        rate_limit_per_minute: int | None = None,
        rate_window: float = 60.0,
        latency: float = 0.0,
        clock_offset: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            api_key,
            rate_limit_per_minute=rate_limit_per_minute,
            rate_window=rate_window,
            latency=latency,
            clock_offset=clock_offset,
            seed=seed,
        )

    def _id_factories(self, seed: int) -> dict[str, IdFactory]:
        # Counters need no seed: they are deterministic by construction.
        return {"contacts": CounterIds("c_"), "deals": CounterIds("d_")}

    def _invalid(self, messages: list[str]) -> ApiError:
        return ApiError(422, "; ".join(messages))
