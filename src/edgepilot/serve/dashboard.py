"""The dashboard the server serves at /dashboard: models and versions, live results with boxes over the latest
frame, fps/latency/system charts and alerts, read from the same state as the protocols (no second source of truth).

The page itself is static (static/dashboard.*, no CDN: devices are often offline); it polls /dashboard/api/state
once a second, fetches /dashboard/api/frame for the picture and listens to the WebSocket /stream for results.
"""
from __future__ import annotations

import asyncio
import time
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from edgepilot.errors import InputError
from edgepilot.serve.http import check_token, json_response
from edgepilot.serve.routes import Router

router = Router()
_STATIC = {"dashboard.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8"}


class NotFound(InputError):
    http_status = 404


def _static(name: str) -> Response:
    body = resources.files("edgepilot.serve").joinpath("static", name).read_bytes()
    return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})


@router.get("/dashboard")
async def page() -> Response:
    return _static("dashboard.html")


@router.get("/dashboard/static/{name}")
async def static(name: str) -> Response:
    if name not in _STATIC:
        raise NotFound(f"no dashboard file {name!r}")
    return _static(name)


def _system(monitor, max_age_s: float = 2.0) -> dict:
    """The monitor's latest readings (sampled now if older than `max_age_s`), and the sources it cannot read."""
    if monitor is None:
        return {"readings": [], "unavailable": []}
    sample = monitor.fresh(max_age_s)
    return {"ts": sample.ts,
            "readings": [{"metric": r.metric, "value": r.value, "unit": r.unit, "labels": r.label_dict}
                         for r in sample.readings],
            "unavailable": [{"source": s.name, "detail": s.detail} for s in sample.sources if not s.available]}


@router.get("/dashboard/api/state")
async def state(request: Request) -> Response:
    """Everything the dashboard shows except pixels: models, pipeline statistics, system readings, recent events."""
    st = request.app.state
    check_token(request, st.settings, management=False)
    stats = getattr(st, "pipeline_stats", None)
    broadcaster = st.broadcaster
    system = await asyncio.get_running_loop().run_in_executor(None, _system, getattr(st, "monitor", None))
    return json_response({
        "ts": time.time(),
        "models": st.repo.index(),
        "pipeline": stats.snapshot() if stats is not None else None,
        "frames": broadcaster.frames() if broadcaster is not None else {},
        "events": broadcaster.recent_events() if broadcaster is not None else [],
        "system": system,
    })


@router.get("/dashboard/api/frame")
async def frame(request: Request, source: str) -> Response:
    """The latest frame of `source` as JPEG; its sequence number in X-Edgepilot-Seq (to match the result)."""
    check_token(request, request.app.state.settings, management=False)
    broadcaster = request.app.state.broadcaster
    latest = broadcaster.latest_frame(source) if broadcaster is not None else None
    if latest is None:
        raise NotFound(f"no frame from source {source!r} yet")
    seq, image = latest
    jpeg = await asyncio.get_running_loop().run_in_executor(None, _jpeg, image)
    return Response(jpeg, media_type="image/jpeg",
                    headers={"X-Edgepilot-Seq": str(seq), "Cache-Control": "no-store"})


def _jpeg(image) -> bytes:
    from edgepilot.optional import require

    cv2 = require("cv2", "vision")
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise InputError("the frame could not be encoded as JPEG")
    return buf.tobytes()
