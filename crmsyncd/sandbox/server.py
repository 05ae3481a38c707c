"""Starting and stopping sandboxes: a context manager for code and tests, and `crmsyncd sandbox`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

from crmsyncd.sandbox.base import SandboxServer
from crmsyncd.sandbox.crm import CrmSandbox
from crmsyncd.sandbox.ecosire import DEFAULT_ECOSIRE_RATE_LIMIT, EcosireSandbox
from crmsyncd.sandbox.seed import demo_dataset, load_dataset

S = TypeVar("S", bound=SandboxServer)


@asynccontextmanager
async def serve(server: S, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[S]:
    """`async with serve(EcosireSandbox(), port=8081) as eco: ...`; stopped on exit."""
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def serve_pair(
    host: str = "127.0.0.1",
    ecosire_port: int = 0,
    crm_port: int = 0,
    *,
    seed_demo: bool = False,
    ecosire: EcosireSandbox | None = None,
    crm: CrmSandbox | None = None,
) -> AsyncIterator[tuple[EcosireSandbox, CrmSandbox]]:
    """Both sandboxes at once, optionally loaded with `demo_dataset()`."""
    eco_server = ecosire if ecosire is not None else EcosireSandbox()
    crm_server = crm if crm is not None else CrmSandbox()
    if seed_demo:
        eco_records, crm_records = demo_dataset()
        load_dataset(eco_server, eco_records)
        load_dataset(crm_server, crm_records)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serve(eco_server, host, ecosire_port))
        await stack.enter_async_context(serve(crm_server, host, crm_port))
        yield eco_server, crm_server


async def run_sandbox(
    host: str,
    ecosire_port: int,
    crm_port: int,
    seed_demo: bool,
    *,
    ecosire_rate_limit: int | None = None,
    on_ready: Callable[[EcosireSandbox, CrmSandbox], object] | None = None,
) -> None:
    """Serve both sandboxes until cancelled, after printing how to reach them.

    The keys are printed on purpose: they are the sandbox's fixed test keys, not secrets.
    `ecosire_rate_limit`: ECOSIRE's requests per minute (None: the real API's 60), raised for a
    first sync that should take seconds (CI, the compose demo). `on_ready` (for tests) is called
    once both listen.
    """
    limit = DEFAULT_ECOSIRE_RATE_LIMIT if ecosire_rate_limit is None else ecosire_rate_limit
    pair = serve_pair(
        host, ecosire_port, crm_port, seed_demo=seed_demo, ecosire=EcosireSandbox(rate_limit_per_minute=limit)
    )
    async with pair as (eco, crm):
        print(f"ECOSIRE sandbox  ECOSIRE_API_URL={eco.url}  ECOSIRE_API_KEY={eco.api_key}")
        print(f"CRM sandbox      CRM_API_URL={crm.url}  CRM_API_KEY={crm.api_key}")
        print(f"admin endpoints  {eco.admin_url}  {crm.admin_url}", flush=True)
        if on_ready is not None:
            on_ready(eco, crm)
        await asyncio.Event().wait()  # until the caller cancels us (Ctrl-C in the CLI)
