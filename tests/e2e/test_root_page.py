"""`GET /about` on the gateway tells a person what the URL is, and every link on it works (`/` is the web client)."""

from __future__ import annotations

import re

import aiohttp
import pytest

from plumbing.dev.stack import RunningStack

pytestmark = pytest.mark.e2e


async def test_root_page_says_what_this_is_and_its_links_answer(stack: RunningStack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.base_url}/about") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
        assert "Matrix homeserver" in page and stack.config.server_name in page
        links = re.findall(r'href="(/[^"]*)"', page)
        assert {"/healthz", "/_laiwang/client/v1/openapi.json"} <= set(links)
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        for link in links:
            async with http.get(f"{stack.base_url}{link}") as response:
                assert response.status == 200, link
