"""The content repository through the gateway: an image uploaded, sent as m.image, downloaded and
thumbnailed by the receiver; EXIF location gone; non-members refused; bad inputs get Matrix errors."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import ExifTags, Image

from tests.conftest import RunningStack, launch_stack
from tests.matrix_support import RegisteredUser, register_user

pytestmark = pytest.mark.e2e

V3 = "/_matrix/client/v3"
V1_MEDIA = "/_matrix/client/v1/media"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
async def media_stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    env = {"MESSAGING_INVITE_POLICY": "anyone", "MEDIA_MAX_UPLOAD_BYTES": str(LIMIT)}
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("media-stack"), env=env) as running:
        yield running


def _photo_with_location() -> bytes:
    image = Image.new("RGB", (640, 480), (200, 30, 30))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (30.0, 15.0, 0.0)}
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()


async def _upload(
    s: aiohttp.ClientSession, base: str, user: RegisteredUser, data: bytes, ctype: str
) -> tuple[int, Any]:
    headers = {**user.headers, "Content-Type": ctype}
    async with s.post(f"{base}/_matrix/media/v3/upload?filename=photo.jpg", data=data, headers=headers) as r:
        return r.status, await r.json()


async def test_image_upload_send_download_thumbnail_and_who_may_fetch(media_stack: RunningStack) -> None:
    base = media_stack.base_url
    alice = await register_user(base)
    bob = await register_user(base)
    stranger = await register_user(base)
    photo = _photo_with_location()
    assert Image.open(io.BytesIO(photo)).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input has a location
    async with aiohttp.ClientSession() as s:
        status, body = await _upload(s, base, alice, photo, "image/jpeg")
        assert status == 200, body
        mxc = body["content_uri"]
        assert mxc.startswith("mxc://")
        server_media = mxc.removeprefix("mxc://")

        async with s.post(f"{base}{V3}/createRoom", json={"invite": [bob.user_id]}, headers=alice.headers) as r:
            room_id = (await r.json())["room_id"]
        async with s.post(f"{base}{V3}/join/{room_id}", headers=bob.headers) as r:
            assert r.status == 200
        # Bob, a member, cannot fetch it before a message in the room names it.
        async with s.get(f"{base}{V1_MEDIA}/download/{server_media}", headers=bob.headers) as r:
            assert r.status == 404 and (await r.json())["errcode"] == "M_NOT_FOUND"
        content = {"msgtype": "m.image", "body": "photo.jpg", "url": mxc, "info": {"mimetype": "image/jpeg"}}
        async with s.put(
            f"{base}{V3}/rooms/{room_id}/send/m.room.message/t1", json=content, headers=alice.headers
        ) as r:
            assert r.status == 200, await r.text()

        async with s.get(f"{base}{V1_MEDIA}/download/{server_media}", headers=bob.headers) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            downloaded = await r.read()
        received = Image.open(io.BytesIO(downloaded))
        assert received.size == (640, 480)
        assert not received.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the location was stripped on upload

        url = f"{base}{V1_MEDIA}/thumbnail/{server_media}?width=96&height=96&method=crop"
        async with s.get(url, headers=bob.headers) as r:
            assert r.status == 200, await r.text()
            assert Image.open(io.BytesIO(await r.read())).size == (96, 96)
        async with s.get(url.replace("crop", "scale"), headers=bob.headers) as r:
            assert r.status == 200
            assert Image.open(io.BytesIO(await r.read())).size == (96, 72)  # aspect ratio kept

        # Not a member of a room that references it: the same 404 as for no such media.
        async with s.get(f"{base}{V1_MEDIA}/download/{server_media}", headers=stranger.headers) as r:
            assert r.status == 404 and (await r.json())["errcode"] == "M_NOT_FOUND"
        async with s.get(url, headers=stranger.headers) as r:
            assert r.status == 404
        async with s.get(f"{base}{V1_MEDIA}/download/{server_media}") as r:
            assert r.status == 401 and (await r.json())["errcode"] == "M_MISSING_TOKEN"
        # Legacy download: with a token, the same rule; without one, nothing.
        async with s.get(f"{base}/_matrix/media/v3/download/{server_media}", headers=bob.headers) as r:
            assert r.status == 200 and await r.read() == downloaded
        async with s.get(f"{base}/_matrix/media/v3/download/{server_media}") as r:
            assert r.status == 404

        async with s.get(f"{base}{V1_MEDIA}/config", headers=bob.headers) as r:
            assert (await r.json()) == {"m.upload.size": LIMIT}


async def test_media_bad_inputs_get_matrix_errors(media_stack: RunningStack) -> None:
    base = media_stack.base_url
    alice = await register_user(base)
    photo = _photo_with_location()
    async with aiohttp.ClientSession() as s:
        status, body = await _upload(s, base, alice, b"x" * (LIMIT + 1), "application/octet-stream")
        assert status == 413 and body["errcode"] == "M_TOO_LARGE", body
        status, body = await _upload(s, base, alice, photo, "image/png")
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body  # a JPEG declared as PNG
        status, body = await _upload(s, base, alice, b"not an image at all", "image/jpeg")
        assert status == 400, body
        status, body = await _upload(s, base, alice, b"<!DOCTYPE html><script>alert(1)</script>", "text/plain")
        assert status == 400, body
        status, body = await _upload(s, base, alice, b"", "text/plain")
        assert status == 400, body
        status, body = await _upload(s, base, alice, b"plain notes", "text/plain")
        assert status == 200, body
        text_media = body["content_uri"].removeprefix("mxc://")
        async with s.get(f"{base}{V1_MEDIA}/download/{text_media}", headers=alice.headers) as r:
            assert r.status == 200 and r.headers["Content-Disposition"].startswith("attachment")
        async with s.get(f"{base}{V1_MEDIA}/thumbnail/{text_media}?width=32&height=32", headers=alice.headers) as r:
            assert r.status == 400
        async with s.get(f"{base}{V1_MEDIA}/thumbnail/{text_media}", headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_MISSING_PARAM"
        async with s.get(f"{base}{V1_MEDIA}/download/localhost/bad$id", headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_INVALID_PARAM"
        async with s.get(f"{base}{V1_MEDIA}/download/elsewhere.example/abc", headers=alice.headers) as r:
            assert r.status == 404
        # An m.image whose url is not an mxc URL is refused by messaging.
        async with s.post(f"{base}{V3}/createRoom", json={}, headers=alice.headers) as r:
            room_id = (await r.json())["room_id"]
        bad = {"msgtype": "m.image", "body": "x", "url": "http://evil.example/x.png"}
        async with s.put(f"{base}{V3}/rooms/{room_id}/send/m.room.message/t1", json=bad, headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_BAD_JSON"
