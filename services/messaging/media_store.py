"""Where media bytes live: GridFS on the service's MongoDB database (the default `BlobStore`).

Collections: `media` (one document per media id: uploader, type, filename, the GridFS file id),
GridFS buckets `media_blobs` (the uploads) and `media_thumbs` (generated thumbnails, by
media id + size + method). The metadata document is written after its bytes, so a crash between
the two leaves an orphaned blob, never a media id without content.
"""

from __future__ import annotations

from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from plumbing.mongo import IndexPlan
from services.messaging.media import Blob


class GridFsBlobs:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.blobs = AsyncGridFSBucket(db, bucket_name="media_blobs")
        self.thumbs = AsyncGridFSBucket(db, bucket_name="media_thumbs")

    @staticmethod
    def indexes() -> IndexPlan:
        return {"media_thumbs.files": [IndexModel([("filename", ASCENDING)])]}

    async def put(self, blob: Blob) -> None:
        file_id = await self.blobs.upload_from_stream(blob.media_id, blob.content)
        await self.db.media.insert_one(
            {
                "_id": blob.media_id,
                "uploader": blob.uploader,
                "content_type": blob.content_type,
                "filename": blob.filename,
                "size": len(blob.content),
                "file_id": file_id,
            }
        )

    async def uploader(self, media_id: str) -> str | None:
        doc = await self.db.media.find_one({"_id": media_id}, projection={"uploader": 1})
        return str(doc["uploader"]) if doc else None

    async def get(self, media_id: str) -> Blob | None:
        doc = await self.db.media.find_one({"_id": media_id})
        if doc is None:
            return None
        try:
            stream = await self.blobs.open_download_stream(doc["file_id"])
        except NoFile:
            return None
        content = await stream.read()
        return Blob(media_id, doc["uploader"], doc["content_type"], doc.get("filename", ""), content)

    async def get_thumbnail(self, key: str) -> tuple[bytes, str] | None:
        doc = await self.db["media_thumbs.files"].find_one({"filename": key})
        if doc is None:
            return None
        stream = await self.thumbs.open_download_stream(doc["_id"])
        return await stream.read(), str((doc.get("metadata") or {}).get("content_type", "image/jpeg"))

    async def put_thumbnail(self, key: str, content: bytes, content_type: str) -> None:
        # Two replicas may both generate the same thumbnail; either copy serves.
        await self.thumbs.upload_from_stream(key, content, metadata={"content_type": content_type})


class MediaRefs:
    """Which rooms reference an mxc URL in a clear event, read from the messaging stream itself
    (indexed on the two content fields that carry media), so references cannot drift from events."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "entries": [
                IndexModel([("event.content.url", ASCENDING)], sparse=True),
                IndexModel([("event.content.info.thumbnail_url", ASCENDING)], sparse=True),
            ]
        }

    async def rooms_referencing(self, mxc: str) -> set[str]:
        cursor = self.db.entries.find(
            {"kind": "event", "$or": [{"event.content.url": mxc}, {"event.content.info.thumbnail_url": mxc}]},
            projection={"room_id": 1},
            limit=1000,
        )
        return {doc["room_id"] async for doc in cursor}
