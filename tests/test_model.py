"""Model.load: format detection from content, IO specs, and clear errors for bad files."""
from __future__ import annotations

import pytest

from edgepilot.errors import ModelError
from edgepilot.model import Format, Model


@pytest.mark.parametrize("fmt", [Format.ONNX, Format.TFLITE, Format.OPENVINO])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_load_reads_io_specs(built, fmt, kind):
    m = Model.load(built(fmt, kind).path)
    assert m.format == fmt
    assert len(m.inputs) == 1 and len(m.outputs) == 1
    assert m.inputs[0].dtype == "float32"
    shape = m.inputs[0].shape
    if kind == "mlp":
        assert shape[1:] == (64,)
    elif fmt == Format.TFLITE:
        assert shape[1:] == (32, 32, 3)
    else:
        assert shape[1:] == (3, 32, 32)
    assert shape[0] in (None, "batch")  # the fixtures export a dynamic batch
    assert m.outputs[0].shape[-1] == 10
    assert m.size_bytes > 0 and m.params and m.params > 0


def test_onnx_params_and_macs(built):
    m = Model.load(built(Format.ONNX, "cnn").path)
    # conv 3->8 (3x3) + conv 8->16 (3x3) + linear 16->10, biases included
    assert m.params == (8 * 3 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 10 + 10)
    assert m.macs == 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 160
    assert m.meta["opset"]["ai.onnx"] == 17


def test_tflite_macs_match_onnx(built):
    assert Model.load(built(Format.TFLITE, "cnn").path).macs == Model.load(built(Format.ONNX, "cnn").path).macs


def test_int8_tflite_has_quantisation(tmp_path):
    from builders.tflite import convert

    m = Model.load(convert("mlp", tmp_path / "q.tflite", int8=True))
    (i,), (o,) = m.inputs, m.outputs
    assert i.dtype == o.dtype == "int8"
    assert i.quantization.per_tensor and i.quantization.scale[0] > 0
    assert -128 <= i.quantization.zero_point[0] <= 127
    assert m.is_quantized


def test_detects_by_content_not_extension(built, tmp_path):
    src = built(Format.ONNX, "mlp").path
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(src.read_bytes())
    assert Model.load(renamed).format == Format.ONNX


def test_truncated_onnx(built, tmp_path):
    data = built(Format.ONNX, "cnn").path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated.onnx: not a valid ONNX model"):
        Model.load(bad)


def test_truncated_tflite(built, tmp_path):
    data = built(Format.TFLITE, "cnn").path.read_bytes()
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="not a valid TFLite model"):
        Model.load(bad)


def test_text_file_renamed_tflite(tmp_path):
    bad = tmp_path / "notes.tflite"
    bad.write_text("these are my notes, not a model\n")
    with pytest.raises(ModelError, match="the content is not a tflite model") as e:
        Model.load(bad)
    assert "TFL3" in e.value.hint


def test_empty_file(tmp_path):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    with pytest.raises(ModelError, match="empty file"):
        Model.load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        Model.load(tmp_path / "nope.onnx")


def test_unrecognised_content(tmp_path):
    bad = tmp_path / "blob"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match="unrecognised model format") as e:
        Model.load(bad)
    assert "ONNX" in e.value.hint


def test_extension_contradicts_content(built, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(built(Format.TFLITE, "mlp").path.read_bytes())
    with pytest.raises(ModelError, match="extension says onnx but the content is tflite"):
        Model.load(bad)


def test_openvino_without_bin(built, tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_bytes(built(Format.OPENVINO, "mlp").path.read_bytes())
    with pytest.raises(ModelError, match="m.bin is missing"):
        Model.load(xml)


def test_torch_pickle_is_refused(tmp_path):
    import torch

    from builders import torch_model

    p = tmp_path / "ckpt.pth"
    torch.save(torch_model("mlp"), p)
    with pytest.raises(ModelError, match="never unpickles"):
        Model.load(p)


def test_torch_export_and_torchscript(tmp_path):
    import torch

    from builders import sample, torch_model

    m, x = torch_model("cnn"), torch.from_numpy(sample("cnn"))
    torch.export.save(torch.export.export(m, (x,)), tmp_path / "m.pt2")
    torch.jit.save(torch.jit.trace(m, x), tmp_path / "m.pt")
    ep = Model.load(tmp_path / "m.pt2")
    assert ep.format == Format.TORCH_EXPORT and ep.inputs[0].shape == (2, 3, 32, 32)
    assert ep.outputs[0].shape == (2, 10) and ep.params == 1562
    ts = Model.load(tmp_path / "m.pt")
    assert ts.format == Format.TORCHSCRIPT and ts.params == 1562 and ts.inputs[0].shape is None


def test_keras_and_savedmodel(tmp_path):
    from builders import keras_model

    k = keras_model("mlp")
    k.save(tmp_path / "m.keras")
    k.export(tmp_path / "sm", verbose=False)
    for path, fmt in ((tmp_path / "m.keras", Format.KERAS), (tmp_path / "sm", Format.SAVEDMODEL)):
        m = Model.load(path)
        assert m.format == fmt
        assert m.inputs[0].shape == (None, 64) and m.outputs[0].shape == (None, 10)
        assert m.params == 64 * 32 + 32 + 32 * 10 + 10


def test_truncated_keras(tmp_path):
    from builders import keras_model

    keras_model("mlp").save(tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "bad.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="bad.keras"):
        Model.load(tmp_path / "bad.keras")
