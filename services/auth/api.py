"""gRPC API of the auth service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import grpc

from laiwang.auth.v1 import auth_pb2_grpc


class AuthApi(auth_pb2_grpc.AuthServiceServicer):
    def register(self, server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self, server)
