"""KServe v2 / Open Inference Protocol over REST, with Triton's binary tensor, repository and statistics extensions."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from edgepilot import __version__
from edgepilot.errors import InputError
from edgepilot.serve.http import accounted, check_token, json_response, read_body
from edgepilot.serve.routes import Router
from edgepilot.serve.served import ServedVersion
from edgepilot.serve.tensors import from_bytes, from_json_data, kserve_dtype, loads_json, to_bytes, wire_shape

router = Router()
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


# declared first: routes are tried in order, and inference is what a server is asked most
@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    state = request.app.state
    async with accounted(request, "kserve", name, version) as slot:
        check_token(request, state.settings, management=False)
        body = await read_body(request, state.settings)
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        feeds, wanted = _parse_request(header, binary)
        with state.repo.use(name, version) as served:
            slot["version"] = str(served.version)
            wanted = _select_outputs(served, wanted)
            outputs, _ = await served.infer(feeds, state.settings.request_timeout_s)
            t0 = time.perf_counter()
            response = _response(served, header, outputs, wanted)
            served.encoded(time.perf_counter() - t0)
            return response


@router.get("/v2/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    ok = request.app.state.repo.ready()
    return json_response({"ready": ok}, 200 if ok else 503)


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    check_token(request, request.app.state.settings, management=False)
    return json_response({"name": "edgepilot", "version": __version__, "extensions": EXTENSIONS})


@router.get("/v2/models/stats")
@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def statistics(request: Request, name: str | None = None, version: str | None = None) -> Response:
    check_token(request, request.app.state.settings, management=False)
    repo = request.app.state.repo
    if name is None:
        served = [v for n in repo.served_names() for v in repo.versions(n)]
    elif version is None:
        served = repo.versions(name)
    else:
        served = [repo.get(name, version)]
    return json_response({"model_stats": [_model_stat(v) for v in served]})


def _model_stat(v: ServedVersion) -> dict:
    s = v.stats
    return {
        "name": v.name, "version": str(v.version), "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {k: getattr(s, k).to_dict() for k in
                            ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")},
        "batch_stats": [{"batch_size": b, "compute_infer": t.to_dict()} for b, t in sorted(s.batches.items())],
    }


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    check_token(request, request.app.state.settings, management=False)
    repo = request.app.state.repo
    served = repo.get(name, version)
    return json_response({
        "name": name,
        "versions": [str(v.version) for v in repo.versions(name)] if version is None else [str(served.version)],
        "platform": served.platform,
        "inputs": [_tensor_metadata(s) for s in served.inputs],
        "outputs": [_tensor_metadata(s) for s in served.outputs],
    })


def _tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": kserve_dtype(spec.dtype), "shape": wire_shape(spec)}


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    check_token(request, request.app.state.settings, management=False)
    request.app.state.repo.get(name, version)
    return json_response({"name": name, "ready": True})


def _split(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and the binary tensor data after it (binary tensor extension)."""
    if header_length is None:
        return _json_object(body), memoryview(b"")
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise InputError(f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body")
    n = int(header_length)
    return _json_object(body[:n]), memoryview(body)[n:]


def _json_object(raw: bytes) -> dict:
    obj = loads_json(raw, "inference request")
    if not isinstance(obj, dict):
        raise InputError("the inference request must be a JSON object")
    return obj


def _parse_request(req: dict, binary: memoryview) -> tuple[dict[str, np.ndarray], dict[str, bool] | None]:
    """Input tensors by name, and the requested outputs with whether each goes back as binary (None: all)."""
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("the request needs a non-empty 'inputs' list")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise InputError(f"inputs[{i}] must be an object with a 'name'")
        name = t["name"]
        if name in feeds:
            raise InputError(f"input {name!r} is given twice")
        size = _parameters(t, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InputError(f"input {name!r}: binary_data_size {size!r} goes past the {len(binary)} bytes "
                                 f"of binary data")
            feeds[name] = from_bytes(binary[offset:offset + size], t.get("datatype"), t.get("shape"), name)
            offset += size
        elif "data" in t:
            feeds[name] = from_json_data(t["data"], t.get("datatype"), t.get("shape"), name)
        else:
            raise InputError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data that no input's binary_data_size covers")
    default_binary = bool(_parameters(req, "the request").get("binary_data_output", False))
    outputs = req.get("outputs")
    if outputs is None:
        return feeds, {"*": default_binary}
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise InputError("'outputs' must be a list of objects with a 'name'")
    return feeds, {o["name"]: bool(_parameters(o, f"output {o['name']!r}").get("binary_data", default_binary))
                   for o in outputs}


def _parameters(obj: dict, what: str) -> dict:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise InputError(f"{what}: 'parameters' must be an object")
    return p


def _select_outputs(served: ServedVersion, wanted: dict[str, bool]) -> dict[str, bool]:
    names = [s.name for s in served.outputs]
    if "*" in wanted:
        return {n: wanted["*"] for n in names}
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}", hint=f"the model gives {names}")
    return wanted


def _response(served: ServedVersion, req: dict, outputs: dict[str, np.ndarray], wanted: dict[str, bool]) -> Response:
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in wanted.items():
        x = outputs[name]
        t: dict[str, Any] = {"name": name, "datatype": kserve_dtype(x.dtype), "shape": list(x.shape)}
        if binary:
            chunks.append(to_bytes(x))
            t["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            t["data"] = x.ravel().tolist()
        tensors.append(t)
    body: dict[str, Any] = {"model_name": served.name, "model_version": str(served.version), "outputs": tensors}
    if isinstance(req.get("id"), str):
        body["id"] = req["id"]
    if not chunks:
        return json_response(body)
    header = json_response(body).body
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    check_token(request, request.app.state.settings, management=True)
    return json_response(request.app.state.repo.index())


@router.post("/v2/repository/models/{name}/load")
async def repository_load(request: Request, name: str) -> Response:
    check_token(request, request.app.state.settings, management=True)
    await asyncio.to_thread(request.app.state.repo.load, name)
    return json_response({})


@router.post("/v2/repository/models/{name}/unload")
async def repository_unload(request: Request, name: str) -> Response:
    check_token(request, request.app.state.settings, management=True)
    await asyncio.to_thread(request.app.state.repo.unload, name)
    return json_response({})
