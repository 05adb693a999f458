"""What every service's composition root shares: connect, declare, serve, and shut down gracefully.

A service's `main.py` builds its own parts (store, core, API, event handlers) from a `Runtime`
and hands them back as `ServiceParts`; this module does the rest the same way for all five.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from plumbing.config import ServiceConfig
from plumbing.errors import StartupError
from plumbing.grpc_server import GrpcServer, Registration
from plumbing.jetstream import (
    ConsumerSpec,
    DurableConsumer,
    EventPublisher,
    Handler,
    connect_nats,
    ensure_stream,
)
from plumbing.logs import configure_logging
from plumbing.metrics import serve_metrics
from plumbing.mongo import IndexPlan, connect_mongo, ensure_indexes
from plumbing.outbox import OUTBOX_INDEXES, Outbox
from plumbing.ports import port_is_free
from plumbing.readiness import DependencyGate
from plumbing.streams import StreamSpec

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Connections a service's parts are built from."""

    config: ServiceConfig
    mongo: AsyncMongoClient
    db: AsyncDatabase
    nats: NatsClient
    js: JetStreamContext
    publisher: EventPublisher
    outbox: Outbox


@dataclass
class ServiceParts:
    """What a service contributes; everything else is common."""

    service_names: Sequence[str]
    registrations: Sequence[Registration]
    indexes: IndexPlan = field(default_factory=dict)
    produces: Sequence[StreamSpec] = ()
    consumers: Sequence[tuple[ConsumerSpec, Handler]] = ()
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    # Run in order at shutdown, after the gRPC server has drained, the background jobs have been
    # cancelled and awaited, and the consumers have stopped; before the outbox, NATS and Mongo
    # close. Whatever a builder started (subscriptions, loops) stops here, in the open.
    stop: Sequence[Callable[[], Awaitable[None]]] = ()
    # gRPC services this one cannot work without (name -> address): it reports SERVING only while
    # they do (plumbing.readiness).
    depends_on: Mapping[str, str] = field(default_factory=dict)


Builder = Callable[[Runtime], Awaitable[ServiceParts]]


def run_service(name: str, build: Builder) -> None:
    """Entry point of a service process. Exits 2 with one line on a start-up problem."""
    try:
        config = ServiceConfig.from_env(name)
        configure_logging(f"laiwang-{name}", config.log_level)
        _install_uvloop()
        asyncio.run(_serve(config, build))
    except StartupError as exc:
        print(f"laiwang-{name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(config: ServiceConfig, build: Builder) -> None:
    for port, setting in ((config.grpc_port, "GRPC_PORT"), (config.metrics_port, "METRICS_PORT")):
        if port and not port_is_free(config.grpc_host, port):
            raise StartupError(f"cannot listen on {config.grpc_host}:{port} ({setting}): port already in use")
    serve_metrics(config.grpc_host, config.metrics_port)

    mongo, db = await connect_mongo(config.mongo_uri, config.mongo_db, config.mongo_timeout_ms)
    nc = await connect_nats(config.nats_url, f"laiwang-{config.name}")
    js = nc.jetstream()
    publisher = EventPublisher(js)
    outbox = Outbox(db, publisher)
    runtime = Runtime(config, mongo, db, nc, js, publisher, outbox)

    parts = await build(runtime)
    await ensure_indexes(db, {**OUTBOX_INDEXES, **parts.indexes})
    for stream in parts.produces:
        await ensure_stream(js, stream, config.streams)

    outbox.start()
    consumers = [DurableConsumer(js, spec, handler, config.streams) for spec, handler in parts.consumers]
    for consumer in consumers:
        await consumer.start()
    background = [asyncio.create_task(job(), name=f"background:{i}") for i, job in enumerate(parts.background)]

    server = GrpcServer(config.grpc_host, config.grpc_port, parts.service_names, parts.registrations)
    await server.start(serving=not parts.depends_on)
    if parts.depends_on:
        gate = DependencyGate(parts.depends_on)
        background.append(asyncio.create_task(gate.run(server.set_serving), name="readiness"))
    log.info("serving", extra={"grpc_port": server.port, "metrics_port": config.metrics_port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down: draining in-flight calls", extra={"grace_seconds": config.shutdown_grace_seconds})
    await server.shutdown(config.shutdown_grace_seconds)
    for task in background:
        task.cancel()
    if background:  # let their `finally` blocks run; a job that ignores cancellation does not hold us
        await asyncio.wait(background, timeout=5.0)
    for consumer in consumers:
        await consumer.stop()
    for hook in parts.stop:
        try:
            await hook()
        except Exception:
            log.warning("stop hook %s failed", getattr(hook, "__qualname__", hook), exc_info=True)
    await outbox.stop()
    with contextlib.suppress(Exception):
        await nc.drain()
    await mongo.close()
    log.info("stopped")
