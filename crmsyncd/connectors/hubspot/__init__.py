"""The HubSpot CRM v3 connector (contacts and deals): `CRMSYNCD_CRM=hubspot`."""

from crmsyncd.connectors.hubspot.connector import HubSpotConnector
from crmsyncd.connectors.hubspot.settings import HubSpotSettings, load_hubspot_settings

__all__ = ["HubSpotConnector", "HubSpotSettings", "load_hubspot_settings"]
