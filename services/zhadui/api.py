"""gRPC API of the zhadui service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import grpc

from laiwang.zhadui.v1 import zhadui_pb2_grpc


class ZhaduiApi(zhadui_pb2_grpc.ZhaduiServiceServicer):
    def register(self, server: grpc.aio.Server) -> None:
        zhadui_pb2_grpc.add_ZhaduiServiceServicer_to_server(self, server)
