"""The fake ECOSIRE API (shared/api/ecosire.md): what differs from the CRM is declared here.

Choices where the docs are silent, all "assumed" in the spec:
- Email validation is strict, like class-validator's IsEmail: no blanks anywhere (surrounding
  ones included), and the domain needs a dot and a top-level part of 2+ letters. So
  `ops@intranet` is refused here although the custom CRM accepts it.
- Validation failures are 422 with `message` as a list of strings (NestJS ValidationPipe style).
- `type` defaults to "person" on create; `organizationId` is set by the server, never written.
- Deleting a contact leaves its deals' `contactId` dangling (hard delete, no cascade).
- X-RateLimit-* go on every authenticated response while a limit is set; a 401 has none (no key,
  no window). A 429 never carries Retry-After.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from crmsyncd.domain.records import JSON, Side
from crmsyncd.sandbox.base import FAULT_RETRY_SECONDS, SandboxServer
from crmsyncd.sandbox.ratelimit import Quota
from crmsyncd.sandbox.schema import (
    Field,
    Schema,
    email,
    integer,
    matches,
    one_of,
    string_list,
    text,
    text_object,
)
from crmsyncd.sandbox.store import IdFactory, UuidV7Ids

DEFAULT_ECOSIRE_KEY = "eco_live_" + "sandbox0" * 3  # live keys: eco_live_ + 24 characters
DEFAULT_ECOSIRE_RATE_LIMIT = 60
ORGANIZATION_ID = "018e0000-0000-7000-8000-000000000001"

EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}")
CURRENCY = re.compile(r"[a-z]{3}")
ADDRESS_KEYS = ("street", "city", "state", "zip", "country")


def _search(value: str, record: JSON) -> bool:
    """Free text over name and email: case-insensitive substring, as the docs describe."""
    needle = value.strip().casefold()
    return any(needle in str(record.get(name) or "").casefold() for name in ("name", "email"))


CONTACTS = Schema(
    singular="contact",
    fields={
        "name": Field(text(nullable=False, non_empty=True), required=True),
        "email": Field(email(EMAIL, strip=False)),
        "phone": Field(text()),
        "type": Field(one_of("person", "company"), default=lambda: "person"),
        "website": Field(text()),
        "address": Field(text_object(ADDRESS_KEYS)),
        "tags": Field(string_list(), default=list),
    },
    server_fields={"organizationId": ORGANIZATION_ID},
    unique="email",
    unique_message="email already registered",
    sort_fields=("name", "email", "createdAt", "updatedAt"),
    filters={"search": _search, "type": lambda value, record: record.get("type") == value.strip()},
)

DEALS = Schema(
    singular="deal",
    fields={
        "title": Field(text(nullable=False, non_empty=True), required=True),
        "amount": Field(integer()),  # minor units (cents)
        "currency": Field(matches(CURRENCY, "a lowercase ISO 4217 currency code")),
        "stage": Field(text()),
        "contactId": Field(text()),
    },
    references={"contactId": ("contacts", "contactId must reference an existing contact")},
    sort_fields=("title", "amount", "createdAt", "updatedAt"),
)


class EcosireSandbox(SandboxServer):
    side: ClassVar[Side] = Side.ECOSIRE
    schemas: ClassVar[Mapping[str, Schema]] = {"contacts": CONTACTS, "deals": DEALS}
    sends_retry_after = False  # ECOSIRE documents no Retry-After: clients read X-RateLimit-Reset

    def __init__(
        self,
        api_key: str = DEFAULT_ECOSIRE_KEY,
        *,
        rate_limit_per_minute: int | None = DEFAULT_ECOSIRE_RATE_LIMIT,
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
        ids = UuidV7Ids(seed)  # one sequence for all resources, as one database would give
        return {"contacts": ids, "deals": ids}

    def _fault_quota(self) -> Quota:
        # ECOSIRE's 429 always carries X-RateLimit-*: a client has nothing else to wait on.
        limit = self.rate_limit_per_minute or DEFAULT_ECOSIRE_RATE_LIMIT
        return Quota(limit, 0, FAULT_RETRY_SECONDS, allowed=False)
