"""Deterministic contact sets for the benchmarks: two populated systems that partly overlap.

`contact_sets(per_side, shared, seed)` draws `per_side` contacts for each side, `shared` of them
the same person on both (same email, as the match key finds them). Of the shared ones a quarter
differ in their tags/labels and a quarter in their phone number, so a first sync has real merges
to do, not only links. Every email is unique and valid for both APIs. Records carry distinct,
increasing `createdAt`/`updatedAt` stamps in the past (one second apart, the two sides
interleaved), as data that grew over time has.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crmsyncd.domain.records import JSON, format_timestamp

FIRST = (
    "Ana", "Ben", "Chloe", "Dmitri", "Elena", "Farah", "Gustav", "Hana", "Ivan", "Jon",
    "Keiko", "Liam", "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara",
)  # fmt: skip
LAST = (
    "Smith", "Garcia", "Rossi", "Novak", "Kim", "Okafor", "Silva", "Haddad", "Berg", "Tanaka",
    "Dubois", "Kowalski", "Jensen", "Moreau", "Ali", "Costa", "Nguyen", "Brown", "Lund", "Ford",
)  # fmt: skip
DOMAINS = ("mail.example", "inbox.example", "post.example", "corp.example")
TAGS = ("vip", "newsletter", "partner", "lead", "customer", "beta")
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ContactSets:
    ecosire: list[JSON]
    crm: list[JSON]
    shared: int

    @property
    def distinct(self) -> int:
        """People in the union of both sides: what a complete sync leaves on each side."""
        return len(self.ecosire) + len(self.crm) - self.shared


def _person(rng: random.Random, n: int) -> JSON:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}.{n}@{rng.choice(DOMAINS)}",
        "phone": f"+1 {rng.randrange(200, 999)} 555 {rng.randrange(10_000):04d}",
        "type": "company" if rng.random() < 0.15 else "person",
        "tags": sorted(rng.sample(TAGS, rng.randrange(0, 3))),
    }


def _as_crm(person: JSON) -> JSON:
    return {
        "fullName": person["name"],
        "emailAddress": person["email"],
        "phoneNumber": person["phone"],
        "accountType": person["type"],
        "labels": list(person["tags"]),
    }


def _stamped(record: JSON, moment: datetime) -> JSON:
    text = format_timestamp(moment)
    return {**record, "createdAt": text, "updatedAt": text}


def contact_sets(per_side: int, shared: int, seed: int = 20261127) -> ContactSets:
    if not 0 <= shared <= per_side:
        raise ValueError("shared must be between 0 and per_side")
    rng = random.Random(seed)
    people = [_person(rng, n) for n in range(2 * per_side - shared)]
    both = people[:shared]
    eco_only = people[shared:per_side]
    crm_only = people[per_side:]
    ecosire = list(both) + eco_only
    crm = []
    for i, person in enumerate(both):
        record = _as_crm(person)
        if i % 4 == 1:  # tags edited on one side only since the two systems diverged
            record["labels"] = sorted({*record["labels"][1:], rng.choice(TAGS)})
        elif i % 4 == 2:  # another phone number keyed in on the CRM side
            record["phoneNumber"] = f"+1 {rng.randrange(200, 999)} 555 {rng.randrange(10_000):04d}"
        crm.append(record)
    crm += [_as_crm(person) for person in crm_only]
    rng.shuffle(ecosire)
    rng.shuffle(crm)
    # Interleaved stamps, one second apart: E0, C0, E1, C1, ... all in the past.
    ecosire = [_stamped(r, EPOCH + timedelta(seconds=2 * i)) for i, r in enumerate(ecosire)]
    crm = [_stamped(r, EPOCH + timedelta(seconds=2 * i + 1)) for i, r in enumerate(crm)]
    return ContactSets(ecosire, crm, shared)


def one_sided(count: int, seed: int = 20261127, chunk: int = 50_000) -> Iterator[list[JSON]]:
    """`count` ECOSIRE contacts in chunks (to seed a large set without holding it twice), with
    distinct stamps 10 ms apart."""
    rng = random.Random(seed)
    for start in range(0, count, chunk):
        yield [
            _stamped(_person(rng, n), EPOCH + timedelta(milliseconds=10 * n))
            for n in range(start, min(start + chunk, count))
        ]


def changed_name(name: str) -> str:
    return name + " Jr" if not name.endswith(" Jr") else name.removesuffix(" Jr")
