"""Every route the gateway registers under /_laiwang/ is in gateway/openapi.json (and nothing stale is)."""

from __future__ import annotations

import json
import re

import pytest

from gateway.app import GatewayDeps, create_app
from gateway.config import GatewayConfig
from gateway.downstream import Downstream
from gateway.routes import route_modules
from gateway.routes.contacts import OPENAPI_PATH
from plumbing.config import Env

pytestmark = pytest.mark.unit


def _registered() -> set[tuple[str, str]]:
    config = GatewayConfig.from_env(Env({}))
    deps = GatewayDeps(config=config, downstream=Downstream(config.service_addresses))
    modules = route_modules()
    app = create_app(deps, route_groups=[module.routes(deps) for module in modules])
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/_laiwang/") and route.method != "HEAD":
            found.add((route.method.lower(), path))
    return found


def _documented() -> set[tuple[str, str]]:
    document = json.loads(OPENAPI_PATH.read_text())
    return {
        (method, path) for path, item in document["paths"].items() for method in item if path.startswith("/_laiwang/")
    }


def test_every_laiwang_route_is_documented() -> None:
    missing = _registered() - _documented()
    assert not missing, f"add these to gateway/openapi.json: {sorted(missing)}"


def test_the_document_names_no_route_that_does_not_exist() -> None:
    stale = _documented() - _registered()
    assert not stale, f"gateway/openapi.json documents routes the gateway does not serve: {sorted(stale)}"


def test_document_is_openapi_3_1_with_resolvable_references() -> None:
    text = OPENAPI_PATH.read_text()
    document = json.loads(text)
    assert document["openapi"].startswith("3.1")
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = document
        for part in ref.split("/"):
            node = node[part]
        assert node
    lookup = document["paths"]["/_laiwang/client/v1/contacts/lookup"]["post"]
    assert "M_INVALID_PEPPER" in lookup["description"]
