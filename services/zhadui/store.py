"""Repository over the zhadui service's own collections; its indexes are declared here."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from plumbing.mongo import IndexPlan


class ZhaduiStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db

    def indexes(self) -> IndexPlan:
        return {}
