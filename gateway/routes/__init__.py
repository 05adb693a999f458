"""HTTP route groups of the gateway.

Each module named in ROUTE_MODULES exposes:
  routes(deps: GatewayDeps) -> list[aiohttp.web.RouteDef]      (required)
  async startup(deps: GatewayDeps) -> None                     (optional: subscriptions, caches)
  async cleanup(deps: GatewayDeps) -> None                     (optional)
"""

from __future__ import annotations

import importlib
from types import ModuleType

ROUTE_MODULES: tuple[str, ...] = (
    "gateway.routes.accounts",
    "gateway.routes.accounts_phone",
    "gateway.routes.accounts_sso",
    "gateway.routes.rooms",
    "gateway.routes.sync",
    "gateway.routes.push",
    "gateway.routes.account_data",
    "gateway.routes.capabilities",
    "gateway.routes.e2e",
    "gateway.routes.media",
    "gateway.routes.zhadui",
    "gateway.routes.contacts",
    "gateway.routes.apps",
    "gateway.routes.oauth",
    "gateway.routes.partner",
    "gateway.routes.subscriptions",
    "gateway.routes.root",
)


def route_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in ROUTE_MODULES]
