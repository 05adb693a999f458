"""The web client (web/, built into web/dist) in Debian's Chromium against the real stack.

tests/e2e/web/flows.mjs drives three browser contexts (playwright-core): sign-up with SMS codes,
friendship through uploaded vCard/CSV address books (a suggestion that appears live once the
contact signs up and uploads), a live chat with receipts, typing, unread counts, edits, redaction
and cards (hostile card markup stays text), a picture uploaded and shown through authenticated
media, a long timeline that stays virtualized while scrolling back, a zhadui that reaches a friend
of a friend once the friend joins, group creation, the lost-connection banner, an app registered
on the open platform (secrets shown once, a refused setting in words, suspend), devices, sign-out,
sign-in by phone number, block and unblock. Every visible control on each main screen must have
an accessible name. Screenshots of the main screens land in var/screenshots/."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from plumbing.dev.stack import RunningStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "tests" / "e2e" / "web" / "flows.mjs"
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "var" / "screenshots"


def _require_built_client() -> None:
    if not (ROOT / "web" / "dist" / "index.html").is_file():
        raise AssertionError("web/dist is not built: run `make web` (make test does it first)")
    if not CHROMIUM.exists() or shutil.which("node") is None:
        raise AssertionError("the browser tests need node and Debian's chromium (.ci/run installs it)")


async def test_gateway_serves_the_client_with_a_strict_csp(stack: RunningStack) -> None:
    _require_built_client()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.base_url}/") as response:
            assert response.status == 200
            page = await response.text()
            csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
        assert "<script" in page and "<script>" not in page  # module scripts from files only, none inline
        asset = page.split('src="', 1)[1].split('"', 1)[0]
        async with http.get(f"{stack.base_url}{asset}") as response:
            assert response.status == 200
            assert "immutable" in response.headers["Cache-Control"]
            assert response.headers["Content-Security-Policy"] == csp
        for bad in ("/assets/..%2Findex.html", "/assets/nothing.js"):
            async with http.get(f"{stack.base_url}{bad}") as response:
                assert response.status == 404
                assert (await response.json())["errcode"] == "M_NOT_FOUND"


async def test_two_people_in_chromium(stack: RunningStack) -> None:
    _require_built_client()
    SHOTS.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(FLOWS),
        cwd=ROOT,
        env={
            "PATH": str(Path(shutil.which("node") or "node").parent),
            "BASE_URL": stack.base_url,
            "SMS_LOG": str(stack.log_path),
            "SHOTS": str(SHOTS),
            "CHROMIUM": str(CHROMIUM),
            "HOME": str(ROOT / "var"),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=280)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    steps = [line["step"] for line in lines if "step" in line]
    assert process.returncode == 0 and lines and lines[-1].get("ok") is True, output.decode()[-4000:]
    assert steps.count("signed up") == 3
    for expected in (
        "receipt seen by the sender",
        "unread count live",
        "typing seen on the other side",
        "edit and redaction seen",
        "cards rendered as cards; markup stayed text",
        "picture shown through authenticated media",
        "long timeline virtualized; scrollback by scrolling up",
        "friend of a friend sees the zhadui after the friend joined, with social proof",
        "offline banner and reconnect",
        "app registered, secrets shown once, suspended",
        "suggestion seen live after the contact signed up and uploaded",
        "blocked and unblocked",
        "app registered, secrets shown once, suspended",
        "suggestion seen live after the contact signed up and uploaded",
        "blocked and unblocked",
    ):
        assert expected in steps, steps
    for screen in ("signup", "chats", "conversation", "friends", "zhadui", "me", "apps"):
        for width in ("phone", "desktop"):
            assert (SHOTS / f"{screen}-{width}.png").stat().st_size > 5000
