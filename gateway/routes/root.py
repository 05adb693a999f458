"""`GET /`: a short page for a person who opens the gateway's URL in a browser.

It says what this URL is (a Matrix homeserver with Laiwang extensions, for clients, not a web
app yet) and links to what can be looked at from a browser: readiness, the OpenAPI document,
the Matrix versions. Until the web client exists this is all the gateway serves at `/`.
"""

from __future__ import annotations

from html import escape

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Laiwang gateway</title>
<style>body{{font-family:system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
code{{background:#f2f2f2;padding:0 .2rem}}</style></head>
<body>
<h1>Laiwang (来往) gateway</h1>
<p>This is the API endpoint of a Laiwang server: a Matrix homeserver (Client-Server API) for the
server name <code>{server_name}</code>, plus Laiwang's own extensions under <code>/_laiwang/</code>.
There is no web client here yet: point a Matrix client (matrix-nio, matrix-js-sdk, Element) at
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
curl and matrix-nio) and <code>docs/</code> (auth, contacts, messaging, zhadui) in the source
repository.</p>
</body></html>
"""


async def root(request: web.Request) -> web.Response:
    config = request.app[DEPS_KEY].config
    page = _PAGE.format(server_name=escape(config.server_name), base_url=escape(config.public_base_url))
    return web.Response(text=page, content_type="text/html")


def routes(_: GatewayDeps) -> list[web.RouteDef]:
    return [web.get("/", root)]
