"""MNN and ncnn: their model describers, corrupt files, and what their engines do beyond conformance."""
from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from builders import sample, torch_reference
from edgepilot.engines.mnn import MNNEngine
from edgepilot.engines.ncnn import NcnnEngine
from edgepilot.errors import InputError, ModelError, UnavailableError
from edgepilot.formats import mnn as mnn_format
from edgepilot.formats import ncnn as ncnn_format
from edgepilot.model import Format, Model

# Parameters of builders.torch_model: conv 3->8 (224) + conv 8->16 (1168) + linear 16->10 (170); 64*32+32 + 32*10+10.
PARAMS = {"cnn": 1562, "mlp": 2410}


@pytest.fixture
def mnn_model(built):
    pytest.importorskip("MNN")
    return lambda kind: built(Format.MNN, kind)


@pytest.fixture
def ncnn_model(built):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    return lambda kind: built(Format.NCNN, kind)


def _threads_added(engine: str, path: Path, threads: int) -> int:
    """OS threads a fresh process gains by opening and running a model (runtimes pool threads globally)."""
    code = textwrap.dedent(f"""
        import os, numpy as np
        from edgepilot.model import Model
        from edgepilot.engines import get_engine
        m = Model.load({str(path)!r})
        before = len(os.listdir("/proc/self/task"))
        s = get_engine({engine!r})().open(m, threads={threads})
        s.run({{m.inputs[0].name: np.zeros((2, 3, 32, 32), np.float32)}})
        print("THREADS", len(os.listdir("/proc/self/task")) - before)
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(next(ln for ln in done.stdout.splitlines() if ln.startswith("THREADS")).split()[1])


# --- MNN -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_mnn_describe_reads_io_and_params(mnn_model, kind):
    b = mnn_model(kind)
    m = Model.load(b.path)
    assert m.format is Format.MNN and m.files == [b.path]
    (inp,), (out,) = m.inputs, m.outputs
    per_sample = (3, 32, 32) if kind == "cnn" else (64,)
    assert (inp.name, inp.dtype, inp.shape) == ("input", "float32", ("batch", *per_sample))
    assert (out.name, out.dtype, out.shape) == ("output", "float32", ("batch", 10))
    assert m.params == PARAMS[kind]
    assert m.meta["default_input_shapes"] == {"input": [1, *per_sample]}
    assert m.meta["weight_storage"] == ["float32"]


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not an MNN model at all\n" * 20,
                                     bytes(range(256)) * 8])
def test_mnn_describe_rejects_garbage(tmp_path, content):
    pytest.importorskip("MNN")
    path = tmp_path / "bad.mnn"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="bad.mnn"):
        Model.load(path)


def test_mnn_corrupt_files_raise_instead_of_crashing(mnn_model, tmp_path):
    """Corruptions that crash MNN's own loader (found by fuzzing) must become ModelErrors.

    In a subprocess, so that a regression shows as a failed test rather than a dead test run.
    """
    buf = mnn_model("cnn").path.read_bytes()
    net = mnn_format._Table(buf, struct.unpack_from("<I", buf, 0)[0])
    conv = next(op for op in net.tables(3) if op.scalar(5, "i") == 12)
    out_vec = conv._indirect(4)  # the convolution's outputIndexes vector
    name = buf.index(b"/1/Relu_output_0")
    cases = {
        "truncated": buf[: len(buf) // 2],
        "non_utf8_name": buf[:name + 1] + b"\xff" + buf[name + 2:],
        "index_past_end": buf[:out_vec + 4] + struct.pack("<i", 10_000) + buf[out_vec + 8:],
        "index_aliased": buf[:out_vec + 4] + struct.pack("<i", 0) + buf[out_vec + 8:],
    }
    for case, data in cases.items():
        (tmp_path / f"{case}.mnn").write_bytes(data)
    code = textwrap.dedent(f"""
        from pathlib import Path
        from edgepilot.errors import ModelError
        from edgepilot.model import Model
        for case in {sorted(cases)!r}:
            try:
                Model.load(Path({str(tmp_path)!r}) / (case + ".mnn"))
                print("LOADED", case)
            except ModelError as e:
                print("MODELERROR", case, e)
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the process died ({done.returncode}): {done.stderr[-2000:]}"
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("LOADED", "MODELERROR"))]
    assert sorted(ln.split()[1] for ln in lines if ln.startswith("MODELERROR")) == sorted(cases), lines
    assert all(".mnn: not a valid MNN model" in ln for ln in lines)


def test_mnn_runs_any_batch_size(mnn_model):
    b = mnn_model("cnn")
    with MNNEngine().open(Model.load(b.path), threads=1) as s:
        for batch in (2, 1, 5):  # resizing down and up again between calls
            x = sample("cnn", batch=batch)
            y = s.run({"input": x})["output"]
            np.testing.assert_allclose(y, torch_reference("cnn", x), atol=1e-4, rtol=1e-3)


def test_mnn_runs_a_fixed_batch_model_in_chunks(tmp_path):
    """A reshape constant that pins batch 1 makes MNN's resize fail: the session falls back to chunks."""
    pytest.importorskip("MNN")
    torch = pytest.importorskip("torch")
    from builders.mnn import convert

    class Pinned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(48, 4)

        def forward(self, x):
            return self.fc(x.reshape(1, 48))

    model = Pinned().eval()
    onnx_path = tmp_path / "pinned.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 4, 4),), str(onnx_path), input_names=["input"],
                      output_names=["output"], dynamo=False, opset_version=17)
    m = Model.load(convert(onnx_path, tmp_path / "pinned.mnn"))
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    with torch.no_grad():
        want = np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy() for i in range(3)])
    with MNNEngine().open(m, threads=1) as s:
        np.testing.assert_allclose(s.run({"input": x})["output"], want, atol=1e-5)
        np.testing.assert_allclose(s.run({"input": x[:1]})["output"], want[:1], atol=1e-5)


def test_mnn_rejects_bad_feeds_and_devices(mnn_model):
    m = Model.load(mnn_model("mlp").path)
    with MNNEngine().open(m, threads=1) as s, pytest.raises(InputError, match="dimension 1"):
        s.run({"input": np.zeros((2, 63), np.float32)})
    with pytest.raises(UnavailableError, match="CPU only"):
        MNNEngine().open(m, device="gpu")


def test_mnn_honours_threads(mnn_model):
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts threads through /proc")
    path = mnn_model("cnn").path
    assert _threads_added("mnn", path, 3) - _threads_added("mnn", path, 1) == 2


def test_missing_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "MNN", None)  # makes `import MNN` raise ImportError
    monkeypatch.setitem(sys.modules, "ncnn", None)
    model = Model(tmp_path / "m", Format.MNN, [], [])
    with pytest.raises(UnavailableError) as err:
        MNNEngine().open(model)
    assert "edgepilot[mnn]" in str(err.value)
    with pytest.raises(UnavailableError) as err:
        NcnnEngine().open(Model(tmp_path / "m.param", Format.NCNN, [], []))
    assert "edgepilot[ncnn]" in str(err.value)


# --- ncnn ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_ncnn_describe_reads_io_and_params(ncnn_model, kind):
    b = ncnn_model(kind)
    m = Model.load(b.path)
    assert m.format is Format.NCNN and m.files == [b.path, b.path.with_suffix(".bin")]
    (inp,), (out,) = m.inputs, m.outputs
    per_sample = (3, 32, 32) if kind == "cnn" else (64,)
    assert (inp.name, inp.dtype, inp.shape) == ("in0", "float32", ("batch", *per_sample))
    assert (out.name, out.dtype) == ("out0", "float32")
    assert m.params == PARAMS[kind] and m.meta["params_method"] == "exact"
    assert m.meta["weight_storage"] == ["float32"]


def _write(tmp_path: Path, param: str, weights: bytes | None = b"") -> Path:
    path = tmp_path / "m.param"
    path.write_text(textwrap.dedent(param).lstrip())
    if weights is not None:
        path.with_suffix(".bin").write_bytes(weights)
    return path


_FC = """
    7767517
    2 2
    Input in0 0 1 in0 0=4
    InnerProduct fc 1 1 in0 out0 0=2 1=1 2=8
"""
_W = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
_B = np.array([0.5, -1.0], np.float32)


@pytest.mark.parametrize("param, weights, message", [
    ("7767518\n1 1\nInput in0 0 1 in0\n", b"", "magic"),
    ("7767517\n3 3\nInput in0 0 1 in0\nReLU r 1 1 in0 out0\n", b"", "declares 3 layers but holds 2"),
    ("7767517\n2 2\nInput in0 0 1 in0\nReLU r 1 1 nowhere out0\n", b"", "reads blob 'nowhere'"),
    ("7767517\n2 2\nInput in0 0 1 in0\nReLU r 1 1 in0 out0 0=x\n", b"", "malformed parameter '0=x'"),
    ("7767517\n2 1\nInput in0 0 1 in0\nReLU r 1 1 in0 out0\n", b"", "declares 1 blobs"),
    (_FC, struct.pack("<I", 0) + _W.tobytes()[:16], "ends inside the weights of layer 'fc'"),
    (_FC, None, "m.bin is missing"),
])
def test_ncnn_describe_rejects_malformed_models(tmp_path, param, weights, message):
    with pytest.raises(ModelError, match=message):
        ncnn_format.describe(_write(tmp_path, param, weights))


def test_ncnn_describe_and_run_fp16_weights(tmp_path):
    """Weights stored as fp16 (tag 0x01306B47) are detected, counted and computed with."""
    pytest.importorskip("ncnn")
    blob = struct.pack("<I", 0x01306B47) + _W.astype(np.float16).tobytes() + _B.tobytes()
    m = ncnn_format.describe(_write(tmp_path, _FC, blob))
    assert m.params == 10 and m.meta["weight_storage"] == ["float16"]
    assert m.inputs[0].shape == ("batch", 4)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    with NcnnEngine().open(m, threads=1) as s:
        y = s.run({"in0": x})["out0"]
    np.testing.assert_allclose(y, x @ _W.T + _B, atol=1e-2)


def test_ncnn_in_place_first_layer_neither_crashes_nor_writes_the_feed(tmp_path):
    pytest.importorskip("ncnn")
    m = ncnn_format.describe(_write(tmp_path, "7767517\n2 2\nInput in0 0 1 in0 0=4 1=4 2=3\n"
                                              "ReLU relu 1 1 in0 out0\n"))
    x = -np.ones((2, 3, 4, 4), np.float32)
    with NcnnEngine().open(m, threads=1) as s:
        assert np.all(s.run({"in0": x})["out0"] == 0)
    assert np.all(x == -1)


def test_set_input_shapes_round_trips(tmp_path):
    path = _write(tmp_path, _FC.replace(" 0=4", ""), struct.pack("<I", 0) + _W.tobytes() + _B.tobytes())
    assert ncnn_format.describe(path).inputs[0].shape is None
    ncnn_format.set_input_shapes(path, {"in0": (3, 8, 16)})
    assert ncnn_format.describe(path).inputs[0].shape == ("batch", 3, 8, 16)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_ncnn_loops_over_the_batch(ncnn_model, batch):
    b = ncnn_model("cnn")
    x = sample("cnn", batch=batch)
    with NcnnEngine().open(Model.load(b.path), threads=2) as s:
        y = s.run({"in0": x})["out0"]
    assert y.shape == (batch, 10)
    np.testing.assert_allclose(y, torch_reference("cnn", x), atol=b.atol, rtol=b.rtol)


def test_ncnn_fp32_mode_matches_the_reference_closely(ncnn_model):
    b = ncnn_model("mlp")
    with NcnnEngine().open(Model.load(b.path), threads=1, precision="fp32") as s:
        y = s.run({"in0": b.inputs[0]})["out0"]
    np.testing.assert_allclose(y, b.expected[0], atol=1e-5, rtol=1e-5)


def test_ncnn_honours_threads(ncnn_model):
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts threads through /proc")
    path = ncnn_model("cnn").path
    with NcnnEngine().open(Model.load(path), threads=3) as s:
        assert s._net.opt.num_threads == 3
    assert _threads_added("ncnn", path, 3) - _threads_added("ncnn", path, 1) == 2
