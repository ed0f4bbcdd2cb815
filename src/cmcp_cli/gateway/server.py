"""Serving the gateway with hypercorn until a shutdown trigger fires.

`serve_gateway` is hypercorn's own `serve(app, config, shutdown_trigger=...)`: on the
trigger, hypercorn stops accepting, runs the ASGI lifespan shutdown, and the app closes
every open session and writes its claim before the process ends. SIGHUP, and the
reload interval when set, make the gateway look at its bundle directory
(`PolicyReloader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config

from cmcp_cli.config import CmcpConfig
from cmcp_cli.config_document import ConfigDocument
from cmcp_cli.gateway.downstream.app import GatewayApp
from cmcp_cli.gateway.preflight.report import check_config
from cmcp_cli.gateway.preflight.source import start_document
from cmcp_cli.gateway.relay.freshness import renew_sessions
from cmcp_cli.gateway.runtime import GatewayRuntime, build_runtime
from cmcp_cli.gateway.setup.first_contact import FirstContact, pin_at_first_contact

IDLE_SWEEP_SECONDS = 5.0


def hypercorn_config(config: CmcpConfig) -> Config:
    served = Config()
    served.bind = [str(config.listen_addr)]
    served.accesslog = None
    served.errorlog = "-"
    served.include_server_header = False
    served.graceful_timeout = float(config.limits.request_timeout_seconds)
    # No read timeout: hypercorn's counts the client's silence on the socket, which lasts
    # as long as a call is computed or a stream is served, and would close such
    # connections with no answer. An idle connection (or one with a partial request head) is closed
    # after keep_alive_timeout; a request body is due within request_timeout_seconds
    # (GatewayApp answers 408 and closes); a call is answered within it (-32052).
    served.read_timeout = None
    if config.tls.enabled:
        served.certfile = str(config.tls.cert_file)
        served.keyfile = str(config.tls.key_file)
        if config.tls.client_ca_file is not None:
            served.ca_certs = str(config.tls.client_ca_file)
            served.verify_mode = ssl.CERT_REQUIRED
    return served


async def serve_gateway(
    runtime: GatewayRuntime,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    on_ready: Callable[[GatewayApp], None] | None = None,
) -> None:
    """Serve until `shutdown_trigger` returns (by default SIGINT or SIGTERM)."""
    app = GatewayApp(runtime)
    requested = shutdown_trigger or _signal_trigger()
    reloading = _reload_tasks(app)

    async def trigger() -> None:
        await requested()
        for task in reloading:  # no bundle is taken while sessions close
            task.cancel()
        # hypercorn waits for open responses before the lifespan shutdown: end the
        # clients' notification streams first, or shutdown would wait out their timeout
        app.sessions.end_streams()

    timers = [
        asyncio.create_task(_close_idle_sessions(app)),
        asyncio.create_task(renew_sessions(app.sessions)),
    ]
    if on_ready is not None:
        on_ready(app)
    try:
        await serve(app, hypercorn_config(runtime.config), shutdown_trigger=trigger)  # type: ignore[arg-type]
    finally:
        for task in (*timers, *reloading):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _signal_trigger() -> Callable[[], Awaitable[None]]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def wait() -> None:
        await stop.wait()

    return wait


def _reload_tasks(app: GatewayApp) -> list[asyncio.Task[None]]:
    """The interval check (policy_reload_interval_seconds > 0) and SIGHUP: each looks at
    the bundle directory once (`PolicyReloader.check`); checks never overlap."""
    tasks: list[asyncio.Task[None]] = []
    interval = app.runtime.config.policy_reload_interval_seconds
    if interval > 0:
        tasks.append(asyncio.create_task(app.reloader.run(float(interval))))
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGHUP, hangup.set)

        async def on_hangup() -> None:
            while True:
                await hangup.wait()
                hangup.clear()
                await app.reloader.check_logged("sighup")

        tasks.append(asyncio.create_task(on_hangup()))
    return tasks


async def _close_idle_sessions(app: GatewayApp) -> None:
    while True:
        await asyncio.sleep(IDLE_SWEEP_SECONDS)
        await app.sessions.close_idle()


@dataclass(frozen=True)
class StartHooks:
    """What the caller is told while the gateway starts, each before what follows it."""

    # the config document about to be checked (one built from the environment, say)
    document: Callable[[ConfigDocument], None] | None = None
    pinned: Callable[[FirstContact], None] | None = None  # a catalog pinned at first contact
    announce: Callable[[GatewayRuntime], None] | None = None  # the runtime about to serve


def run_gateway(
    config: Path | None,
    *,
    hooks: StartHooks | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Check the config `start_document` chooses (the file given, cmcp-config.yaml here,
    or the environment), pin its catalog at first contact when configured so, build the
    runtime and serve until SIGINT or SIGTERM."""
    hooks = hooks or StartHooks()
    environ = os.environ if environ is None else environ
    document = start_document(config, environ, Path.cwd() if cwd is None else cwd)
    if hooks.document is not None:
        hooks.document(document)
    report = check_config(document, environ)
    pinned = pin_at_first_contact(report, environ)
    if pinned is not None:
        if hooks.pinned is not None:
            hooks.pinned(pinned)
        report = check_config(document, environ)  # the written catalog, checked as any other
    runtime = build_runtime(report, environ)
    announce = hooks.announce

    async def main() -> None:
        if announce is not None:
            announce(runtime)
        await serve_gateway(runtime)

    try:
        asyncio.run(main())
    finally:
        # idempotent: the lifespan shutdown closed both already, unless serving failed
        runtime.store.close()
        runtime.attestor.close()
