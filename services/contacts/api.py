"""gRPC API of the contacts service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import grpc

from laiwang.contacts.v1 import contacts_pb2_grpc


class ContactsApi(contacts_pb2_grpc.ContactsServiceServicer):
    def register(self, server: grpc.aio.Server) -> None:
        contacts_pb2_grpc.add_ContactsServiceServicer_to_server(self, server)
