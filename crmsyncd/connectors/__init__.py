"""Connectors: one per remote API, all speaking the `Connector` port of `port`."""

from crmsyncd.connectors.base import ConnectorError, Outcome, Page, RequestStats
from crmsyncd.connectors.ecosire import EcosireConnector, EcosireSettings
from crmsyncd.connectors.http import ApiClient, RetryPolicy, classify_status, make_session
from crmsyncd.connectors.pacing import Clock, SystemClock
from crmsyncd.connectors.port import Connector
from crmsyncd.connectors.rest import RestConnector, RestSettings

__all__ = [
    "ApiClient",
    "Clock",
    "Connector",
    "ConnectorError",
    "EcosireConnector",
    "EcosireSettings",
    "Outcome",
    "Page",
    "RequestStats",
    "RestConnector",
    "RestSettings",
    "RetryPolicy",
    "SystemClock",
    "classify_status",
    "make_session",
]
