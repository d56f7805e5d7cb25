"""Datasets (npz, csv, image folders, built-in), fitting them to a model's input, and running a model over them."""
from __future__ import annotations

import numpy as np
import pytest

from edgepilot.engines import open_session
from edgepilot.errors import InputError
from edgepilot.evaluate.accuracy import predict
from edgepilot.evaluate.datasets import Dataset, ImageOptions, fit_to_input, load_dataset
from edgepilot.model import Format, Model, TensorSpec


def test_npz_and_csv(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1, 2, 2]))
    d = load_dataset(tmp_path / "d.npz")
    assert d.x.shape == (6, 4) and d.y.tolist() == [0, 1, 0, 1, 2, 2]
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    c = load_dataset(tmp_path / "d.csv")
    assert c.x.tolist() == [[1, 2], [3, 4]] and c.y.tolist() == [0, 1]


def test_image_folder(tmp_path):
    import cv2

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            img = np.full((20, 30, 3), value, np.uint8)
            img[..., 2] = 255  # red in OpenCV's BGR order
            cv2.imwrite(str(tmp_path / cls / f"{i}.png"), img)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    d = load_dataset(tmp_path, ImageOptions(size=(8, 12), layout="nchw"))
    assert d.classes == ["cat", "dog"] and d.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.x.shape == (6, 3, 8, 12)
    assert d.x[0, 0].max() == pytest.approx(1.0)  # RGB: the red channel comes first
    assert d.x[3, 1].mean() == pytest.approx(200 / 255)


def test_builtin_digits():
    d = load_dataset("digits")
    assert d.x.shape == (1797, 8, 8, 1) and 0 <= d.x.min() and d.x.max() <= 1
    s = d.subset(100)
    assert len(s) <= 100 and set(s.y.tolist()) == set(range(10))  # every class represented
    assert s.fingerprint() != d.fingerprint() and s.fingerprint() == d.subset(100).fingerprint()


@pytest.mark.parametrize("content,match", [(None, "no such file"), ("", "is empty"), ("a,label\nx,1\n", "non-numeric")])
def test_bad_datasets(tmp_path, content, match):
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=match):
        load_dataset(path)


def test_empty_npz_and_pickles_refused(tmp_path):
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 3)))
    with pytest.raises(InputError, match="is empty"):
        load_dataset(tmp_path / "e.npz")
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not a readable .npz"):
        load_dataset(tmp_path / "p.npz")


def test_fit_to_input():
    d = Dataset("t", np.zeros((5, 8, 8, 1), np.float32))
    assert fit_to_input(d, TensorSpec("x", "float32", (None, 8, 8, 1))).shape == (5, 8, 8, 1)
    assert fit_to_input(d, TensorSpec("x", "float32", ("batch", 1, 8, 8))).shape == (5, 1, 8, 8)
    assert fit_to_input(d, TensorSpec("x", "float32", (1, 64))).shape == (5, 64)
    with pytest.raises(InputError, match=r"samples of shape \[8, 8, 1\] do not fit input 'x' \[\?, 3, 32, 32\]"):
        fit_to_input(d, TensorSpec("x", "float32", (None, 3, 32, 32)))


def test_predict_pads_fixed_batches(tmp_path):
    from builders import sample, torch_reference
    from builders.onnx import export_onnx

    model = Model.load(export_onnx("mlp", tmp_path / "fixed.onnx", dynamic_batch=False))
    assert model.format == Format.ONNX
    x = sample("mlp", batch=5)
    with open_session(model) as s:
        out = predict(s, x)
    assert list(out) == [o.name for o in model.outputs]  # every output, in the model's order
    np.testing.assert_allclose(out[model.outputs[0].name], torch_reference("mlp", x), atol=1e-5)
