"""The shared gRPC bootstrap: health, reflection, metrics, request ids, deadlines, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from plumbing.grpc_client import open_channel
from plumbing.grpc_context import remaining_seconds
from plumbing.grpc_server import GrpcServer
from plumbing.logs import request_id_var
from tests.deploy.balancer import Balancer
from tests.support import eventually, free_port

pytestmark = pytest.mark.integration

SERVICE = "laiwang.test.v1.ProbeService"


async def _wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode() or 0))
    return b"done"


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    remaining = remaining_seconds()
    return f"{request_id_var.get()}|{remaining if remaining is None else round(remaining, 1)}".encode()


async def _refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
    return b""


async def _store_down(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    from pymongo.errors import ServerSelectionTimeoutError

    try:
        raise ServerSelectionTimeoutError("127.0.0.1:1: [Errno 111] Connection refused")
    except ServerSelectionTimeoutError as exc:
        raise RuntimeError("a core wrapped it") from exc


def _register(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Wait": grpc.unary_unary_rpc_method_handler(_wait),
                    "Whoami": grpc.unary_unary_rpc_method_handler(_whoami),
                    "Refuse": grpc.unary_unary_rpc_method_handler(_refuse),
                    "StoreDown": grpc.unary_unary_rpc_method_handler(_store_down),
                },
            ),
        )
    )


@pytest.fixture
async def server():
    server = GrpcServer("127.0.0.1", free_port(), [SERVICE], [_register])
    await server.start()
    yield server
    await server.shutdown(0)


def _counter(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total", {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    )
    return value or 0.0


async def test_health_and_reflection(server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for response in responses:
            names = {s.name for s in response.list_services_response.service}
            break
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_metrics_count_calls_by_method_and_status(server) -> None:
    before_ok, before_denied = _counter("Wait", "OK"), _counter("Refuse", "PERMISSION_DENIED")
    channel = open_channel(f"127.0.0.1:{server.port}")
    await channel.unary_unary(f"/{SERVICE}/Wait")(b"0")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{SERVICE}/Refuse")(b"")
    await channel.close()
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _counter("Wait", "OK") == before_ok + 1
    assert _counter("Refuse", "PERMISSION_DENIED") == before_denied + 1
    labels = {"grpc_service": SERVICE, "grpc_method": "Wait"}
    count = REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels)
    assert count and count >= 1


async def test_request_id_and_deadline_travel_downstream(server) -> None:
    channel = open_channel(f"127.0.0.1:{server.port}")
    token = request_id_var.set("req-42")
    try:
        reply = await channel.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=3.0)
    finally:
        request_id_var.reset(token)
        await channel.close()
    request_id, remaining = reply.decode().split("|")
    assert request_id == "req-42"
    assert 2.0 < float(remaining) <= 3.0


async def test_shutdown_flips_health_and_drains_in_flight_calls() -> None:
    server = GrpcServer("127.0.0.1", free_port(), [SERVICE], [_register])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

    in_flight = asyncio.ensure_future(channel.unary_unary(f"/{SERVICE}/Wait")(b"0.6"))
    await eventually(lambda: _in_flight(server))
    started = time.monotonic()
    stopping = asyncio.create_task(server.shutdown(grace_seconds=5))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await watch.read() == grpc.aio.EOF  # the stream ends, so it does not hold the drain up
    assert await in_flight == b"done"  # the call that was running finished normally
    await stopping
    assert time.monotonic() - started < 4  # stopped once drained, not at the end of the grace period
    await channel.close()


async def test_replacing_a_replica_under_load_fails_no_call() -> None:
    """Two servers behind a TCP balancer (a Kubernetes Service), many calls in flight on shared
    channels; the busiest server is replaced four times (the new one added, the old one taken out
    of the balancer and shut down). A call that raced the GOAWAY used to fail: CANCELLED (grpc core
    dropped it unstarted) or UNAVAILABLE "Cancelling all calls" (stopped with no grace)."""
    balancer = Balancer()
    await balancer.start()
    servers: list[GrpcServer] = []

    async def add_server() -> None:
        server = GrpcServer("127.0.0.1", free_port(), [SERVICE], [_register])
        await server.start()
        servers.append(server)
        balancer.add(server.port)

    await add_server()
    await add_server()
    channels = [open_channel(balancer.address) for _ in range(6)]
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def caller(channel: grpc.aio.Channel, seconds: bytes) -> None:
        wait = channel.unary_unary(f"/{SERVICE}/Wait")
        while not stop.is_set():
            try:
                await wait(seconds, timeout=10)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[f"{error.code().name}: {error.details()}"] += 1

    callers = [
        asyncio.create_task(caller(channel, seconds))
        for channel in channels
        for seconds in (b"0", b"0.001", b"0.05", b"0.3")
        for _ in range(3)
    ]
    try:
        for _ in range(4):
            await eventually(lambda: _busy(servers))  # calls are in flight on the one that stops
            busiest = max(servers, key=lambda server: server._observability.in_flight)
            await add_server()
            balancer.remove(busiest.port)
            servers.remove(busiest)
            await busiest.shutdown(grace_seconds=5)
        ok_before = outcomes["OK"]
        await eventually(lambda: _more_than(outcomes, ok_before))  # the survivors still answer
    finally:
        stop.set()
        await asyncio.gather(*callers)
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.shutdown(0)
        await balancer.close()
    assert set(outcomes) == {"OK"}, outcomes


async def _busy(servers: list[GrpcServer]) -> bool:
    return any(server._observability.in_flight >= 3 for server in servers)


async def _more_than(outcomes: Counter[str], ok: int) -> bool:
    return outcomes["OK"] > ok + 100


async def test_a_server_slow_to_answer_a_new_connection_is_waited_for(server) -> None:
    """A busy server may send its HTTP/2 SETTINGS late: the call waits for the connection instead
    of failing (the connect timeout once was grpc.min_reconnect_backoff_ms, 100 ms)."""

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", server.port)
        first = await upstream_reader.read(65536)  # the server's SETTINGS
        await asyncio.sleep(0.5)  # the delay injected, well past 100 ms (not a wait for an event)
        writer.write(first)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    proxy = await asyncio.start_server(late, "127.0.0.1", 0)
    channel = open_channel(f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
    try:
        assert await channel.unary_unary(f"/{SERVICE}/Wait")(b"0", timeout=10) == b"done"
    finally:
        await channel.close()
        proxy.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.close()


async def test_a_taken_port_is_a_clear_startup_error(server) -> None:
    from plumbing.errors import StartupError

    second = GrpcServer("127.0.0.1", server.port, [SERVICE], [_register])
    with pytest.raises(StartupError, match=rf"127.0.0.1:{server.port} \(GRPC_PORT\): port already in use"):
        await second.start()


def test_every_channel_arg_we_set_is_one_grpc_core_reads() -> None:
    """Regression: an unknown channel-arg name is silently ignored (the server once kept its
    5-minute ping minimum and sent GOAWAY "too_many_pings" to idle channels)."""
    import grpc._cython as cython

    from plumbing.grpc_client import channel_options
    from plumbing.grpc_server import server_options

    core = b"".join(path.read_bytes() for path in Path(cython.__file__).parent.glob("cygrpc*.so"))
    for name, _ in [*server_options(), *channel_options()]:
        assert name.encode() + b"\0" in core, f"grpc core does not know the channel arg {name}"


async def _in_flight(server: GrpcServer) -> bool:
    return server._observability.in_flight == 1


async def _idle(server: GrpcServer) -> bool:
    return server._observability.in_flight == 0


async def test_a_store_outage_is_unavailable_with_a_retry_hint_not_unknown(server) -> None:
    from plumbing.grpc_errors import ERRCODE_KEY, RETRY_AFTER_KEY

    channel = open_channel(f"127.0.0.1:{server.port}")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{SERVICE}/StoreDown")(b"")
    await channel.close()
    trailing = dict(raised.value.trailing_metadata() or ())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert trailing[ERRCODE_KEY] == "M_UNAVAILABLE"
    assert int(trailing[RETRY_AFTER_KEY]) > 0
    assert _counter("StoreDown", "UNAVAILABLE") >= 1


class _Http2Tap:
    """A loopback TCP relay that counts the HTTP/2 frames passing each way (PING = 6, GOAWAY = 7),
    so a test can wait for the channel's keepalive pings themselves instead of sleeping."""

    PING, GOAWAY = 6, 7

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frames: dict[str, list[int]] = {"client": [], "server": []}
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()

    def count(self, side: str, frame_type: int) -> int:
        return self.frames[side].count(frame_type)

    async def wait_for(self, predicate) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout=30)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(
            self._relay(reader, up_writer, "client", preface=24),  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            self._relay(up_reader, writer, "server", preface=0),
            return_exceptions=True,
        )

    async def _relay(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, side: str, preface: int) -> None:
        try:
            if preface:
                dst.write(await src.readexactly(preface))
            while True:
                header = await src.readexactly(9)
                payload = await src.readexactly(int.from_bytes(header[:3], "big"))
                dst.write(header + payload)
                await dst.drain()
                async with self.changed:
                    self.frames[side].append(header[3])
                    self.changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            dst.close()


async def test_an_idle_channel_survives_many_keepalive_intervals_and_then_calls(monkeypatch) -> None:
    """Issue 9 item 6: with the server's ping minimum left at its default, an idle channel pinging
    every GRPC_KEEPALIVE_MS got GOAWAY "too_many_pings" after two strikes, and a call could fail."""
    monkeypatch.setenv("GRPC_KEEPALIVE_MS", "100")  # read by both the server and the channel options
    server = GrpcServer("127.0.0.1", free_port(), [SERVICE], [_register])
    await server.start()
    tap = _Http2Tap(server.port)
    await tap.start()
    channel = open_channel(f"127.0.0.1:{tap.port}")
    try:
        assert await channel.unary_unary(f"/{SERVICE}/Wait")(b"0") == b"done"
        before = tap.count("client", tap.PING)
        # Idle until the channel has pinged 6 more times (3x the server default's two strikes),
        # each one acknowledged, and still no GOAWAY.
        await tap.wait_for(lambda: tap.count("client", tap.PING) >= before + 6 or tap.count("server", tap.GOAWAY))
        assert tap.count("server", tap.GOAWAY) == 0, "the server sent GOAWAY to an idle channel"
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        assert await channel.unary_unary(f"/{SERVICE}/Wait")(b"0") == b"done"
        assert tap.count("server", tap.GOAWAY) == 0
    finally:
        await channel.close()
        await tap.close()
        await server.shutdown(0)
