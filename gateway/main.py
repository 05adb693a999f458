"""Composition root of the gateway: config, downstream channels, NATS, the HTTP app, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from gateway.app import GatewayDeps, create_app
from gateway.config import GatewayConfig
from gateway.downstream import Downstream
from gateway.protocol import GatewayRunner
from gateway.routes import route_modules
from plumbing.errors import StartupError
from plumbing.jetstream import connect_nats
from plumbing.logs import configure_logging
from plumbing.ports import port_is_free

log = logging.getLogger(__name__)


async def serve(config: GatewayConfig) -> None:
    if not port_is_free(config.host, config.port):
        raise StartupError(f"cannot listen on {config.host}:{config.port} (GATEWAY_PORT): port already in use")
    nc = await connect_nats(config.nats_url, "laiwang-gateway")
    downstream = Downstream(config.service_addresses)
    deps = GatewayDeps(config=config, downstream=downstream, nats=nc)
    modules = route_modules()
    app = create_app(deps, route_groups=[module.routes(deps) for module in modules])
    for module in modules:
        if hasattr(module, "startup"):
            await module.startup(deps)
    runner = GatewayRunner(
        app,
        header_timeout=config.header_timeout_seconds,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=config.keepalive_seconds,
        # In-flight requests get SHUTDOWN_GRACE_SECONDS to finish (terminationGracePeriodSeconds is sized for it).
        shutdown_timeout=config.shutdown_grace_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_port=False, backlog=config.listen_backlog)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.host}:{config.port} (GATEWAY_PORT): {exc.strerror}") from None
    log.info("serving", extra={"url": config.public_base_url})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.shutdown_grace_seconds})
    deps.draining = True  # /healthz answers 503 from now on; /livez stays 200
    for module in modules:
        if hasattr(module, "drain"):  # long-polls answer now instead of being cut at the grace limit
            await module.drain(deps)
    await runner.shutdown()
    await runner.cleanup()
    for module in reversed(modules):
        if hasattr(module, "cleanup"):
            await module.cleanup(deps)
    await downstream.close()
    with contextlib.suppress(Exception):
        await nc.drain()


def main() -> None:
    try:
        config = GatewayConfig.from_env()
        configure_logging("laiwang-gateway", config.log_level)
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"laiwang-gateway: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
