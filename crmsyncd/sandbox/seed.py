"""A deterministic demo dataset: two populated systems that overlap, as on a first sync.

`demo_dataset(seed, contacts)` draws `contacts` people and companies and places them:
- about a third on both sides, with the same email written differently on the CRM side (case
  changed, surrounding blanks), tags/labels that only partly agree, now and then another phone;
- one of those with a conflicting name ("Jon Smith" on ECOSIRE, "Jon Smith-Baker" in the CRM);
- the rest on one side only (a few without any email);
- plus one CRM-only contact, `ops@intranet`, that the CRM accepts and ECOSIRE's stricter email
  rule (a dot in the domain) refuses: the record a sync must park, not crash on;
- deals on each side referencing that side's contacts: ECOSIRE amounts in integer minor units
  with lowercase currency, CRM amounts as decimals with uppercase currency.

Records carry no createdAt/updatedAt (seeding stamps them). Only contacts that a deal references
carry an `id`, pre-drawn in the side's own id format from a range the server's generator does
not reach first (and it skips taken ids anyway), and those deals carry it as `contactId`: so
`server.seed("contacts", ...)` and `server.seed("deals", ...)` work in either order.
`load_dataset` seeds one side in one call.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from crmsyncd.domain.records import JSON
from crmsyncd.sandbox.base import SandboxServer
from crmsyncd.sandbox.store import CounterIds, UuidV7Ids

FIRST_NAMES = (
    "Ana", "Ben", "Chloe", "Dmitri", "Elena", "Farah", "Gustav", "Hana", "Ivan", "Jon",
    "Keiko", "Liam", "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara",
    "Umar", "Vera", "Wei", "Xenia", "Yusuf", "Zoe", "Amir", "Bianca", "Carlos", "Dana",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Garcia", "Müller", "Rossi", "Novak", "Kim", "Okafor", "Silva", "Haddad", "Berg",
    "Tanaka", "Dubois", "Kowalski", "Jensen", "Moreau", "Ali", "Costa", "Nguyen", "Brown", "Lund",
)  # fmt: skip
COMPANIES = (
    "Acme", "Globex", "Initech", "Umbrella", "Northwind", "Contoso", "Fabrikam", "Hooli",
    "Vandelay", "Wonka", "Stark", "Tyrell", "Soylent", "Cyberdyne", "Gringotts", "Oscorp",
)  # fmt: skip
MAIL_DOMAINS = ("mail.example", "inbox.example", "post.example")
CITIES = (("Berlin", "BE", "10115", "DE"), ("Austin", "TX", "73301", "US"),
          ("Lyon", "ARA", "69001", "FR"), ("Leeds", "ENG", "LS1 1AA", "GB"))  # fmt: skip
TAGS = ("vip", "newsletter", "partner", "lead", "customer", "churn-risk", "event-2026", "beta")
STAGES = ("lead", "qualified", "proposal", "negotiation", "won", "lost")
CURRENCIES = ("usd", "eur", "gbp")
PRODUCTS = ("renewal", "onboarding", "support plan", "licence upgrade", "consulting")

REJECTED_BY_ECOSIRE: JSON = {
    "fullName": "Ops Desk",
    "emailAddress": "ops@intranet",  # valid for the CRM, no dot in the domain for ECOSIRE
    "phoneNumber": "+1 555 0100",
    "accountType": "company",
    "labels": ["internal"],
}


def _ascii(text: str) -> str:
    return text.lower().replace("ü", "ue").replace(" ", "")


class _People:
    """Draws distinct people and companies with unique, ECOSIRE-valid emails."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._emails: set[str] = set()

    def _unique(self, local: str, domain: str) -> str:
        candidate, n = f"{local}@{domain}", 1
        while candidate in self._emails:
            n += 1
            candidate = f"{local}{n}@{domain}"
        self._emails.add(candidate)
        return candidate

    def draw(self) -> JSON:
        """One party in ECOSIRE's shape."""
        rng = self._rng
        city, state, zip_code, country = rng.choice(CITIES)
        party: JSON
        if rng.random() < 0.15:
            company = rng.choice(COMPANIES)
            suffix = rng.choice(("Ltd", "GmbH", "Inc", "SA"))
            domain = f"{_ascii(company)}.example"
            party = {
                "name": f"{company} {suffix}",
                "email": self._unique(rng.choice(("info", "sales", "billing")), domain),
                "type": "company",
                "website": f"https://www.{domain}",
            }
        else:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            local = f"{_ascii(first)}.{_ascii(last)}"
            party = {
                "name": f"{first} {last}",
                "email": self._unique(local, rng.choice(MAIL_DOMAINS)),
                "type": "person",
                "website": None,
            }
        party["phone"] = f"+1 {rng.randrange(200, 999)} 555 {rng.randrange(10_000):04d}"
        party["address"] = (
            {
                "street": f"{rng.randrange(1, 300)} Main St",
                "city": city,
                "state": state,
                "zip": zip_code,
                "country": country,
            }
            if rng.random() < 0.5
            else None
        )
        party["tags"] = sorted(rng.sample(TAGS, rng.randrange(0, 3)))
        return party


def _as_crm(party: JSON, rng: random.Random, *, overlap: bool) -> JSON:
    email = party["email"]
    phone = party["phone"]
    labels = list(party["tags"])
    if overlap:
        # The same person keyed in by someone else: the email differs in case or blanks only.
        if email is not None:
            email = rng.choice((email, email.upper(), f"  {email} ", email.title(), f"{email} "))
        labels = sorted({*labels[1:], *rng.sample(TAGS, rng.randrange(0, 2))})
        if rng.random() < 0.2:
            phone = f"+1 {rng.randrange(200, 999)} 555 {rng.randrange(10_000):04d}"
    return {
        "fullName": party["name"],
        "emailAddress": email,
        "phoneNumber": phone,
        "accountType": party["type"],
        "labels": labels,
    }


def _deals(
    rng: random.Random, contacts: list[JSON], count: int, new_id: UuidV7Ids | CounterIds, *,
    crm: bool,
) -> list[JSON]:  # fmt: skip
    deals: list[JSON] = []
    for _ in range(count):
        contact: JSON | None = rng.choice(contacts) if rng.random() < 0.9 else None
        if contact is not None and "id" not in contact:
            # Pre-drawn id placed first, so the record reads like any other.
            contact_id = new_id()
            items = list(contact.items())
            contact.clear()
            contact.update([("id", contact_id), *items])
        owner = "" if contact is None else str(contact.get("fullName") or contact.get("name"))
        title = f"{rng.choice(PRODUCTS).capitalize()} {owner}".strip()
        minor = rng.randrange(5_000, 5_000_000, 50)
        currency = rng.choice(CURRENCIES)
        deals.append(
            {
                "title": title,
                "amount": round(minor / 100, 2) if crm else minor,
                "currency": currency.upper() if crm else currency,
                "stage": rng.choice(STAGES),
                "contactId": None if contact is None else contact["id"],
            }
        )
    return deals


def demo_dataset(seed: int = 7, contacts: int = 300) -> tuple[dict[str, list[JSON]], dict[str, list[JSON]]]:
    """(ECOSIRE records by resource, CRM records by resource); the same for the same arguments."""
    rng = random.Random(seed)
    people = _People(rng)
    parties = [people.draw() for _ in range(contacts)]
    roles = ["both"] * round(contacts / 3)
    roles += ["ecosire", "crm"] * ((contacts - len(roles)) // 2)
    roles += ["ecosire"] * (contacts - len(roles))
    rng.shuffle(roles)

    ecosire: list[JSON] = []
    crm: list[JSON] = []
    conflict_made = False
    one_sided_without_email = 0
    for party, role in zip(parties, roles, strict=True):
        if role != "both" and one_sided_without_email < 3 and party["type"] == "person":
            party["email"] = None  # a few records nobody can match by email
            one_sided_without_email += 1
        if role in ("both", "ecosire"):
            ecosire.append(dict(party))
        if role in ("both", "crm"):
            record = _as_crm(party, rng, overlap=role == "both")
            if role == "both" and not conflict_made and party["type"] == "person":
                # Both sides renamed the same person differently since they last agreed.
                record["fullName"] = f"{party['name']}-{rng.choice(LAST_NAMES)}"
                conflict_made = True
            crm.append(record)
    crm.append(dict(REJECTED_BY_ECOSIRE))

    eco_deals = _deals(
        rng, ecosire, max(1, contacts // 6), UuidV7Ids(seed, base_ms=1_700_000_000_000), crm=False
    )
    # Pre-drawn ids come from ranges the servers' own generators reach late (c_900001...).
    crm_deals = _deals(rng, crm, max(1, contacts // 6), CounterIds("c_", start=900_000), crm=True)
    return {"contacts": ecosire, "deals": eco_deals}, {"contacts": crm, "deals": crm_deals}


def load_dataset(server: SandboxServer, records: Mapping[str, list[JSON]]) -> None:
    """Seed one side: contacts first (readable order; ids are pre-drawn, so not required)."""
    for resource in sorted(records, key=lambda name: name != "contacts"):
        server.seed(resource, records[resource])
