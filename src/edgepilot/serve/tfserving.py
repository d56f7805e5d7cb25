"""TF Serving's REST API: model status, signature metadata, :predict in row (instances) and column (inputs)
formats, and :classify / :regress for models that fit (one score per class, or one value, per sample).
Signature names are accepted and ignored: a served model has one signature, serving_default."""
from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from edgepilot.errors import InputError, NotFoundError
from edgepilot.model import TensorSpec
from edgepilot.serve.http import accounted, check_token, json_response, read_body
from edgepilot.serve.routes import Router
from edgepilot.serve.served import ServedVersion
from edgepilot.serve.tensors import loads_json, wire_shape

router = Router()
SIGNATURE = "serving_default"
_TF_DTYPES = {
    "bool": "DT_BOOL", "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64",
    "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
    "float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE",
}


@router.get("/v1/models/{name}")
@router.get("/v1/models/{name}/versions/{version}")
async def model_status(request: Request, name: str, version: str | None = None) -> Response:
    check_token(request, request.app.state.settings, management=False)
    repo = request.app.state.repo
    served = [repo.get(name, version)] if version is not None else repo.versions(name)
    return json_response({"model_version_status": [
        {"version": str(v.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in reversed(served)]})


@router.get("/v1/models/{name}/metadata")
@router.get("/v1/models/{name}/versions/{version}/metadata")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    check_token(request, request.app.state.settings, management=False)
    served = request.app.state.repo.get(name, version)
    signature = {"inputs": {s.name: _tensor_info(s) for s in served.inputs},
                 "outputs": {s.name: _tensor_info(s) for s in served.outputs},
                 "method_name": "tensorflow/serving/predict"}
    return json_response({
        "model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    })


def _tensor_info(spec: TensorSpec) -> dict:
    return {"dtype": _TF_DTYPES.get(spec.dtype, "DT_INVALID"), "name": spec.name,
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in wire_shape(spec)],
                             "unknown_rank": spec.shape is None}}


@router.post("/v1/models/{target}")
@router.post("/v1/models/{name}/versions/{target}")
async def call(request: Request, target: str, name: str | None = None) -> Response:
    """`/v1/models/m:predict` or `/v1/models/m/versions/2:classify`: the verb rides on the last path segment."""
    head, _, verb = target.rpartition(":")
    if verb not in VERBS or not head:
        raise NotFoundError(f"no such TF Serving call {request.url.path!r}",
                            hint="POST /v1/models/<model>[/versions/<n>]:predict (or :classify, :regress)")
    name, version = (head, None) if name is None else (name, head)
    state = request.app.state
    async with accounted(request, "tfserving", name, version) as slot:
        check_token(request, state.settings, management=False)
        body = loads_json(await read_body(request, state.settings), f"{verb} request")
        if not isinstance(body, dict):
            raise InputError(f"a {verb} request is a JSON object")
        with state.repo.use(name, version) as served:
            slot["version"] = str(served.version)
            if verb == "predict":
                return await _predict(served, body, state.settings.request_timeout_s)
            feeds = _example_feeds(served, body, verb)
            outputs, _ = await served.infer(feeds, state.settings.request_timeout_s)
            return json_response({"results": _results(served, outputs, verb)})


VERBS = ("predict", "classify", "regress")


async def _predict(served: ServedVersion, body: dict, timeout_s: float) -> Response:
    if ("instances" in body) == ("inputs" in body):
        raise InputError("a predict request is a JSON object with either 'instances' (row format) or "
                         "'inputs' (column format)")
    row = "instances" in body
    feeds = _row_feeds(served, body["instances"]) if row else _column_feeds(served, body["inputs"])
    outputs, _ = await served.infer(feeds, timeout_s)
    if row:
        return json_response({"predictions": _rows(served, outputs)})
    return json_response({"outputs": _columns(served, outputs)})


def _example_feeds(served: ServedVersion, body: dict, verb: str) -> dict[str, np.ndarray]:
    """`examples` (one object of features per sample) with the shared `context` features merged into each: the
    feature names are the model's input names."""
    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
        raise InputError(f"a {verb} request needs 'examples': a non-empty list of objects, one per sample")
    if not isinstance(context, dict):
        raise InputError("'context' must be an object of features shared by every example")
    return _row_feeds(served, [{**context, **e} for e in examples], require_objects=True)


def _results(served: ServedVersion, outputs: dict[str, np.ndarray], verb: str) -> list:
    """:classify → per sample every class with its score ([label, score], labels are class indices);
    :regress → one value per sample. A model whose single output does not have that form is told so."""
    spec = served.outputs[0]
    y = outputs[spec.name]
    if len(served.outputs) != 1 or y.dtype.kind != "f":
        raise InputError(f"{served.name} has {len(served.outputs)} output(s) of {y.dtype}: :{verb} needs one float "
                         f"output", hint="use :predict")
    flat = y.reshape(len(y), -1)
    if verb == "classify":
        if y.ndim != 2:
            raise InputError(f"output {spec.name!r} of shape {list(y.shape)} is not [batch, classes]",
                             hint="use :predict")
        return [[[str(c), float(v)] for c, v in enumerate(row)] for row in flat]
    if flat.shape[1] != 1:
        raise InputError(f"output {spec.name!r} of shape {list(y.shape)} is not one value per sample",
                         hint="use :predict or :classify")
    return [float(v) for v in flat[:, 0]]


def _row_feeds(served: ServedVersion, instances: Any, *, require_objects: bool = False) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InputError("'instances' must be a non-empty list, one entry per sample")
    names = [s.name for s in served.inputs]
    if len(names) == 1 and not require_objects and not all(isinstance(i, dict) for i in instances):
        return {names[0]: _array(instances, served.inputs[0])}
    if not all(isinstance(i, dict) and set(i) == set(names) for i in instances):
        raise InputError(f"every {'example' if require_objects else 'instance'} must be an object with the inputs "
                         f"{names}")
    return {s.name: _array([i[s.name] for i in instances], s) for s in served.inputs}


def _column_feeds(served: ServedVersion, inputs: Any) -> dict[str, np.ndarray]:
    names = [s.name for s in served.inputs]
    if not isinstance(inputs, dict):
        if len(names) != 1:
            raise InputError(f"'inputs' must be an object with the inputs {names}")
        inputs = {names[0]: inputs}
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r}", hint=f"the model takes {names}")
    return {s.name: _array(inputs[s.name], s) for s in served.inputs if s.name in inputs}


def _array(value: Any, spec: TensorSpec) -> np.ndarray:
    """JSON values as the signature's dtype, as TF Serving converts them; ragged lists and strings are errors."""
    try:
        x = np.asarray(value)
    except ValueError as e:
        raise InputError(f"input {spec.name!r}: not a rectangular list of numbers ({e})") from None
    if x.dtype.kind not in "biuf":
        raise InputError(f"input {spec.name!r}: expects numbers of type {spec.dtype}, got {x.dtype.kind!r} values")
    want = spec.np_dtype
    if x.dtype.kind == "f" and want.kind in "iub" and spec.quantization is None:
        raise InputError(f"input {spec.name!r}: expects {spec.dtype}, got fractional numbers")
    return x.astype(want) if spec.quantization is None or x.dtype.kind != "f" else x.astype(np.float32)


def _rows(served: ServedVersion, outputs: dict[str, np.ndarray]) -> list:
    names = [s.name for s in served.outputs]
    if len(names) == 1:
        return outputs[names[0]].tolist()
    n = len(outputs[names[0]])
    return [{k: outputs[k][i].tolist() for k in names} for i in range(n)]


def _columns(served: ServedVersion, outputs: dict[str, np.ndarray]) -> Any:
    names = [s.name for s in served.outputs]
    if len(names) == 1:
        return outputs[names[0]].tolist()
    return {k: outputs[k].tolist() for k in names}
