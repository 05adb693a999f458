"""Composition root of the contacts service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.contacts.v1 import contacts_pb2
from plumbing import streams
from plumbing.service import Runtime, ServiceParts, run_service
from services.contacts.api import ContactsApi
from services.contacts.store import ContactsStore


async def build(runtime: Runtime) -> ServiceParts:
    store = ContactsStore(runtime.db)
    api = ContactsApi()
    return ServiceParts(
        service_names=[contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.CONTACTS],
    )


def main() -> None:
    run_service("contacts", build)
