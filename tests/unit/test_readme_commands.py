"""`make test`'s doc check: what the README tells a person to type exists.

Every `make` target a doc names is a target and `make help` lists every target; every setting the
README names is read by the code; every HTTP path it shows is a route of the gateway; every file or
folder it points at is in the repository; the pytest markers it suggests are registered. The
README's curl and matrix-nio walkthroughs themselves run in tests/e2e/test_readme_walkthrough.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from gateway.app import GatewayDeps, create_app
from gateway.config import GatewayConfig
from gateway.downstream import Downstream
from gateway.routes import route_modules
from plumbing.config import SERVICES, Env

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = [
    ROOT / "README.md",
    ROOT / "bench" / "README.md",
    ROOT / "deploy" / "k8s" / "README.md",
    *ROOT.glob("docs/*.md"),
]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)
# Produced by running things, not kept in the repository.
GENERATED = ("var/", ".venv/", "node_modules/", "web/dist", "gen/laiwang")


def spans_of(text: str) -> list[str]:
    """Inline code spans outside fenced blocks (a span may wrap onto the next line)."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", FENCE.sub("", text))]


def code_of(text: str) -> list[str]:
    """Inline code spans, then each fenced block whole."""
    return spans_of(text) + [body for _, body in FENCE.findall(text)]


def shell_blocks(text: str) -> list[str]:
    return [body for language, body in FENCE.findall(text) if language == "sh"]


def help_targets() -> set[str]:
    listed = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"^  make (\S+)", listed, re.MULTILINE))


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_help_lists_every_target_and_every_named_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    rules = set(re.findall(r"^([a-z][a-z-]*):(?!=)", makefile, re.MULTILINE))
    phony = set(
        re.search(r"^\.PHONY:(.*?)(?<!\\)\n", makefile, re.MULTILINE | re.DOTALL).group(1).replace("\\", " ").split()
    )
    listed = help_targets()
    assert rules == listed, f"make help misses {sorted(rules - listed)}; lists unknown {sorted(listed - rules)}"
    assert rules <= phony, f"not .PHONY: {sorted(rules - phony)}"
    named = {
        (doc.relative_to(ROOT).as_posix(), target)
        for doc in DOCS
        for code in code_of(doc.read_text())
        for target in re.findall(r"(?:^|[\s;(&|])make ([a-z][a-z-]*)", code)
    }
    assert ("README.md", "demo") in named  # the extraction finds what it should
    assert not {pair for pair in named if pair[1] not in listed}, sorted(p for p in named if p[1] not in listed)


def source_text() -> str:
    return "\n".join(
        path.read_text() for folder in ("plumbing", "services", "gateway") for path in (ROOT / folder).rglob("*.py")
    )


def test_every_setting_the_readme_names_is_read_by_the_code() -> None:
    spans = spans_of(README)
    names = {n for span in spans for n in re.findall(r"(?<![\w$/.-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b", span)}
    assert {"GATEWAY_PORT", "MESSAGING_INVITE_POLICY", "AUTH_DEV_SMS_LOG"} <= names  # the extraction works
    source = source_text()
    # The gateway reads f"{name.upper()}_ADDR" for every service.
    derived = {f"{service.upper()}_ADDR" for service in SERVICES} if 'f"{name.upper()}_ADDR"' in source else set()
    unread = sorted(n for n in names if f'"{n}"' not in source and f"'{n}'" not in source and n not in derived)
    assert not unread, f"the README names settings (or error codes) no code reads: {unread}"


def gateway_routes() -> list[tuple[str, re.Pattern[str]]]:
    config = GatewayConfig.from_env(Env({}))
    deps = GatewayDeps(config=config, downstream=Downstream(config.service_addresses))
    app = create_app(deps, route_groups=[module.routes(deps) for module in route_modules()])
    routes = []
    for route in app.router.routes():
        if route.resource is None:
            continue
        canonical = route.resource.canonical
        pattern = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(canonical))
        routes.append((route.method, re.compile(pattern + r"/?")))
    return routes


def readme_paths() -> set[str]:
    """HTTP paths the README shows: in its prose code and in its shell blocks (their $V3, $V1 expanded)."""
    text = "\n".join(spans_of(README))
    for block in shell_blocks(README):
        text += "\n" + block.replace("$V3", "/_matrix/client/v3").replace("$V1", "/_laiwang/client/v1")
    text = re.sub(r"https?://127\.0\.0\.1:\d+", "", text).replace("$LW", "")
    found = re.findall(r"(/_matrix/[^\s`'\";?)]+|/_laiwang/[^\s`'\";?)]+|/(?:healthz|livez|metrics|about)\b)", text)
    # Shell variables stand for one path segment each; the bare API prefixes are no endpoints.
    paths = {re.sub(r"\$\{?\w+\}?", "X", path).rstrip(".,") for path in found}
    return {p for p in paths if p.rstrip("/") not in ("/_matrix/client/v3", "/_laiwang/client/v1")}


def test_every_path_the_readme_shows_is_a_gateway_route() -> None:
    routes = gateway_routes()
    paths = readme_paths()
    assert {"/_matrix/client/v3/register", "/_laiwang/client/v1/friends/requests", "/healthz"} <= paths, paths
    # A family (`/_laiwang/client/v1/contacts/*`) needs one route under it.
    unrouted = sorted(
        p
        for p in paths
        if not any(pattern.fullmatch(p) for _, pattern in routes)
        and not (p.endswith("/*") and any(pattern.pattern.startswith(re.escape(p[:-1])) for _, pattern in routes))
    )
    assert not unrouted, f"the README shows paths the gateway does not serve: {unrouted}"


def test_every_file_the_readme_points_at_exists() -> None:
    links = re.findall(r"\]\(([^)#\s]+)\)", README)
    top = {entry.name for entry in ROOT.iterdir()}
    spans = [
        span
        for span in spans_of(README)
        if re.fullmatch(r"[\w.-]+(/[\w.-]*)*", span) and ("/" in span or "." in span) and span.split("/")[0] in top
    ]
    spans += re.findall(r"(?:kubectl apply -k|cd) (\S+)", "\n".join(code_of(README)))
    pointed = {p.rstrip("/") for p in links + spans if not p.startswith(("http", *GENERATED))}
    assert {"docs/contacts.md", "deploy/k8s/overlays/dev", "constraints.txt"} <= pointed, pointed
    missing = sorted(p for p in pointed if not (ROOT / p).exists())
    assert not missing, f"the README points at what the repository does not have: {missing}"


def test_the_pytest_markers_the_readme_suggests_are_registered() -> None:
    suggested = {m for code in code_of(README) for m in re.findall(r"pytest -m (\w+)", code)}
    for alternatives in re.findall(r"pytest -m unit` \(or `(\w+)`, `(\w+)`\)", README):
        suggested |= set(alternatives)
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    registered = {marker.split(":")[0] for marker in markers}
    assert {"unit", "e2e"} <= suggested and not suggested - registered, (suggested, registered)
