"""In-process fake ECOSIRE and custom-CRM servers for the demo, the tests and `crmsyncd sandbox`."""

from crmsyncd.sandbox.base import SandboxServer
from crmsyncd.sandbox.crm import DEFAULT_CRM_KEY, CrmSandbox
from crmsyncd.sandbox.ecosire import DEFAULT_ECOSIRE_KEY, EcosireSandbox
from crmsyncd.sandbox.faults import FaultPlan
from crmsyncd.sandbox.seed import demo_dataset, load_dataset
from crmsyncd.sandbox.server import run_sandbox, serve, serve_pair

__all__ = [
    "DEFAULT_CRM_KEY",
    "DEFAULT_ECOSIRE_KEY",
    "CrmSandbox",
    "EcosireSandbox",
    "FaultPlan",
    "SandboxServer",
    "demo_dataset",
    "load_dataset",
    "run_sandbox",
    "serve",
    "serve_pair",
]
