"""TFLite Micro against Keras and LiteRT; TensorRT unavailable here, its session logic on a fake runtime."""
from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import types

import numpy as np
import pytest

from builders import keras_model, sample
from builders.tflite import convert
from edgepilot.engines.base import dequantize
from edgepilot.engines.micro import MicroEngine, measure_arena
from edgepilot.engines.tensorrt import TensorRTEngine
from edgepilot.errors import ConfigError, InputError, ModelError, UnavailableError
from edgepilot.model import Format, Model

KINDS = ("cnn", "mlp")


@pytest.fixture(scope="module")
def int8_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro-int8")
    return {kind: Model.load(convert(kind, root / f"{kind}-int8.tflite", int8=True)) for kind in KINDS}


def _run(session, model: Model, x: np.ndarray, **kw) -> np.ndarray:
    return session.run({model.inputs[0].name: x}, **kw)[model.outputs[0].name]


# --- TFLite Micro -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_micro_float_matches_keras_and_loops_over_the_batch(built, kind):
    b = built(Format.TFLITE, kind)
    model = Model.load(b.path)
    session = MicroEngine().open(model)
    x = b.inputs[0]
    assert x.shape[0] == 2 and session._shapes[0][0] == 1  # batch 2 on a batch-1 interpreter: a loop
    y = _run(session, model, x)
    assert y.shape == b.expected[0].shape and y.dtype == np.float32
    np.testing.assert_allclose(y, b.expected[0], atol=b.atol, rtol=b.rtol)
    # The loop keeps sample order: each row equals that sample run alone.
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(_run(session, model, x[i:i + 1]), y[i:i + 1])


@pytest.mark.parametrize("kind", KINDS)
def test_micro_int8_with_float_feeds_agrees_with_keras(int8_models, kind):
    model = int8_models[kind]
    assert model.inputs[0].dtype == "int8" and model.inputs[0].quantization is not None
    x = sample(kind, batch=32, layout="nhwc")
    ref = keras_model(kind)(x).numpy()
    session = MicroEngine().open(model)
    y = _run(session, model, x)  # the base Session quantises x and dequantises y
    assert y.dtype == np.float32 and y.shape == ref.shape
    # int8 weights and activations on random inputs: measured max error is 0.5% (cnn) and 3.6% (mlp,
    # inputs beyond the calibrated range clip) of the output range, the mean error under 0.5%.
    err = np.abs(y - ref) / np.ptp(ref)
    assert err.max() < 0.06 and err.mean() < 0.01
    # Untrained models on noise have near-tied logits, so top-1 is a loose check (measured >= 0.94).
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.85
    raw = _run(session, model, x, dequantize_outputs=False)
    assert raw.dtype == np.int8
    np.testing.assert_array_equal(dequantize(raw, model.outputs[0]), y)


@pytest.mark.parametrize("kind", KINDS)
def test_micro_int8_matches_litert_to_one_step(int8_models, kind):
    from edgepilot.engines.litert import LiteRTEngine

    if not LiteRTEngine.available()[0]:
        pytest.skip("LiteRT is not installed")
    model = int8_models[kind]
    x = sample(kind, batch=8, layout="nhwc")
    micro = _run(MicroEngine().open(model), model, x, dequantize_outputs=False).astype(np.int32)
    litert = _run(LiteRTEngine().open(model), model, x, dequantize_outputs=False).astype(np.int32)
    # Same int8 reference math; only rounding inside kernels may differ.
    assert np.abs(micro - litert).max() <= 1


def test_micro_arena_accounting(built, int8_models):
    fp32 = MicroEngine().open(Model.load(built(Format.TFLITE, "cnn").path))
    int8 = MicroEngine().open(int8_models["cnn"])
    # The first conv's input (32x32x3) and output (32x32x8) are live together: a floor for fp32.
    assert fp32.arena_used_bytes >= (32 * 32 * 3 + 32 * 32 * 8) * 4
    assert fp32.arena_used_bytes < fp32.arena_size
    # int8 activations take a quarter of the bytes.
    assert fp32.arena_used_bytes / 4 <= int8.arena_used_bytes < fp32.arena_used_bytes / 2


def test_measure_arena_is_the_smallest_that_works(int8_models):
    model = int8_models["mlp"]
    need = measure_arena(model.path)
    floor = MicroEngine().open(model).arena_used_bytes
    assert need % 16 == 0 and floor <= need < floor + 4096
    x = sample("mlp", batch=3)
    session = MicroEngine(arena_size=need).open(model)
    assert session.arena_size == need
    np.testing.assert_array_equal(_run(session, model, x), _run(MicroEngine().open(model), model, x))
    with pytest.raises(ConfigError, match="too small"):
        MicroEngine().open(model, arena_size=need - 16)


def test_micro_options_and_bad_input(built, tmp_path):
    b = built(Format.TFLITE, "mlp")
    model = Model.load(b.path)
    with pytest.raises(UnavailableError, match="CPU only"):
        MicroEngine().open(model, device="cuda")
    # Single-threaded runtime: threads is accepted and changes nothing.
    threaded = _run(MicroEngine().open(model, threads=4), model, b.inputs[0])
    np.testing.assert_array_equal(threaded, _run(MicroEngine().open(model), model, b.inputs[0]))
    with pytest.raises(InputError):
        MicroEngine().open(model).run({model.inputs[0].name: np.zeros((2, 65), np.float32)})
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 64)
    with pytest.raises(ModelError):
        MicroEngine().open(Model(junk, Format.TFLITE, [], [], files=[junk]))


# --- TensorRT here (no GPU, no TensorRT) ---------------------------------------------------------

def _real_trt() -> bool:
    return TensorRTEngine.available()[0]


@pytest.mark.skipif(_real_trt(), reason="TensorRT and a GPU are present")
def test_tensorrt_reports_unavailable(tmp_path):
    ok, why = TensorRTEngine.available()
    assert not ok and ("tensorrt" in why.lower() or "gpu" in why.lower())
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"\x00" * 128)
    with pytest.raises(UnavailableError, match="TensorRT"):
        Model.load(plan)
    with pytest.raises(UnavailableError):
        TensorRTEngine().open(Model(plan, Format.TENSORRT, [], [], files=[plan]), device="cuda")


def test_tensorrt_needs_a_cuda_device(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00" * 16)
    with pytest.raises(UnavailableError, match="CUDA GPU only"):
        TensorRTEngine().open(Model(plan, Format.TENSORRT, [], [], files=[plan]), device="cpu")


@pytest.mark.skipif(not _real_trt(), reason="needs TensorRT and an NVIDIA GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_tensorrt_matches_torch(built, kind):
    b = built(Format.TENSORRT, kind)
    model = Model.load(b.path)
    with TensorRTEngine().open(model, device="cuda") as session:
        for batch in (1, 2):
            y = _run(session, model, b.inputs[0][:batch])
            np.testing.assert_allclose(y, b.expected[0][:batch], atol=b.atol, rtol=b.rtol)


# --- TensorRT session logic on a fake tensorrt + cuda-python ------------------------------------
# The fakes follow the TensorRT 10 / cuda-python signatures the engine calls; "device" memory is
# host memory, so copies are memmoves and the fake engine computes y = x @ W.

W = np.arange(8, dtype=np.float32).reshape(4, 2) / 8


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


class _FakeCuda:
    def __init__(self, devices: int = 1):
        self.devices, self.memory = devices, {}
        self.cudaError_t = _Err
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def cudaGetErrorName(self, err): return _Err.cudaSuccess, _Err(err).name.encode()
    def cudaGetDeviceCount(self):
        return (_Err.cudaSuccess, self.devices) if self.devices else (_Err.cudaErrorNoDevice, 0)
    def cudaSetDevice(self, i): return (_Err.cudaSuccess,) if i < self.devices else (_Err.cudaErrorNoDevice,)
    def cudaStreamCreate(self): return _Err.cudaSuccess, 7
    def cudaStreamDestroy(self, s): return (_Err.cudaSuccess,)
    def cudaStreamSynchronize(self, s): return (_Err.cudaSuccess,)

    def cudaMalloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.memory[ctypes.addressof(buf)] = buf
        return _Err.cudaSuccess, ctypes.addressof(buf)

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (_Err.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        return (_Err.cudaSuccess,)


class _FakeContext:
    def __init__(self):
        self.shape, self.addr = None, {}

    def set_input_shape(self, name, shape):
        if len(shape) != 2 or shape[1] != 4 or not 1 <= shape[0] <= 4:
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape if name == "x" else (self.shape[0], 2)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int)
        n = self.shape[0]
        x = np.frombuffer((ctypes.c_float * (n * 4)).from_address(self.addr["x"]), np.float32).reshape(n, 4)
        y = np.frombuffer((ctypes.c_float * (n * 2)).from_address(self.addr["y"]), np.float32).reshape(n, 2)
        y[:] = x @ W
        return True


class _FakeEngine:
    num_io_tensors, num_optimization_profiles, num_layers, device_memory_size_v2 = 2, 1, 1, 1024

    def get_tensor_name(self, i): return ("x", "y")[i]
    def get_tensor_mode(self, name): return "in" if name == "x" else "out"
    def get_tensor_dtype(self, name): return "float32"
    def get_tensor_shape(self, name): return (-1, 4) if name == "x" else (-1, 2)
    def get_tensor_profile_shape(self, name, p): return [(1, 4), (2, 4), (4, 4)]
    def create_execution_context(self): return _FakeContext()


def _fake_trt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.99-fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "ERROR": 1, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = np.dtype

    class Runtime:
        def __init__(self, logger): pass
        def deserialize_cuda_engine(self, data): return _FakeEngine() if data.startswith(b"FAKEPLAN") else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    cuda = _FakeCuda()
    for name, mod in {"tensorrt": _fake_trt(), "cuda": types.ModuleType("cuda"),
                      "cuda.bindings": types.ModuleType("cuda.bindings"), "cuda.bindings.runtime": cuda}.items():
        monkeypatch.setitem(__import__("sys").modules, name, mod)
    return cuda


def test_tensorrt_session_on_fake_runtime(fake_gpu, tmp_path):
    plan = tmp_path / "fake.engine"
    plan.write_bytes(b"FAKEPLAN")
    ok, why = TensorRTEngine.available()
    assert ok and "1 CUDA GPU" in why
    model = Model.load(plan)
    assert [(t.name, t.dtype, t.shape) for t in model.inputs] == [("x", "float32", (None, 4))]
    assert [(t.name, t.shape) for t in model.outputs] == [("y", (None, 2))]
    assert model.meta["profiles"] == [{"x": {"min": [1, 4], "opt": [2, 4], "max": [4, 4]}}]
    session = TensorRTEngine().open(model, device="cuda:0")
    rng = np.random.default_rng(0)
    for batch in (1, 3, 2):  # grows the device buffers, then reuses them
        x = rng.standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_allclose(session.run({"x": x})["y"], x @ W, rtol=1e-6)
    assert len(fake_gpu.memory) == 2
    with pytest.raises(InputError, match="rejects shape"):
        session.run({"x": np.zeros((5, 4), np.float32)})
    session.close()
    assert fake_gpu.memory == {}
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"not a plan")
    with pytest.raises(ModelError, match="cannot deserialize"):
        Model.load(bad)


def test_tensorrt_without_gpu_on_fake_runtime(fake_gpu, tmp_path):
    fake_gpu.devices = 0
    ok, why = TensorRTEngine.available()
    assert not ok and "GPU" in why
    plan = tmp_path / "fake.engine"
    plan.write_bytes(b"FAKEPLAN")
    with pytest.raises(UnavailableError, match="CUDA GPU"):
        Model.load(plan)
