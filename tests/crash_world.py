"""A populated pair of sandboxes, deterministic user edits, the values each field must end with,
and an audit of both sides and the state tables against them.

The model knows, per contact (keyed by normalised email) and per deal (keyed by its title, unique
by construction), which values the sync rules must end with:
- contacts: name last_updated_wins, but each contact's name is only ever edited on one side, so the
  last edit must win; email ecosire_wins (never edited: ECOSIRE's form on both sides); tags/labels
  a union (tags are only ever added, so the end state is every tag ever seen); phone flows
  CRM -> ECOSIRE (edited only in the CRM; ECOSIRE keeps its own phone while the CRM has none);
  type flows ECOSIRE -> CRM (edited only in ECOSIRE; ECOSIRE gives a new contact "person").
- deals: amount (minor units), currency, stage, contact (by its email) equal on both sides; amount
  is edited on the deal's own side, stage on the other side once the counterpart exists, so a
  record carries concurrent edits of different fields from both sides.
Edits are drawn from a seeded random.Random and touch only records the test itself seeded (known
ids), so the same seed makes the same edits whatever the daemon managed before a kill."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from crmsyncd.domain.records import JSON, Side
from crmsyncd.sandbox import CrmSandbox, EcosireSandbox
from crmsyncd.store.db import Pool

FIRST = ("Ana", "Ben", "Chloe", "Dmitri", "Elena", "Farah", "Gustav", "Hana", "Ivan", "Jon", "Keiko", "Liam")
LAST = ("Silva", "Kim", "Novak", "Berg", "Okafor", "Rossi", "Tanaka", "Lund", "Costa", "Haddad")
TAGS = ("vip", "newsletter", "partner", "lead", "customer", "beta")
STAGES = ("lead", "qualified", "proposal", "negotiation", "won", "lost")
CURRENCIES = ("usd", "eur", "gbp")


def norm(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip().casefold() or None


@dataclass
class ContactModel:
    key: str
    email: str  # ECOSIRE's form: what both sides must hold
    origin: frozenset[Side]
    name: str
    name_side: Side
    tags: set[str]
    type: str  # ECOSIRE's type; the CRM's accountType must equal it
    eco_phone: str | None  # ECOSIRE's own phone, kept while the CRM has none
    crm_phone: str | None
    ids: dict[Side, str] = field(default_factory=dict)  # the records the test seeded
    edited: set[str] = field(default_factory=set)

    @property
    def expected_eco_phone(self) -> str | None:
        return self.crm_phone if self.crm_phone is not None else self.eco_phone


@dataclass
class DealModel:
    title: str
    origin: Side
    contact: str | None  # the referenced contact's key
    amount: int  # minor units
    currency: str  # lower case
    stage: str
    seeded_id: str
    edited: set[str] = field(default_factory=set)


@dataclass
class Mismatch:
    entity: str
    key: str
    field: str
    expected: Any
    ecosire: Any
    crm: Any
    ids: dict[str, list[str]]


@dataclass
class Audit:
    contacts: dict[str, int]  # records per side
    deals: dict[str, int]
    duplicates: list[str] = field(default_factory=list)  # one line per extra copy
    missing: list[str] = field(default_factory=list)  # a record without a counterpart
    unexpected: list[str] = field(default_factory=list)  # a record the model does not know
    mismatches: list[Mismatch] = field(default_factory=list)
    map_problems: list[str] = field(default_factory=list)
    # Records not in step: covered by an open sync_error row (parked) or not (lost).
    parked: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    edited_fields: int = 0  # (record, field) pairs the test edited
    lost_edits: int = 0  # of those, how many do not hold the last edit on both sides, unparked

    def triage(self) -> tuple[dict[str, int], list[str]]:
        """Problems that match a known bug's fingerprint (counted by bug), and all the others.

        - "lost create of a deal" (test_a_lost_deal_create_is_found_among_many_recent_deals):
          a deal held twice on a side, and the divergence and mapping trouble of its copies;
        - "echo taken for an edit" (test_a_kill_between_an_update_and_its_bookkeeping_...):
          a two-way last_updated_wins field of a single pair where both sides agree on a value
          that is not the last edit (our own write, read back as a user's change, won).
        Anything else (a contact duplicated, a record without counterpart, sides that disagree,
        a record the model does not know) is unexplained."""
        known: dict[str, int] = {"lost create of a deal": 0, "echo taken for an edit": 0}
        other: list[str] = []
        doubled = {line.split("'")[1] for line in self.duplicates if " deal '" in line}
        for line in self.duplicates:
            if " deal '" in line:
                known["lost create of a deal"] += 1
            else:
                other.append(f"duplicate: {line}")
        for m in self.mismatches:
            single = all(len(v) == 1 for v in m.ids.values())
            two_way = (m.entity, m.field) in {
                ("contacts", "name"),
                ("deals", "amount"),
                ("deals", "stage"),
                ("deals", "currency"),
            }
            if m.entity == "deals" and m.key in doubled:
                continue  # counted with its duplicate
            if single and two_way and m.ecosire == m.crm != m.expected:
                known["echo taken for an edit"] += 1
            else:
                other.append(f"mismatch: {m!r}")
        for line in self.map_problems:
            if not (line.startswith("deal '") and line.split("'")[1] in doubled):
                other.append(f"map: {line}")
        other += [f"missing: {x}" for x in self.missing]
        other += [f"unexpected: {x}" for x in self.unexpected]
        return known, other

    @property
    def clean(self) -> bool:
        return not (
            self.duplicates
            or self.missing
            or self.unexpected
            or self.mismatches
            or self.map_problems
            or self.lost
            or self.parked
        )

    def summary(self) -> str:
        lines = [
            f"contacts per side {self.contacts}, deals per side {self.deals}",
            f"duplicates found: {len(self.duplicates)}",
            f"records without a counterpart: {len(self.missing)}",
            f"records unknown to the model: {len(self.unexpected)}",
            f"fields not in step: {len(self.mismatches)}",
            f"edited fields: {self.edited_fields}, last edit lost: {self.lost_edits}",
            f"not in step and parked (open sync_error row): {len(self.parked)}",
            f"not in step and NOT parked (lost): {len(self.lost)}",
            f"record_map problems: {len(self.map_problems)}",
        ]
        for title, items in (
            ("duplicates", self.duplicates),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mismatches", [repr(m) for m in self.mismatches]),
            ("map", self.map_problems),
            ("lost", self.lost),
            ("parked", self.parked),
        ):
            for item in items[:12]:
                lines.append(f"  {title}: {item}")
            if len(items) > 12:
                lines.append(f"  {title}: ... {len(items) - 12} more")
        return "\n".join(lines)


class World:
    def __init__(self, eco: EcosireSandbox, crm: CrmSandbox, seed: int) -> None:
        self.eco = eco
        self.crm = crm
        self.rng = random.Random(seed)
        self.contacts: dict[str, ContactModel] = {}
        self.deals: dict[str, DealModel] = {}
        self._serial = 0
        self.edits = 0

    def server(self, side: Side) -> EcosireSandbox | CrmSandbox:
        return self.eco if side is Side.ECOSIRE else self.crm

    # -- records ----------------------------------------------------------------------------

    def add_contacts(self, eco_only: int, crm_only: int, shared: int) -> None:
        rng = self.rng
        eco_rows: list[tuple[ContactModel, JSON]] = []
        crm_rows: list[tuple[ContactModel, JSON]] = []
        plan = (
            [frozenset({Side.ECOSIRE})] * eco_only
            + [frozenset({Side.CRM})] * crm_only
            + [frozenset(Side)] * shared
        )
        for origin in plan:
            self._serial += 1
            n = self._serial
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)} {n:05d}"
            email = f"p{n:05d}.{rng.choice(LAST).lower()}@mail.example"
            kind = "company" if rng.random() < 0.2 else "person"
            eco_tags = set(rng.sample(TAGS, rng.randrange(0, 3)))
            crm_tags = set(rng.sample(TAGS, rng.randrange(0, 3)))
            eco_phone = f"+1 200 555 {n:05d}"
            crm_phone = f"+1 300 555 {n:05d}" if rng.random() < 0.5 else eco_phone
            in_eco, in_crm = Side.ECOSIRE in origin, Side.CRM in origin
            model = ContactModel(
                key=email,
                email=email,
                origin=origin,
                name=name,
                name_side=rng.choice(sorted(origin)),
                tags=(eco_tags if in_eco else set()) | (crm_tags if in_crm else set()),
                type=kind if in_eco else "person",
                eco_phone=eco_phone if in_eco else None,
                crm_phone=crm_phone if in_crm else None,
            )
            self.contacts[model.key] = model
            if in_eco:
                eco_rows.append(
                    (
                        model,
                        {
                            "name": name,
                            "email": email,
                            "type": kind,
                            "phone": eco_phone,
                            "tags": sorted(eco_tags),
                        },
                    )
                )
            if in_crm:
                variant = rng.choice((email, email.upper(), f"  {email} ", email.title()))
                crm_rows.append(
                    (
                        model,
                        {
                            "fullName": name,
                            "emailAddress": variant if in_eco else email,
                            "phoneNumber": crm_phone,
                            "accountType": rng.choice((kind, None, "company")) if in_eco else None,
                            "labels": sorted(crm_tags),
                        },
                    )
                )
        for side, rows in ((Side.ECOSIRE, eco_rows), (Side.CRM, crm_rows)):
            stored = self.server(side).seed("contacts", [body for _, body in rows])
            for (model, _), record in zip(rows, stored, strict=True):
                model.ids[side] = record["id"]

    def add_deals(self, per_side: int) -> None:
        rng = self.rng
        for side in Side:
            candidates = sorted(k for k, c in self.contacts.items() if side in c.origin)
            rows: list[tuple[DealModel, JSON]] = []
            for _ in range(per_side):
                self._serial += 1
                contact = rng.choice(candidates) if rng.random() < 0.9 else None
                amount = rng.randrange(1_000, 5_000_000)
                currency = rng.choice(CURRENCIES)
                stage = rng.choice(STAGES)
                title = f"Deal {side.value[:3]} {self._serial:05d}"
                model = DealModel(title, side, contact, amount, currency, stage, "")
                contact_id = None if contact is None else self.contacts[contact].ids[side]
                body: JSON = {
                    "title": title,
                    "amount": amount if side is Side.ECOSIRE else _decimal(amount),
                    "currency": currency if side is Side.ECOSIRE else currency.upper(),
                    "stage": stage,
                    "contactId": contact_id,
                }
                rows.append((model, body))
            stored = self.server(side).seed("deals", [body for _, body in rows])
            for (model, _), record in zip(rows, stored, strict=True):
                model.seeded_id = record["id"]
                self.deals[model.title] = model

    # -- what users do while the daemon is down ---------------------------------------------

    def edit_round(self, round_no: int, contacts: int, deals: int) -> None:
        rng = self.rng
        for i, key in enumerate(rng.sample(sorted(self.contacts), contacts)):
            model = self.contacts[key]
            choices = ["name", "tags"]
            if Side.CRM in model.origin:
                choices.append("phone")
            if Side.ECOSIRE in model.origin:
                choices.append("type")
            what = rng.choice(choices)
            tag_side = rng.choice(sorted(model.origin))
            if what == "name":
                side = model.name_side
                model.name = f"{model.name.split(' r')[0]} r{round_no}.{i}"
                self._edit(
                    side,
                    "contacts",
                    model.ids[side],
                    {"name" if side is Side.ECOSIRE else "fullName": model.name},
                )
            elif what == "tags":
                tag = f"r{round_no}-{i}"
                model.tags.add(tag)
                remote = "tags" if tag_side is Side.ECOSIRE else "labels"
                current = self.server(tag_side).get_record("contacts", model.ids[tag_side]) or {}
                self._edit(
                    tag_side,
                    "contacts",
                    model.ids[tag_side],
                    {remote: sorted({*(current.get(remote) or []), tag})},
                )
            elif what == "phone":
                model.crm_phone = f"+1 400 {round_no:03d} {i:04d}"
                self._edit(Side.CRM, "contacts", model.ids[Side.CRM], {"phoneNumber": model.crm_phone})
            else:
                model.type = "company" if model.type == "person" else "person"
                self._edit(Side.ECOSIRE, "contacts", model.ids[Side.ECOSIRE], {"type": model.type})
            model.edited.add(what)
        for i, title in enumerate(rng.sample(sorted(self.deals), deals)):
            deal = self.deals[title]
            amount = rng.randrange(1_000, 5_000_000)
            stage = rng.choice([s for s in STAGES if s != deal.stage])
            deal.amount = amount
            deal.edited.add("amount")
            self._edit(
                deal.origin,
                "deals",
                deal.seeded_id,
                {"amount": amount if deal.origin is Side.ECOSIRE else _decimal(amount)},
            )
            # The stage is edited on the other side, once the counterpart is there (and alone).
            other = deal.origin.other
            copies = [r for r in self.server(other).records("deals") if r.get("title") == title]
            if len(copies) == 1 and i % 2 == 0:
                deal.stage = stage
                deal.edited.add("stage")
                self._edit(other, "deals", copies[0]["id"], {"stage": stage})

    def _edit(self, side: Side, resource: str, record_id: str, fields: JSON) -> None:
        self.server(side).edit(resource, record_id, **fields)
        self.edits += 1

    # -- the audit ----------------------------------------------------------------------------

    async def audit(self, pool: Pool) -> Audit:
        eco_contacts = self.eco.records("contacts")
        crm_contacts = self.crm.records("contacts")
        eco_deals = self.eco.records("deals")
        crm_deals = self.crm.records("deals")
        audit = Audit(
            contacts={"ecosire": len(eco_contacts), "crm": len(crm_contacts)},
            deals={"ecosire": len(eco_deals), "crm": len(crm_deals)},
        )
        maps = await pool.fetch("SELECT id, entity, ecosire_id, crm_id, state FROM record_map")
        map_by: dict[tuple[str, Side, str], Any] = {}
        row: Any
        for row in maps:
            for side in Side:
                rid = row[f"{side.value}_id"]
                if rid is not None:
                    map_by[(row["entity"], side, rid)] = row
        open_rows = await pool.fetch(
            "SELECT entity, side, record_id, map_id, status, error_class, reason FROM sync_error"
            " WHERE status <> 'resolved'"
        )
        open_ids = {(r["entity"], r["record_id"]) for r in open_rows}
        open_maps = {r["map_id"] for r in open_rows if r["map_id"] is not None}

        def covered(entity: str, ids: list[tuple[Side, str]]) -> bool:
            for side, rid in ids:
                if (entity, rid) in open_ids:
                    return True
                row = map_by.get((entity, side, rid))
                if row is not None and row["id"] in open_maps:
                    return True
            return False

        # Contacts, by normalised email.
        by_key: dict[Side, dict[str, list[JSON]]] = {side: defaultdict(list) for side in Side}
        for side, records, email_field in (
            (Side.ECOSIRE, eco_contacts, "email"),
            (Side.CRM, crm_contacts, "emailAddress"),
        ):
            for record in records:
                key = norm(record.get(email_field))
                if key is None or key not in self.contacts:
                    audit.unexpected.append(
                        f"{side.value} contact {record['id']} {record.get(email_field)!r}"
                    )
                    continue
                by_key[side][key].append(record)
        contact_key_of: dict[Side, dict[str, str]] = {side: {} for side in Side}
        out_of_step: list[tuple[str, str, list[tuple[Side, str]]]] = []
        for key, model in sorted(self.contacts.items()):
            copies = {side: by_key[side].get(key, []) for side in Side}
            ids = [(side, r["id"]) for side in Side for r in copies[side]]
            for side in Side:
                for r in copies[side]:
                    contact_key_of[side][r["id"]] = key
                for extra in copies[side][1:]:
                    audit.duplicates.append(
                        f"{side.value} contact {key}: {extra['id']} (also {copies[side][0]['id']})"
                    )
            if any(not copies[side] for side in Side):
                # Without a counterpart is fine only with a reason: an open sync_error row.
                (audit.parked if covered("contacts", ids) else audit.missing).append(
                    f"contact {key}: { ({s.value: [r['id'] for r in copies[s]] for s in Side}) }"
                )
                if model.edited:
                    audit.edited_fields += len(model.edited)
                    if not covered("contacts", ids):
                        audit.lost_edits += len(model.edited)
                out_of_step.append(("contacts", key, ids))
                continue
            e, c = copies[Side.ECOSIRE][0], copies[Side.CRM][0]
            checks: dict[str, tuple[Any, Any, Any]] = {
                "name": (model.name, e.get("name"), c.get("fullName")),
                "email": (model.email, e.get("email"), c.get("emailAddress")),
                "tags": (sorted(model.tags), sorted(e.get("tags") or []), sorted(c.get("labels") or [])),
                "phone": (
                    (model.expected_eco_phone, model.crm_phone),
                    e.get("phone"),
                    c.get("phoneNumber"),
                ),
                "type": (model.type, e.get("type"), c.get("accountType")),
            }
            ident = {s.value: [r["id"] for r in copies[s]] for s in Side}
            bad_fields = []
            for name, (want, got_e, got_c) in checks.items():
                ok = (got_e, got_c) == want if name == "phone" else got_e == want and got_c == want
                if not ok:
                    bad_fields.append(name)
                    audit.mismatches.append(Mismatch("contacts", key, name, want, got_e, got_c, ident))
            row = map_by.get(("contacts", Side.ECOSIRE, e["id"]))
            if row is None or row["crm_id"] != c["id"]:
                audit.map_problems.append(
                    f"contact {key}: ecosire {e['id']} / crm {c['id']} mapped as "
                    f"{None if row is None else (row['ecosire_id'], row['crm_id'], row['state'])}"
                )
                bad_fields.append("map")
            audit.edited_fields += len(model.edited)
            if bad_fields or len(ids) > 2:
                out_of_step.append(("contacts", key, ids))
                if not covered("contacts", ids):
                    audit.lost_edits += len(model.edited & set(bad_fields))

        # Deals, by title (unique by construction); duplicates also counted by
        # (title, amount, contact) below through the title.
        deal_copies: dict[Side, dict[str, list[JSON]]] = {side: defaultdict(list) for side in Side}
        for side, records in ((Side.ECOSIRE, eco_deals), (Side.CRM, crm_deals)):
            for record in records:
                title = record.get("title")
                if not isinstance(title, str) or title not in self.deals:
                    audit.unexpected.append(f"{side.value} deal {record['id']} {title!r}")
                    continue
                deal_copies[side][title].append(record)
        for title, deal in sorted(self.deals.items()):
            copies = {side: deal_copies[side].get(title, []) for side in Side}
            ids = [(side, r["id"]) for side in Side for r in copies[side]]
            for side in Side:
                for extra in copies[side][1:]:
                    first = copies[side][0]
                    same = _deal_key(side, extra, contact_key_of) == _deal_key(side, first, contact_key_of)
                    audit.duplicates.append(
                        f"{side.value} deal {title!r}: {extra['id']} (also {first['id']}"
                        f"{', same title/amount/contact' if same else ', diverged'})"
                    )
            audit.edited_fields += len(deal.edited)
            if any(not copies[side] for side in Side):
                (audit.parked if covered("deals", ids) else audit.missing).append(
                    f"deal {title!r}: { ({s.value: [r['id'] for r in copies[s]] for s in Side}) }"
                )
                out_of_step.append(("deals", title, ids))
                if not covered("deals", ids):
                    audit.lost_edits += len(deal.edited)
                continue
            e, c = copies[Side.ECOSIRE][0], copies[Side.CRM][0]
            ident = {s.value: [r["id"] for r in copies[s]] for s in Side}
            crm_amount = c.get("amount")
            checks = {
                "amount": (
                    deal.amount,
                    e.get("amount"),
                    None if crm_amount is None else int(Decimal(str(crm_amount)) * 100),
                ),
                "currency": (deal.currency, e.get("currency"), str(c.get("currency") or "").lower() or None),
                "stage": (deal.stage, e.get("stage"), c.get("stage")),
                "contact": (
                    deal.contact,
                    contact_key_of[Side.ECOSIRE].get(str(e.get("contactId"))) if e.get("contactId") else None,
                    contact_key_of[Side.CRM].get(str(c.get("contactId"))) if c.get("contactId") else None,
                ),
            }
            bad_fields = []
            for name, (want, got_e, got_c) in checks.items():
                if not (got_e == want and got_c == want):
                    bad_fields.append(name)
                    audit.mismatches.append(Mismatch("deals", title, name, want, got_e, got_c, ident))
            deal_row: Any = map_by.get(("deals", Side.ECOSIRE, e["id"]))
            if deal_row is None or deal_row["crm_id"] != c["id"]:
                mapped = (
                    None
                    if deal_row is None
                    else (deal_row["ecosire_id"], deal_row["crm_id"], deal_row["state"])
                )
                audit.map_problems.append(
                    f"deal {title!r}: ecosire {e['id']} / crm {c['id']} mapped as {mapped}"
                )
                bad_fields.append("map")
            if bad_fields or len(ids) > 2:
                out_of_step.append(("deals", title, ids))
                if not covered("deals", ids):
                    audit.lost_edits += len(deal.edited & set(bad_fields))

        for entity, key, ids in out_of_step:
            line = f"{entity} {key} {[(s.value, rid) for s, rid in ids]}"
            (audit.parked if covered(entity, ids) else audit.lost).append(line)
        return audit


def _decimal(minor: int) -> float | int:
    amount = Decimal(minor) / 100
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def _deal_key(side: Side, record: JSON, contact_key_of: dict[Side, dict[str, str]]) -> tuple[Any, ...]:
    amount = record.get("amount")
    minor = amount if side is Side.ECOSIRE else (None if amount is None else int(Decimal(str(amount)) * 100))
    contact = record.get("contactId")
    return (record.get("title"), minor, contact_key_of[side].get(str(contact)) if contact else None)
