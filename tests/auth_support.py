"""Test helpers for the auth service: the dev SMS sink, unique phone numbers, a real OIDC provider."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from tests.support import stop_process

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_SCRIPT = Path(__file__).resolve().parent / "e2e" / "oidc_provider.mjs"
_CODE = re.compile(r"DEV-SMS \S+ to (\+\d+): Your Laiwang verification code is (\d{6})")


def unique_cn_mobile() -> tuple[str, str]:
    """(national number, E.164) of a valid, random mainland China mobile number."""
    national = f"138{random.randint(0, 99_999_999):08d}"
    return national, f"+86{national}"


def sms_codes(sink: Path, msisdn: str) -> list[str]:
    """Codes the dev SMS provider has 'sent' to `msisdn`, oldest first."""
    if not sink.exists():
        return []
    return [code for to, code in _CODE.findall(sink.read_text()) if to == msisdn]


async def wait_for_code(sink: Path, msisdn: str, count: int = 1, timeout: float = 10.0) -> str:
    """The newest code once at least `count` codes reached `msisdn`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        codes = sms_codes(sink, msisdn)
        if len(codes) >= count:
            return codes[-1]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no SMS code for {msisdn} in {sink}")
        await asyncio.sleep(0.05)


@contextmanager
def oidc_provider(port: int, client_id: str, client_secret: str, redirect_uri: str) -> Iterator[str]:
    """Run panva's oidc-provider (npm) on 127.0.0.1:`port`; yields the issuer URL."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; the OIDC tests need it (npm ci installs oidc-provider)")
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_CLIENT_ID": client_id,
        "OIDC_CLIENT_SECRET": client_secret,
        "OIDC_REDIRECT_URI": redirect_uri,
    }
    # stderr carries the provider's development-mode warnings; only the "listening" line matters.
    process = subprocess.Popen(
        [node, str(PROVIDER_SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # empty when node exits
        if "listening" not in line:
            raise RuntimeError(f"oidc-provider did not start (exit code {process.poll()}): {line}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, timeout=5)


async def complete_provider_login(authorization_url: str, login_name: str, stop_at: str) -> str:
    """Drive the provider's own login and consent pages like a browser would.

    Follows redirects until one points at `stop_at` (our gateway's callback) and returns that URL.
    """
    jar = aiohttp.CookieJar(unsafe=True)  # cookies on a bare IP host (127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        url = authorization_url
        method, form = "GET", None
        for _ in range(20):
            async with browser.request(method, url, data=form, allow_redirects=False) as response:
                body = await response.text()
                if response.status in (302, 303):
                    url = urljoin(url, response.headers["Location"])
                    method, form = "GET", None
                    if url.startswith(stop_at):
                        return url
                    continue
                if response.status != 200:
                    raise AssertionError(f"provider answered {response.status}: {body[:500]}")
            action = re.search(r'<form[^>]*action="([^"]+)"', body)
            prompt = re.search(r'name="prompt" value="([^"]+)"', body)
            if action is None or prompt is None:
                raise AssertionError(f"unexpected provider page: {body[:500]}")
            url = urljoin(url, unescape(action.group(1)))
            method = "POST"
            form = {"prompt": prompt.group(1)}
            if prompt.group(1) == "login":
                form.update(login=login_name, password="any")
        raise AssertionError("too many provider round trips")
