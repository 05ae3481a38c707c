"""HubSpot's built-in mapping (default_mapping.toml beside this module): the guide's table with
HubSpot's property names, for CRMSYNCD_CRM=hubspot without a CRMSYNCD_MAPPING of the user's."""

from __future__ import annotations

from importlib import resources

from crmsyncd.domain.mapping import MappingSpec, parse_mapping

SOURCE = "built-in HubSpot mapping"


def default_mapping(*, allow_duplicates: bool = False) -> MappingSpec:
    text = resources.files("crmsyncd.connectors.hubspot").joinpath("default_mapping.toml").read_text("utf-8")
    return parse_mapping(text, SOURCE, allow_duplicates=allow_duplicates)
