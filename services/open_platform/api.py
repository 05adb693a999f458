"""gRPC API of the open_platform service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import grpc

from laiwang.open_platform.v1 import open_platform_pb2_grpc


class OpenPlatformApi(open_platform_pb2_grpc.OpenPlatformServiceServicer):
    def register(self, server: grpc.aio.Server) -> None:
        open_platform_pb2_grpc.add_OpenPlatformServiceServicer_to_server(self, server)
