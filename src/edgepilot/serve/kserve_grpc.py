"""KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), beside the REST server.

The messages come from proto/inference.desc (protoc's compiled form of proto/inference.proto), loaded into a private
descriptor pool: no generated code pinned to one protobuf release, and no clash with a client's own copy of the
same protocol (Triton's) in the same process. It runs on the HTTP server's event loop and shares its repository,
scheduler, checks and metrics.
"""
from __future__ import annotations

import logging
import time
from functools import cache
from importlib import resources

import numpy as np

from edgepilot import __version__
from edgepilot.errors import EdgepilotError, InputError
from edgepilot.optional import require
from edgepilot.serve.http import ServerSettings, accounted_in, check_authorization
from edgepilot.serve.kserve import EXTENSIONS
from edgepilot.serve.tensors import from_bytes, from_json_data, kserve_dtype, to_bytes, wire_shape

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
RPCS = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}
# Which InferTensorContents field holds each datatype (FP16 has none: raw contents only).
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents"}


@cache
def messages() -> dict[str, type]:
    """Message classes by short name ("ModelInferRequest" ...), built from the compiled protocol."""
    descriptor_pb2 = require("google.protobuf.descriptor_pb2", "grpc")
    from google.protobuf import descriptor_pool, message_factory

    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("edgepilot.serve").joinpath("proto", "inference.desc").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    out = {}
    for f in files.file:
        for m in f.message_type:
            out[m.name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{f.package}.{m.name}"))
    return out


def _status(grpc, e: EdgepilotError):
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
            404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
            413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.FAILED_PRECONDITION,
            503: grpc.StatusCode.UNAVAILABLE}.get(e.http_status, grpc.StatusCode.INTERNAL)


class InferenceService:
    """The six RPCs over the app's repository; every failure is a gRPC status with the message, never a crash."""

    def __init__(self, app_state) -> None:
        self.state = app_state
        self.grpc = require("grpc", "grpc")
        self.m = messages()

    def _auth(self, context, *, management: bool = False) -> None:
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        check_authorization(given, self.state.settings, management=management)

    async def ServerLive(self, request, context):
        return self.m["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return self.m["ServerReadyResponse"](ready=self.state.repo.ready())

    async def ModelReady(self, request, context):
        self._auth(context)
        self.state.repo.get(request.name, request.version or None)
        return self.m["ModelReadyResponse"](ready=True)

    async def ServerMetadata(self, request, context):
        self._auth(context)
        return self.m["ServerMetadataResponse"](name="edgepilot", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        self._auth(context)
        repo, version = self.state.repo, request.version or None
        served = repo.get(request.name, version)
        tensor = self.m["ModelMetadataResponse"].TensorMetadata
        return self.m["ModelMetadataResponse"](
            name=request.name, platform=served.platform,
            versions=[str(v.version) for v in repo.versions(request.name)] if version is None else [version],
            inputs=[tensor(name=s.name, datatype=kserve_dtype(s.dtype), shape=wire_shape(s)) for s in served.inputs],
            outputs=[tensor(name=s.name, datatype=kserve_dtype(s.dtype), shape=wire_shape(s))
                     for s in served.outputs])

    async def ModelInfer(self, request, context):
        name = request.model_name
        async with accounted_in(self.state.metrics, "grpc", name, request.model_version or None) as slot:
            self._auth(context)
            feeds = parse_inputs(request)
            with self.state.repo.use(name, request.model_version or None) as served:
                slot["version"] = str(served.version)
                names = [s.name for s in served.outputs]
                wanted = [o.name for o in request.outputs] or names
                unknown = [n for n in wanted if n not in names]
                if unknown:
                    raise InputError(f"unknown output {unknown[0]!r}", hint=f"the model gives {names}")
                outputs, _ = await served.infer(feeds, self.state.settings.request_timeout_s)
                t1 = time.perf_counter()
                response = self._response(request, served, {n: outputs[n] for n in wanted})
                served.encoded(time.perf_counter() - t1)
                return response

    def _response(self, request, served, outputs: dict[str, np.ndarray]):
        tensor = self.m["ModelInferResponse"].InferOutputTensor
        return self.m["ModelInferResponse"](
            model_name=served.name, model_version=str(served.version), id=request.id,
            outputs=[tensor(name=n, datatype=kserve_dtype(x.dtype), shape=list(x.shape)) for n, x in outputs.items()],
            raw_output_contents=[to_bytes(x) for x in outputs.values()])


def parse_inputs(request) -> dict[str, np.ndarray]:
    """Input tensors from raw contents (one per input, in order) or from each input's typed contents."""
    if not request.inputs:
        raise InputError("the request has no inputs")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs",
                         hint="send one raw content per input, or typed contents for every input")
    feeds: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if t.name in feeds:
            raise InputError(f"input {t.name!r} is given twice")
        shape = list(t.shape)
        if raw:
            if t.HasField("contents"):
                raise InputError(f"input {t.name!r} has typed contents besides raw_input_contents")
            feeds[t.name] = from_bytes(raw[i], t.datatype, shape, t.name)
        elif t.datatype in CONTENTS_FIELD:
            feeds[t.name] = from_json_data(list(getattr(t.contents, CONTENTS_FIELD[t.datatype])), t.datatype,
                                           shape, t.name)
        else:
            raise InputError(f"input {t.name!r}: datatype {t.datatype!r} needs raw_input_contents")
    return feeds


def _handler(grpc, service: InferenceService, rpc: str, request_type, response_type):
    method = getattr(service, rpc)

    async def call(request, context):
        try:
            return await method(request, context)
        except EdgepilotError as e:
            await context.abort(_status(grpc, e), str(e))
        except Exception as e:  # a bug answers INTERNAL; the server serves on
            if isinstance(e, grpc.aio.AbortError):
                raise
            log.exception("gRPC %s failed", rpc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=request_type.FromString,
                                               response_serializer=response_type.SerializeToString)


async def start(app_state, settings: ServerSettings):
    """Start the gRPC server on settings.grpc_port; returns it (await server.stop(grace) at shutdown)."""
    grpc = require("grpc", "grpc")
    service, m = InferenceService(app_state), messages()
    handlers = {rpc: _handler(grpc, service, rpc, m[f"{rpc}Request"], m[f"{rpc}Response"]) for rpc in sorted(RPCS)}
    limit = settings.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", max(limit, 64 << 20))])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    address = f"{settings.host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise EdgepilotError(f"cannot listen for gRPC on {address}", hint="is the port already in use?")
    await server.start()
    log.info("gRPC (KServe v2) on %s", address)
    return server
