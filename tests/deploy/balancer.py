"""A small TCP load balancer on loopback, standing in for a Kubernetes Service (kube-proxy).

New connections go round-robin to the current backends ("ready endpoints"); a connection stays
with its backend until either side closes it, as with kube-proxy. `remove` is what the endpoints
controller does when a pod starts terminating: no new connections, existing ones untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools


class Balancer:
    def __init__(self) -> None:
        self.backends: list[int] = []
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, port: int) -> None:
        self.backends.append(port)

    def remove(self, port: int) -> None:
        self.backends.remove(port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.backends:
                return
            port = self.backends[next(self._turn) % len(self.backends)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return  # as a refused connection through kube-proxy: the client sees it closed
            self.connections += 1
            try:
                await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
            finally:
                upstream_writer.close()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()  # half-close: pass the end of one direction on
        except (ConnectionError, OSError):
            sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
