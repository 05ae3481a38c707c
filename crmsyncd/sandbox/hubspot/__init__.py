"""A fake HubSpot CRM v3 account for the tests, the demo and `crmsyncd sandbox --crm hubspot`."""

from crmsyncd.sandbox.hubspot.app import (
    DEFAULT_HUBSPOT_TOKEN,
    DEFAULT_PORTAL_ID,
    DEFAULT_SEARCH_LAG,
    HubSpotSandbox,
    run_hubspot_sandbox,
)
from crmsyncd.sandbox.hubspot.batch import BatchPolicy
from crmsyncd.sandbox.hubspot.oauth import OAuthApp
from crmsyncd.sandbox.hubspot.ratelimit import Limits

__all__ = [
    "DEFAULT_HUBSPOT_TOKEN",
    "DEFAULT_PORTAL_ID",
    "DEFAULT_SEARCH_LAG",
    "BatchPolicy",
    "HubSpotSandbox",
    "Limits",
    "OAuthApp",
    "run_hubspot_sandbox",
]
