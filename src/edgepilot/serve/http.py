"""What the REST protocols share: server settings, bounded body reading, bearer tokens, JSON answers, accounting."""
from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.serve.tensors import dumps_json


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 64 << 20
    body_timeout_s: float = 30.0  # a client that takes longer to send its body is cut off (408)
    request_timeout_s: float = 30.0  # longest wait for a result once the body is in (503)
    token: str | None = None  # bearer token for repository and management calls
    token_for_inference: bool = False  # also require it for inference and metadata
    grpc_port: int | None = None  # KServe v2 over gRPC on this port too (same host)


class BodyTooLarge(InputError):
    http_status = 413


class SlowClient(InputError):
    http_status = 408


class Unauthorized(EdgepilotError):
    http_status = 401


async def read_body(request: Request, settings: ServerSettings) -> bytes:
    """The request body, refused as soon as it is known to exceed the limit or arrives too slowly."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {int(declared)} bytes exceeds the limit of {limit}",
                           hint="send smaller batches, or start the server with a larger --max-body-mb")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), settings.body_timeout_s)
    except asyncio.TimeoutError:
        raise SlowClient(f"the request body did not arrive within {settings.body_timeout_s:g} s") from None
    except ClientDisconnect:
        raise InputError("the client went away while sending the body") from None


def check_token(request: Request, settings: ServerSettings, *, management: bool) -> None:
    """Management calls need the token when one is set; inference and metadata too if the server says so."""
    check_authorization(request.headers.get("authorization", ""), settings, management=management)


def check_authorization(given: str, settings: ServerSettings, *, management: bool) -> None:
    """The same check on an `Authorization` value, wherever it came from (HTTP header, gRPC metadata)."""
    if settings.token is None or not (management or settings.token_for_inference):
        return
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), settings.token.encode()):
        raise Unauthorized("missing or wrong bearer token" if given else "this call needs a bearer token",
                           hint="send the header: Authorization: Bearer <token>")


def json_response(content, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps_json(content), status_code=status, headers=headers, media_type="application/json")


def error_response(e: EdgepilotError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(e, Unauthorized) else None
    return json_response({"error": str(e)}, e.http_status, headers)


def accounted(request: Request, protocol: str, name: str, version: str | None):
    """Count the inference request and its latency in /metrics, whatever its outcome; `slot` learns the version
    that served it."""
    return accounted_in(request.app.state.metrics, protocol, name, version)


@asynccontextmanager
async def accounted_in(metrics, protocol: str, name: str, version: str | None):
    """`accounted` for any protocol, given the server's metrics (gRPC has no HTTP request)."""
    slot = {"version": version or ""}
    t0 = time.perf_counter()
    code = 200
    try:
        yield slot
    except EdgepilotError as e:
        code = e.http_status
        raise
    except Exception:
        code = 500
        raise
    finally:
        metrics.observe_request(name, slot["version"], protocol, code, time.perf_counter() - t0)
