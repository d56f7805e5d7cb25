"""Hostile model files: each payload writes a marker file when its code runs; edgepilot must never run it.

Every malicious file is built here, in tmp_path; each fixture first proves its payload is live
(an unsafe loader does write the marker), then the CLI (in a subprocess) must refuse or read the
file without writing it.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")


class Payload:
    """Unpickling this opens (creates) the marker file: code from the model file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x).softmax(-1)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "150"}
    return subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def assert_refused_or_read_safely(model: Path, marker: Path, tmp_path: Path, refusal: str | None) -> None:
    """inspect, bench and optimize without the opt-in: no marker; a refusal is one line naming why."""
    runs = {"inspect": cli("inspect", str(model), cwd=tmp_path),
            "bench": cli("bench", str(model), "--runs", "1", "--warmup", "0", cwd=tmp_path),
            "optimize": cli("optimize", str(model), "--data", "digits", "--formats", "tflite,onnx",
                            "--out", str(tmp_path / "out"), "--seconds", "0.1", "--eval-samples", "20",
                            "--calibration-samples", "5", cwd=tmp_path)}
    for command, proc in runs.items():
        assert not marker.exists(), f"{command} ran the payload"
        if refusal is not None:
            assert proc.returncode == 2, (command, proc.stdout[-2000:], proc.stderr[-2000:])
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and refusal in errors[0], (command, proc.stderr[-2000:])
            assert "Traceback" not in proc.stderr


def _export(path: Path) -> Path:
    program = torch.export.export(Tiny(), (torch.zeros(2, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return path


def _rewrite_zip(path: Path, replace: dict[str, bytes]) -> None:
    """Replace members (named below the archive's root folder) of a zip archive."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    root = next(iter(members)).split("/")[0]
    members.update({f"{root}/{name}": data for name, data in replace.items()})
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _prove_live(load, marker: Path) -> None:
    """The payload runs under an unsafe loader: the test below it means something."""
    try:
        load()
    except Exception:
        pass  # most payloads break the loader after they ran
    assert marker.exists(), "the payload did not run under the unsafe loader"
    marker.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["sample_inputs", "weight"])
def test_pt2_with_a_pickle_payload_is_refused(tmp_path, where):
    marker, path = tmp_path / "pwned", _export(tmp_path / "model.pt2")
    if where == "sample_inputs":
        _rewrite_zip(path, {"data/sample_inputs/model.pt": _saved(((Payload(marker),), {}))})
    else:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read(next(n for n in z.namelist() if n.endswith("model_weights_config.json"))))
        entry = config["config"]["fc.weight"]
        entry["use_pickle"] = True
        _rewrite_zip(path, {f"data/weights/{entry['path_name']}": _saved(Payload(marker)),
                            "data/weights/model_weights_config.json": json.dumps(config).encode()})
    _prove_live(lambda: torch.export.load(str(path)), marker)
    assert_refused_or_read_safely(path, marker, tmp_path, "restricted loader refuses")


def test_an_honest_pt2_is_read_without_torch_export_load(tmp_path):
    from edgepilot.model import Format, Model

    m = Model.load(_export(tmp_path / "model.pt2"))
    assert m.format == Format.TORCH_EXPORT and m.params == 64 * 10 + 10
    assert m.inputs[0].dtype == "float32" and isinstance(m.inputs[0].shape[0], str) and m.inputs[0].shape[1] == 64
    assert m.outputs[0].shape[1] == 10


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pt2", ".bin"])
def test_a_torch_save_checkpoint_is_refused_under_every_extension(tmp_path, suffix):
    marker, path = tmp_path / "pwned", tmp_path / f"model{suffix}"
    torch.save({"weights": torch.zeros(3), "hook": Payload(marker)}, path)
    _prove_live(lambda: torch.load(path, weights_only=False), marker)
    assert_refused_or_read_safely(path, marker, tmp_path, "edgepilot never unpickles")


def test_a_legacy_torch_save_pickle_is_refused(tmp_path):
    from edgepilot.errors import ModelError
    from edgepilot.model import Model

    marker, path = tmp_path / "pwned", tmp_path / "model.pt"
    torch.save(Payload(marker), path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match="not a torchscript model"):
        Model.load(path)
    assert not marker.exists()


@pytest.mark.slow
def test_torchscript_with_an_injected_global_is_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Tiny(), torch.zeros(1, 64)), path)
    injected = pickle.dumps(Payload(marker), protocol=2)
    _rewrite_zip(path, {"data.pkl": injected})
    _prove_live(lambda: pickle.loads(injected), marker)
    assert_refused_or_read_safely(path, marker, tmp_path, "names the Python global io.open")


def _lambda_model(marker: Path):
    keras = tf.keras
    x = keras.Input((64,), name="x")
    # the marker's path is a constant of the lambda's bytecode, which Keras saves
    code = eval(f"lambda t: t + 0.0 * len(open({str(marker)!r}, 'w').name)")  # noqa: S307 - builds the payload
    y = keras.layers.Lambda(code)(x)
    return keras.Model(x, keras.layers.Dense(10, activation="softmax")(y))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_lambda_layers_are_refused(tmp_path, suffix):
    marker, path = tmp_path / "pwned", tmp_path / f"model{suffix}"
    _lambda_model(marker).save(path)
    marker.unlink()  # building the model ran the lambda once, here in the test
    _prove_live(lambda: tf.keras.models.load_model(path, compile=False, safe_mode=False), marker)
    assert_refused_or_read_safely(path, marker, tmp_path, "holds Python code")
    proc = cli("inspect", str(path), cwd=tmp_path)
    assert "--trust-model-code" in proc.stderr


class _Initializer(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer writes the marker: TensorFlow runs it when it loads the SavedModel."""

    def __init__(self, marker: Path):
        self.marker = str(marker)
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="payload")

    def _initialize(self):
        return tf.io.write_file(self.marker, "code from the model file ran")


def _hostile_savedmodel(path: Path, marker: Path) -> Path:
    module = tf.Module()
    module.payload = _Initializer(marker)
    module.w = tf.Variable(tf.ones([64, 10]))
    module.serve = tf.function(lambda x: {"probs": tf.nn.softmax(x @ module.w)},
                               input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.mark.slow
def test_a_savedmodel_whose_initializer_writes_a_file_is_read_without_running_it(tmp_path):
    from edgepilot.model import Format, Model

    marker = tmp_path / "pwned"
    path = _hostile_savedmodel(tmp_path / "sm", marker)
    assert not marker.exists()
    _prove_live(lambda: tf.saved_model.load(str(path)), marker)
    m = Model.load(path)  # signatures from saved_model.pb, read as protobuf
    assert m.format == Format.SAVEDMODEL and m.params == 640 and not marker.exists()
    assert [(t.name, t.shape) for t in m.inputs] == [("x", (None, 64))]
    assert [(t.name, t.shape) for t in m.outputs] == [("probs", (None, 10))]
    assert_refused_or_read_safely(path, marker, tmp_path, None)
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    tflite = [v for v in lineage["variants"] if v["pass_name"] == "keras-to-tflite"]
    assert tflite and all(v["status"] == "skipped" and "--trust-model-code" in v["reason"] for v in tflite)


@pytest.mark.slow
def test_the_opt_in_lets_a_savedmodel_conversion_run_its_graph(tmp_path):
    from edgepilot.model import Model
    from edgepilot.optimize import SOURCE, Step, run_plan

    marker = tmp_path / "pwned"
    source = Model.load(_hostile_savedmodel(tmp_path / "sm", marker))
    step = Step("tflite-fp32", "keras-to-tflite", {"precision": "float32"}, SOURCE)
    _, (refused,) = run_plan(source, [step], tmp_path / "untrusted")
    assert refused.status == "skipped" and not marker.exists()
    _, (trusted,) = run_plan(source, [step], tmp_path / "trusted", trust_model_code=True)
    # the converter ran the graph (then TFLite refuses its WriteFile op): that is what the user opted into
    assert trusted.status != "skipped" and marker.exists()


def test_pt2_conversion_needs_the_opt_in(tmp_path):
    from edgepilot.model import Model
    from edgepilot.passes import PassContext, get_pass

    source = Model.load(_export(tmp_path / "model.pt2"))
    p = get_pass("torch-to-onnx")
    assert any("--trust-model-code" in r for r in p.why_not(source, PassContext(tmp_path / "a")))
    assert p.why_not(source, PassContext(tmp_path / "b", trust_model_code=True)) == []

