"""The `laiwang` command.

laiwang run              the whole stack (what `make run` calls)
laiwang serve SERVICE    one process: auth, contacts, messaging, zhadui, open_platform or gateway
laiwang demo             demo people, a friendship, a chat and a zhadui on a running stack (plumbing/dev/demo.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
import time
from typing import TYPE_CHECKING

from plumbing.config import SERVICES
from plumbing.errors import StartupError
from plumbing.process import terminate_with_parent

if TYPE_CHECKING:
    from plumbing.dev.supervisor import Supervisor

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal closed


class ForcedStop(Exception):
    """A second Ctrl-C while stopping: every child was killed, nothing drained."""


async def stop_or_kill(supervisor: Supervisor) -> None:
    """Stop every child in order; a second stop signal meanwhile kills them all at once."""
    loop = asyncio.get_running_loop()
    forced = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, forced.set)
    stopping = asyncio.create_task(supervisor.stop_all())
    forcing = asyncio.create_task(forced.wait())
    await asyncio.wait({stopping, forcing}, return_when=asyncio.FIRST_COMPLETED)
    forcing.cancel()
    if not forced.is_set():
        stopping.result()
        return
    supervisor.say("second stop signal: killing everything")
    supervisor.kill_all()
    await stopping  # each child's stop now sees its process gone
    raise ForcedStop


async def run_stack() -> None:
    # The dev-only stack is imported here, so that `laiwang serve` never loads it.
    from plumbing.dev.stack import StackConfig, check_ports_free, stack_specs
    from plumbing.dev.supervisor import Supervisor

    terminate_with_parent()
    config = StackConfig.from_env()
    check_ports_free(config)
    supervisor = Supervisor(stack_specs(config))
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)

    start = asyncio.create_task(supervisor.start_all())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if start not in done:  # Ctrl-C while starting: start_all stops what it started
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
        await stop_or_kill(supervisor)
        return
    stopper.cancel()
    start.result()  # re-raises a StartupError (children already stopped)

    elapsed = time.monotonic() - started
    rows = [(c.spec.name, c.spec.address, str(c.pid)) for c in supervisor.children]
    print()
    print(f"{'component':<14}{'address':<52}pid")
    for name, address, pid in rows:
        print(f"{name:<14}{address:<52}{pid}")
    print(
        f"\nLaiwang is ready in {elapsed:.1f}s. Open {config.gateway_url}/ in a browser for the web client,"
        f" or point a Matrix client at {config.gateway_url}"
        f" (server name {config.server_name}); data lives in {config.data_dir}. Ctrl-C stops everything.\n",
        flush=True,
    )

    await stop.wait()
    await stop_or_kill(supervisor)
    print("laiwang: stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="laiwang", description="Laiwang backend")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the whole stack (embedded NATS and Mongo unless NATS_URL / MONGO_URI are set)")
    serve = sub.add_parser("serve", help="run one process")
    serve.add_argument("process", choices=[*SERVICES, "gateway"])
    sub.add_parser("demo", help="demo users, friends, a chat and a zhadui on a running stack", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from plumbing.dev.demo import main as demo

        demo(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "serve":
        module = "gateway.main" if args.process == "gateway" else f"services.{args.process}.main"
        importlib.import_module(module).main()
        return
    try:
        asyncio.run(run_stack())
    except StartupError as exc:
        print(f"laiwang: {exc}", file=sys.stderr)
        sys.exit(2)
    except ForcedStop:
        print("laiwang: killed", flush=True)
        sys.exit(128 + signal.SIGINT)  # what a shell reports for a program ended by Ctrl-C
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
