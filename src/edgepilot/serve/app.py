"""The server: a Starlette app over a model repository (KServe v2, TF Serving, /metrics), run with uvicorn."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgepilot.errors import EdgepilotError, RuntimeFailure
from edgepilot.optional import require
from edgepilot.serve.http import ServerSettings, error_response, json_response
from edgepilot.serve.metrics import ServeMetrics
from edgepilot.serve.repository import Repository
from edgepilot.serve.stream import Broadcaster, StreamSink

log = logging.getLogger(__name__)


def create_app(repo: Repository, settings: ServerSettings | None = None,
               broadcaster: Broadcaster | None = None, *, pipeline_stats=None, monitor=None) -> Starlette:
    """The app serving `repo` (already loaded, or loaded through the repository API), and a pipeline's stream and
    statistics when given them; closing the app at shutdown retires every model once its requests have finished.

    `monitor` (default: every collector of this machine) feeds the system gauges of /metrics and the dashboard."""

    @asynccontextmanager
    async def lifespan(_: Starlette):
        grpc_server = None
        if app.state.settings.grpc_port is not None:  # on this event loop: it shares the repository's schedulers
            from edgepilot.serve import kserve_grpc

            grpc_server = await kserve_grpc.start(app.state, app.state.settings)
        yield
        if grpc_server is not None:
            await grpc_server.stop(grace=10)  # requests in flight finish first
        repo.close()
        if app.state.monitor is not None:
            app.state.monitor.close()

    async def metrics(_: Request) -> Response:
        body, content_type = app.state.metrics.render()
        return Response(body, media_type=content_type)

    async def edgepilot_error(_: Request, e: EdgepilotError) -> Response:
        return error_response(e)

    async def http_error(_: Request, e: HTTPException) -> Response:
        return json_response({"error": str(e.detail)}, e.status_code)

    async def internal_error(request: Request, e: Exception) -> Response:  # never a crash, never an HTML page
        log.exception("%s %s failed", request.method, request.url.path)
        return json_response({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    from edgepilot.serve import dashboard, kserve, stream, tfserving

    routes = [*kserve.router.routes, *tfserving.router.routes, *stream.router.routes, *dashboard.router.routes,
              Route("/metrics", metrics, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        EdgepilotError: edgepilot_error, HTTPException: http_error, Exception: internal_error})
    app.state.repo = repo
    app.state.broadcaster = broadcaster
    app.state.settings = settings or ServerSettings()
    app.state.metrics = repo.metrics or ServeMetrics()
    repo.metrics = app.state.metrics
    app.state.pipeline_stats = pipeline_stats
    app.state.monitor = monitor if monitor is not None else _default_monitor()
    if app.state.monitor is not None:
        from edgepilot.monitor.prometheus import MonitorCollector

        app.state.metrics.registry.register(MonitorCollector(app.state.monitor))
    return app


def _default_monitor():
    """This machine's collectors; a server without them still serves (the system panels then say why)."""
    from edgepilot.monitor.sampler import Monitor

    try:
        return Monitor()
    except Exception as e:  # a broken collector must not keep models from being served
        log.warning("system metrics unavailable: %s", e)
        return None


def open_repository(models: str | Path) -> Repository:
    """The repository with every model loaded; a model that fails to load is served as UNAVAILABLE, with why."""
    repo = Repository(models, ServeMetrics())
    for name in repo.names():
        try:
            repo.load(name)
        except EdgepilotError as e:
            log.error("model %s not served: %s", name, e)
    return repo


def serve(models: str | Path, settings: ServerSettings) -> None:
    """Load the repository and serve until SIGINT/SIGTERM; requests in flight finish before the exit."""
    uvicorn = require("uvicorn", "serve")
    app = create_app(open_repository(models), settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=30)


class BackgroundServer:
    """uvicorn in a thread of this process (the pipeline's server, the tests' servers)."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        uvicorn = require("uvicorn", "serve")
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, name="server", daemon=True)

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeFailure("the server did not start", hint="is the port already in use?")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def pipeline_server(host: str, port: int, models: str | None, stats) -> tuple[BackgroundServer, StreamSink]:
    """The server `edgepilot run` starts for `server:` in its YAML: the stream of results and events, the
    pipeline's statistics in /metrics, and the models of `models` (a repository) when given."""
    from edgepilot.serve.metrics import PipelineCollector

    repo = open_repository(models) if models else Repository(None, ServeMetrics())
    repo.metrics.registry.register(PipelineCollector(stats))
    broadcaster = Broadcaster()
    app = create_app(repo, broadcaster=broadcaster, pipeline_stats=stats)
    return BackgroundServer(app, host, port), StreamSink(broadcaster)
