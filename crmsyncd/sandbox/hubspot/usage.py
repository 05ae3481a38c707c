"""The HubSpot sandbox's request counts (`hub.requests`, by method and route template) by kind of
call, as the demo's report and the bench give them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

# The kinds in the order a report lists them.
KINDS = (
    "search",
    "batch read",
    "batch create",
    "batch update",
    "batch upsert",
    "batch archive",
    "archived list",
    "associations",
    "single object",
    "properties",
    "account",
    "oauth",
)


def request_kind(route: str) -> str:
    """ "POST /crm/v3/objects/contacts/batch/create" -> "batch create"."""
    method, _, path = route.partition(" ")
    parts = path.strip("/").split("/")
    if path.endswith("/search"):
        return "search"
    if "associations" in parts:
        return "associations"
    if parts[:3] == ["crm", "v3", "objects"]:
        if len(parts) == 6 and parts[4] == "batch":
            return f"batch {parts[5]}"
        # The connector lists only archived objects (its deletions); other lists count the same.
        return "archived list" if len(parts) == 4 and method == "GET" else "single object"
    if parts[:3] == ["crm", "v3", "properties"]:
        return "properties"
    if parts[:1] == ["oauth"]:
        return "oauth"
    return "account"


def request_kinds(requests: Mapping[str, int]) -> Counter[str]:
    """Requests by kind (429s included, as the routes counted them); `rate_limited` left out."""
    kinds: Counter[str] = Counter()
    for route, n in requests.items():
        if route != "rate_limited" and n:
            kinds[request_kind(route)] += n
    return kinds


def describe(kinds: Mapping[str, int]) -> str:
    """ "search 4, batch create 3, ..." in KINDS order, the zero ones left out."""
    ordered = sorted(kinds, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
    return ", ".join(f"{kind} {kinds[kind]}" for kind in ordered if kinds[kind])
