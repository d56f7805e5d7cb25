"""Preprocessing: sizes, layouts, colour, ranges and int8 quantisation read off the model; boxes map back."""
from __future__ import annotations

import numpy as np
import pytest

from edgepilot.errors import ConfigError
from edgepilot.model import Quantization, TensorSpec
from edgepilot.runtime.item import Item
from edgepilot.runtime.preprocess import PreprocessConfig, Preprocessor


def frame(w=640, h=480) -> np.ndarray:
    f = np.zeros((h, w, 3), np.uint8)
    f[..., 0] = 10  # B
    f[..., 2] = 250  # R
    return f


def run(spec: TensorSpec, **cfg) -> Item:
    return Preprocessor(PreprocessConfig(**cfg), spec).process(Item("cam", 0, 0.0, frame=frame()))


def test_nhwc_float_rgb_0_1_stretch():
    it = run(TensorSpec("x", "float32", (1, 96, 128, 3)))
    assert it.tensor.shape == (96, 128, 3) and it.tensor.dtype == np.float32
    assert it.tensor[0, 0, 0] == pytest.approx(250 / 255) and it.tensor[0, 0, 2] == pytest.approx(10 / 255)
    t = it.transform
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (pytest.approx(0.2), pytest.approx(0.2), 0, 0)


def test_nchw_bgr_imagenet_and_dynamic_size_needs_size():
    spec = TensorSpec("x", "float32", ("N", 3, "H", "W"))
    with pytest.raises(ConfigError, match="dynamic size"):
        Preprocessor(PreprocessConfig(), spec)
    it = run(spec, size=(64, 48), color="bgr", normalize="imagenet")
    assert it.tensor.shape == (3, 48, 64)
    assert it.tensor[0, 0, 0] == pytest.approx((10 - 123.675) / 58.395, rel=1e-5)


def test_letterbox_maps_boxes_back_to_the_frame():
    it = run(TensorSpec("x", "float32", (1, 128, 128, 3)), resize="letterbox", pad_value=114, normalize="0-255")
    t = it.transform
    assert t.scale_x == t.scale_y == pytest.approx(0.2) and (t.pad_x, t.pad_y) == (0, 16)
    assert it.tensor[0, 0, 0] == 114 and it.tensor[64, 64, 0] == 250  # padding above, the frame in the middle
    box = t.to_frame(np.array([[0, 16, 128, 112]]))[0]
    assert box == pytest.approx([0, 0, 640, 480])


def test_int8_input_is_quantised_with_the_models_scale_and_zero_point():
    spec = TensorSpec("x", "int8", (1, 8, 8, 1), Quantization((1 / 255,), (-128,)))
    it = run(spec, color="gray")
    gray = round(0.299 * 250 + 0.587 * 0 + 0.114 * 10)  # OpenCV's BGR -> gray weights
    assert it.tensor.dtype == np.int8 and it.tensor.shape == (8, 8, 1)
    assert int(it.tensor[0, 0, 0]) == pytest.approx(gray - 128, abs=1)


def test_uint8_unquantised_input_takes_raw_pixels():
    it = run(TensorSpec("x", "uint8", (1, 4, 4, 3)))
    assert it.tensor.dtype == np.uint8 and tuple(it.tensor[0, 0]) == (250, 0, 10)


def test_sensor_vector_in_the_configured_order():
    pre = Preprocessor(PreprocessConfig(fields=["b", "a"]), TensorSpec("x", "float32", (1, 2)))
    it = pre.process(Item("s", 0, 0.0, values={"a": 1.0, "b": 2.0}))
    assert it.tensor.tolist() == [2.0, 1.0]
    bad = pre.process(Item("s", 1, 0.0, values={"a": 1.0}))
    assert bad.tensor is None and "lack b" in bad.error
    with pytest.raises(ConfigError, match="preprocess.fields"):
        Preprocessor(PreprocessConfig(), TensorSpec("x", "float32", (1, 2)))


def test_an_image_model_given_sensor_values_marks_the_item_not_the_pipeline():
    pre = Preprocessor(PreprocessConfig(), TensorSpec("x", "float32", (1, 8, 8, 3)))
    it = pre.process(Item("s", 0, 0.0, values={"t": 1.0}))
    assert it.error and it.tensor is None


def test_config_checks():
    with pytest.raises(ValueError, match="both mean and std"):
        PreprocessConfig(mean=[0.0])
    with pytest.raises(ConfigError, match="layout"):
        Preprocessor(PreprocessConfig(), TensorSpec("x", "float32", (1, 7, 7, 7)))


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_the_native_fast_path_equals_the_plain_arithmetic(layout):
    import cv2

    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (97, 131, 3), np.uint8)
    shape = (1, 40, 56, 3) if layout == "nhwc" else (1, 3, 40, 56)
    pre = Preprocessor(PreprocessConfig(resize="letterbox", normalize="imagenet", pad_value=114),
                       TensorSpec("x", "float32", shape))
    it = pre.process(Item("s", 0, 0.0, frame=f))
    t = it.transform
    nw, nh = round(131 * t.scale_x), round(97 * t.scale_y)
    small = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((40, 56, 3), 114, np.uint8)
    canvas[t.pad_y:t.pad_y + nh, t.pad_x:t.pad_x + nw] = small
    ref = (canvas[..., ::-1].astype(np.float32) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    ref = ref if layout == "nhwc" else ref.transpose(2, 0, 1)
    np.testing.assert_allclose(it.tensor, ref, atol=1e-4)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype,quant,cfg", [
    ("int8", Quantization((1 / 255,), (-128,)), {}),  # a full-int8 TFLite model's usual input
    ("uint8", Quantization((0.0078125,), (128,)), {"normalize": "-1-1"}),
    ("int8", Quantization((0.02, 0.03, 0.04), (1, -2, 3), axis=3), {"normalize": "imagenet", "color": "bgr"}),
    ("uint8", None, {"color": "gray"}),
    ("int8", None, {"normalize": "0-255"}),  # unquantised int8: pixels clipped at 127
])
def test_8bit_inputs_take_one_table_lookup_equal_to_the_float_path(layout, dtype, quant, cfg):
    """8-bit inputs skip float arithmetic (raw pixels, or cv2.LUT); the values are the float path's."""
    rng = np.random.default_rng(1)
    f = rng.integers(0, 256, (37, 53, 3), np.uint8)
    channels = 1 if cfg.get("color") == "gray" else 3
    shape = (1, 16, 24, channels) if layout == "nhwc" else (1, channels, 16, 24)
    if quant is not None and len(quant.scale) > 1:
        quant = Quantization(quant.scale, quant.zero_point, axis=3 if layout == "nhwc" else 1)
    pre = Preprocessor(PreprocessConfig(**cfg), TensorSpec("x", dtype, shape, quant))
    assert pre._pixels  # the 8-bit path, not the float one
    fast = pre.process(Item("s", 0, 0.0, frame=f)).tensor
    # the plain arithmetic, written out: resize, colour, normalise, quantise (or clip), layout
    import cv2

    img = cv2.resize(f, (24, 16), interpolation=cv2.INTER_LINEAR)
    color = cfg.get("color", "rgb")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None] if color == "gray" else (
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if color == "rgb" else img)
    x = (img.astype(np.float32) - pre.mean) / pre.std
    info = np.iinfo(dtype)
    if quant is None:
        want = np.clip(np.round(x * pre.std + pre.mean), info.min, info.max)
    else:
        want = np.clip(np.round(x / np.float32(quant.scale)) + np.float32(quant.zero_point), info.min, info.max)
    want = want.astype(dtype)
    want = want.transpose(2, 0, 1) if layout == "nchw" else want
    assert fast.dtype == np.dtype(dtype) and fast.shape == want.shape == shape[1:]
    assert np.array_equal(fast, want)


def test_raw_uint8_input_is_the_resized_pixels():
    pre = Preprocessor(PreprocessConfig(), TensorSpec("x", "uint8", (1, 4, 4, 3)))
    assert pre._pixels and pre._lut is None  # no table: the model takes pixels
