"""`edgepilot serve --models DIR`: serve a model repository over KServe v2 (REST, gRPC) and TF Serving REST."""
from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(models: Path = typer.Option(..., "--models", help="Model repository: one folder per model, numbered "
                                                              "version folders, an optional config.yaml per model."),
              host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
              port: int = typer.Option(8000, min=1, max=65535, help="HTTP port."),
              grpc_port: int = typer.Option(None, min=1, max=65535, help="Also serve KServe v2 over gRPC on "
                                                                          "this port (Triton's gRPC clients)."),
              max_body_mb: float = typer.Option(64.0, min=0.001, help="Largest request body (413 above it)."),
              request_timeout: float = typer.Option(30.0, min=0.1, help="Seconds a request may wait for its "
                                                                        "result (503 after)."),
              token_inference: bool = typer.Option(False, "--token-inference", help="Require the token for "
                                                   "inference and metadata too, not only repository calls."),
              ) -> None:
        """Serve every model in --models until Ctrl-C / SIGTERM (requests in flight finish first).

        Set EDGEPILOT_SERVE_TOKEN to require `Authorization: Bearer <token>` on repository load/unload/index."""
        from edgepilot.errors import ConfigError
        from edgepilot.serve.app import serve as run_server
        from edgepilot.serve.http import ServerSettings

        token = os.environ.get("EDGEPILOT_SERVE_TOKEN") or None
        if token_inference and token is None:
            raise ConfigError("--token-inference needs a token", hint="set EDGEPILOT_SERVE_TOKEN")
        settings = ServerSettings(host=host, port=port, max_body_bytes=int(max_body_mb * (1 << 20)),
                                  request_timeout_s=request_timeout, token=token, token_for_inference=token_inference,
                                  grpc_port=grpc_port)
        also = f", gRPC on {host}:{grpc_port}" if grpc_port else ""
        typer.echo(f"serving {models} on http://{host}:{port} (KServe v2 /v2, TF Serving /v1, /metrics, "
                   f"/dashboard){also}", err=True)
        run_server(models, settings)
