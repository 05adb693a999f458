"""gRPC API of the messaging service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import grpc

from laiwang.messaging.v1 import messaging_pb2_grpc


class MessagingApi(messaging_pb2_grpc.MessagingServiceServicer):
    def register(self, server: grpc.aio.Server) -> None:
        messaging_pb2_grpc.add_MessagingServiceServicer_to_server(self, server)
