"""The content repository's rules: what an upload may be, who may fetch a media id, thumbnails.

No gRPC, Mongo or NATS here: blobs go through a `BlobStore` (media_store.py: GridFS), the
references through `MediaRefs` (the messaging stream). Pillow work is CPU-bound and runs in a
worker thread, so a big image never stalls the process's event loop.

Who may fetch (authenticated media): the uploader; a member (or former member) of a room with an
event whose content names the mxc URL (`url`, `info.thumbnail_url`); or a user sharing an
*encrypted* room with the uploader, since an encrypted event hides which media it refers to
(the media itself is then encrypted by the client). Decided at read time from the stored events,
so nothing can drift: a redacted event stops granting access.
"""

from __future__ import annotations

import asyncio
import io
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image, ImageOps, UnidentifiedImageError

from plumbing.domain_errors import DomainError, Errcode, ErrorKind, invalid, not_found, too_large

# Pillow format name -> MIME type, for the image types served and thumbnailed.
IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded
MAX_THUMBNAIL_SIDE = 1600
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_CONTENT_TYPE = re.compile(r"^[a-z0-9.+-]{1,64}/[a-z0-9.+-]{1,127}$")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class Blob:
    media_id: str
    uploader: str
    content_type: str
    filename: str
    content: bytes


class BlobStore(Protocol):
    async def put(self, blob: Blob) -> None: ...
    async def get(self, media_id: str) -> Blob | None: ...
    async def uploader(self, media_id: str) -> str | None: ...
    async def get_thumbnail(self, key: str) -> tuple[bytes, str] | None: ...
    async def put_thumbnail(self, key: str, content: bytes, content_type: str) -> None: ...


MayRead = Callable[[str, str, str], Awaitable[bool]]  # (requester, uploader, mxc url)


def checked_upload(content: bytes, content_type: str, limit: int) -> tuple[bytes, str]:
    """The bytes to store and their type: the declared type must fit the content; images are
    re-encoded without their metadata (EXIF with GPS location, XMP, comments)."""
    if len(content) > limit:
        raise too_large(f"the upload is larger than {limit} bytes")
    if not content:
        raise invalid("the upload is empty")
    declared = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not _CONTENT_TYPE.match(declared):
        raise invalid("Content-Type is not a MIME type")
    sniffed = _image_format(content)
    if declared.startswith("image/") or sniffed is not None:
        if sniffed is None or IMAGE_TYPES.get(sniffed) != declared:
            raise invalid(
                f"the content is not {declared} (it looks like {sniffed or 'no image'})",
            )
        return _without_metadata(content, sniffed), declared
    if declared in ("text/html", "application/xhtml+xml", "image/svg+xml") or _looks_like_markup(content):
        raise invalid("markup uploads are not accepted")
    return content, declared


def _image_format(content: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.verify()
            return str(image.format)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _looks_like_markup(content: bytes) -> bool:
    head = content[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<svg", b"<?xml"))


def _without_metadata(content: bytes, image_format: str) -> bytes:
    if image_format == "GIF":  # animation kept; GIF carries no EXIF location
        return content
    with Image.open(io.BytesIO(content)) as image:
        image.load()
        exif = image.getexif()
        if not exif and "xmp" not in image.info and "comment" not in image.info:
            return content
        oriented = ImageOps.exif_transpose(image)  # keep how it looked, then drop the tags
        out = io.BytesIO()
        params: dict[str, Any] = {"quality": 90} if image_format in ("JPEG", "WEBP") else {}
        oriented.save(out, format=image_format, **params)
        return out.getvalue()


def thumbnail(content: bytes, width: int, height: int, method: str) -> tuple[bytes, str]:
    """Per the spec: `scale` fits inside width x height keeping the aspect ratio, `crop` fills it
    exactly (cropping the centre); never larger than the original."""
    with Image.open(io.BytesIO(content)) as image:
        image.load()
        source_format = str(image.format)
        frame = ImageOps.exif_transpose(image)
        if method == "crop":
            result = ImageOps.fit(frame, (min(width, frame.width), min(height, frame.height)))
        else:
            result = frame.copy()
            result.thumbnail((width, height))
        keep_png = source_format in ("PNG", "GIF") or result.mode in ("RGBA", "LA", "P")
        out = io.BytesIO()
        if keep_png:
            result.save(out, format="PNG")
            return out.getvalue(), "image/png"
        result.convert("RGB").save(out, format="JPEG", quality=85)
        return out.getvalue(), "image/jpeg"


class Media:
    def __init__(self, blobs: BlobStore, server_name: str, may_read: MayRead, max_upload_bytes: int) -> None:
        self.blobs = blobs
        self.server_name = server_name
        self.may_read = may_read
        self.max_upload_bytes = max_upload_bytes

    async def upload(self, uploader: str, content: bytes, content_type: str, filename: str) -> str:
        if len(filename.encode()) > 255 or any(c in filename for c in "/\\\r\n\0"):
            raise invalid("bad filename")
        stored, declared = await asyncio.to_thread(checked_upload, content, content_type, self.max_upload_bytes)
        media_id = secrets.token_urlsafe(18)
        await self.blobs.put(Blob(media_id, uploader, declared, filename, stored))
        return f"mxc://{self.server_name}/{media_id}"

    async def _readable(self, requester: str, server_name: str, media_id: str) -> str:
        if not _MEDIA_ID.match(media_id) or not server_name:
            raise invalid("bad media id")
        if server_name != self.server_name:  # no federation: remote media cannot be fetched
            raise not_found("media not found")
        uploader = await self.blobs.uploader(media_id)
        mxc = f"mxc://{server_name}/{media_id}"
        if uploader is None or not (uploader == requester or await self.may_read(requester, uploader, mxc)):
            # The same answer for "absent" and "not yours": media ids are not probed.
            raise not_found("media not found")
        return uploader

    async def download(self, requester: str, server_name: str, media_id: str) -> Blob:
        await self._readable(requester, server_name, media_id)
        blob = await self.blobs.get(media_id)
        if blob is None:
            raise not_found("media not found")
        return blob

    async def thumbnail(
        self, requester: str, server_name: str, media_id: str, width: int, height: int, method: str
    ) -> tuple[bytes, str]:
        if method not in ("", "scale", "crop"):
            raise invalid("method must be scale or crop")
        if not (1 <= width <= MAX_THUMBNAIL_SIDE and 1 <= height <= MAX_THUMBNAIL_SIDE):
            raise invalid(f"width and height must be 1..{MAX_THUMBNAIL_SIDE}")
        await self._readable(requester, server_name, media_id)
        key = f"{media_id}|{width}x{height}|{method or 'scale'}"
        cached = await self.blobs.get_thumbnail(key)
        if cached is not None:
            return cached
        blob = await self.blobs.get(media_id)
        if blob is None:
            raise not_found("media not found")
        if blob.content_type not in IMAGE_TYPES.values():
            raise DomainError(Errcode.UNKNOWN, "no thumbnail for this media type", kind=ErrorKind.INVALID)
        content, content_type = await asyncio.to_thread(thumbnail, blob.content, width, height, method or "scale")
        await self.blobs.put_thumbnail(key, content, content_type)
        return content, content_type


RoomsOf = Callable[[str], Awaitable[dict[str, tuple[str, bool]]]]  # user -> {room: (membership, ever_joined)}


class Access:
    """The read rule above, as `MayRead`: references from `rooms_referencing(mxc)` (rooms with a
    clear event naming the URL), memberships from `rooms_of`, and `encrypted(room)`."""

    def __init__(
        self,
        rooms_referencing: Callable[[str], Awaitable[set[str]]],
        rooms_of: RoomsOf,
        encrypted: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.rooms_referencing = rooms_referencing
        self.rooms_of = rooms_of
        self.encrypted = encrypted

    async def __call__(self, requester: str, uploader: str, mxc: str) -> bool:
        readable = {
            room
            for room, (membership, ever) in (await self.rooms_of(requester)).items()
            if ever or membership == "join"
        }
        if readable & await self.rooms_referencing(mxc):
            return True
        shared = readable & {
            room for room, (membership, _) in (await self.rooms_of(uploader)).items() if membership == "join"
        }
        for room in sorted(shared):
            if await self.encrypted(room):
                return True
        return False
