"""`GET /`: the web client (web/, built into web/dist by `make web`), and `/about`, a short page for a
person who wants to know what this URL is.

Everything served here carries a strict Content-Security-Policy: scripts and styles only from this
origin (no inline code, no eval), API calls only to this origin, no frames, no plugins. Card images
may come from any http(s) host (they are `<img>` only); pictures sent in a conversation are fetched
with the access token (authenticated media) and shown from `blob:` URLs. Without a built client, `/` answers the
about page, so a gateway started from a checkout without node still says what it is.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.matrix import MatrixError

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: http: data: blob:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Vite's output names: hashed, flat, no path separators.
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.(js|css|wasm|svg|png|woff2)$")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Laiwang gateway</title>
<link rel="stylesheet" href="/about.css"></head>
<body>
<h1>Laiwang (来往) gateway</h1>
<p>This is the API endpoint of a Laiwang server: a Matrix homeserver (Client-Server API) for the
server name <code>{server_name}</code>, plus Laiwang's own extensions under <code>/_laiwang/</code>.
{client_line} Any Matrix client (matrix-nio, matrix-js-sdk, Element) works too: point it at
<code>{base_url}</code> as its homeserver URL.</p>
<ul>
<li><a href="/healthz">/healthz</a>: ready when every service is serving (JSON, 503 otherwise)</li>
<li><a href="/livez">/livez</a>: alive (the process answers; asks no downstream service)</li>
<li><a href="/_laiwang/client/v1/openapi.json">/_laiwang/client/v1/openapi.json</a>: the OpenAPI 3.1
document of the Laiwang extensions (contacts, friends, zhadui)</li>
<li><a href="/_matrix/client/versions">/_matrix/client/versions</a>: the Matrix versions spoken here</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
<p>Documentation: <code>README.md</code> (walkthrough: <code>make run</code>, <code>make demo</code>,
curl and matrix-nio) and <code>docs/</code> (auth, contacts, messaging, zhadui, web) in the source
repository.</p>
</body></html>
"""
_ABOUT_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
    "code{background:#f2f2f2;padding:0 .2rem}"
)


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def _dist(request: web.Request) -> Path:
    return Path(request.app[DEPS_KEY].config.web_dist_dir)


def _about_page(request: web.Request, has_client: bool) -> web.Response:
    config = request.app[DEPS_KEY].config
    client_line = (
        'The web client is at <a href="/">/</a>.'
        if has_client
        else "The web client is not built here (<code>make web</code> builds it)."
    )
    page = _PAGE.format(
        server_name=escape(config.server_name), base_url=escape(config.public_base_url), client_line=client_line
    )
    return web.Response(text=page, content_type="text/html")


async def root(request: web.Request) -> web.StreamResponse:
    index = _dist(request) / "index.html"
    if not index.is_file():
        return _secure(_about_page(request, has_client=False))
    # no-cache: a rebuilt client is picked up at the next load; the hashed assets are cached for good.
    response = web.Response(body=index.read_bytes(), content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return _secure(response)


async def about(request: web.Request) -> web.StreamResponse:
    return _secure(_about_page(request, has_client=(_dist(request) / "index.html").is_file()))


async def about_css(_: web.Request) -> web.StreamResponse:
    return _secure(web.Response(text=_ABOUT_CSS, content_type="text/css"))


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = _dist(request) / "assets" / name
    if not _ASSET.match(name) or not path.is_file():
        raise MatrixError(404, "M_NOT_FOUND", "no such asset")
    response = web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})
    return _secure(response)


def routes(_: GatewayDeps) -> list[web.RouteDef]:
    return [
        web.get("/", root),
        web.get("/about", about),
        web.get("/about.css", about_css),
        web.get("/assets/{name}", asset),
    ]
