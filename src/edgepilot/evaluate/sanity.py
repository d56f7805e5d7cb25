"""Prove each variant sane right after its pass: it loads on its engine, runs a sample, has the reference's output
shapes, no NaN, and no constant or collapsed output where the reference has none. Says whether int8 is really int8.
"""
from __future__ import annotations

import logging

import numpy as np

from edgepilot import catalog
from edgepilot.errors import EdgepilotError, ModelError, UnavailableError, first_line
from edgepilot.evaluate.datasets import Dataset, fit_to_input
from edgepilot.evaluate.latency import synthetic_feeds
from edgepilot.model import Format, Model

log = logging.getLogger(__name__)
SAMPLES = 4  # enough to tell an output that ignores its input from one that does not


class SanityCheck:
    """Checks variants in plan order; the first float32 one that passes is the reference for the others."""

    def __init__(self, data: Dataset | None = None) -> None:
        self.data = data.subset(SAMPLES) if data is not None else None
        self.reference: list[np.ndarray] | None = None
        self.reference_id: str | None = None

    def _sample(self, model: Model) -> np.ndarray:
        if self.data is not None:
            return fit_to_input(self.data, model.inputs[0])
        # no data: seeded noise, one sample per run (the sample's fixed batch fits any batch size)
        return np.concatenate([synthetic_feeds(model.inputs[:1], 1, seed=k)[model.inputs[0].name]
                               for k in range(SAMPLES)])

    def check(self, vid: str, model: Model) -> None:
        """Raise ModelError with the reason when `vid` is broken; a variant no engine here runs is left unchecked."""
        from edgepilot.engines import engine_for, open_session
        from edgepilot.evaluate.accuracy import predict

        spec = catalog.get(vid)
        try:  # on the engine that will measure it, at the precision it claims
            engine = engine_for(model, spec.engine if spec else None).name
        except UnavailableError as e:
            log.info("%s not checked: %s", vid, e)
            return
        if not model.inputs:
            raise ModelError(f"{vid} has no input")
        try:
            sample = self._sample(model)
        except EdgepilotError as e:  # e.g. dynamic dims and no data: nothing to run it on
            log.info("%s not checked: %s", vid, e)
            return
        try:
            with open_session(model, engine, precision=spec.compute if spec else None) as s:
                outputs = list(predict(s, sample).values())
        except EdgepilotError as e:
            raise ModelError(f"{vid} does not run on {engine}: {e.message}") from e
        except Exception as e:  # a runtime's own failure to load or run is this variant's fault
            raise ModelError(f"{vid} does not run on {engine}: {type(e).__name__}: {first_line(e)}") from e
        problem = self.problem(outputs)
        if problem:
            raise ModelError(f"{vid} is broken on {engine}: {problem}")
        if self.reference is None and spec is not None and spec.precision == catalog.FP32:
            self.reference, self.reference_id = outputs, vid

    def problem(self, outputs: list[np.ndarray]) -> str | None:
        """What is wrong with these outputs (in the model's order), judged against the reference's; None if fine."""
        ref = self.reference
        if ref is not None and len(outputs) != len(ref):
            return f"{len(outputs)} outputs where the reference {self.reference_id} has {len(ref)}"
        unmatched = list(range(len(ref))) if ref is not None else []
        for k, out in enumerate(outputs):
            a = np.asarray(out)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return f"output {k} holds NaN or infinite values"
            if ref is None:
                continue
            # converters may reorder outputs: the same output, in order, else the first left with this shape
            j = k if k in unmatched and ref[k].shape == a.shape else next(
                (i for i in unmatched if ref[i].shape == a.shape), None)
            if j is None:
                return f"output {k} has shape {list(a.shape)} where the reference has {list(ref[k].shape)}"
            unmatched.remove(j)
            r = np.asarray(ref[j])
            if a[:1].size > 1 and _constant(a) and not _constant(r):
                return f"output {k} is constant (every value {a.flat[0]:.4g})"
            if len(a) > 1 and _collapsed(a) and not _collapsed(r):
                return f"output {k} is the same for every input"
        return None


def _constant(a: np.ndarray) -> bool:
    return bool(np.all(a == a.flat[0]))


def _collapsed(a: np.ndarray) -> bool:
    return bool(np.all(a == a[:1]))


_ONNX_INT8_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                  "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul"}


def int8_ops(model: Model) -> bool | None:
    """Whether the model holds an int8 operation (or int8 weights it computes with); None where it cannot be read."""
    try:
        if model.format == Format.ONNX:
            import onnx

            g = onnx.load(str(model.path), load_external_data=False).graph
            return any(n.op_type in _ONNX_INT8_OPS for n in g.node)
        if model.format == Format.OPENVINO:
            import openvino as ov

            ops = ov.Core().read_model(str(model.path)).get_ops()
            return any(op.get_type_name() == "FakeQuantize" or (
                op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("i8", "u8"))
                for op in ops)
        if model.format == Format.TFLITE:
            from edgepilot.optional import require

            interp = require("ai_edge_litert.interpreter", "tflite").Interpreter(model_path=str(model.path))
            return any(np.dtype(t["dtype"]) in (np.int8, np.uint8) for t in interp.get_tensor_details())
        if model.format == Format.MNN:
            return any(s != "float32" for s in model.meta.get("weight_storage", []))
    except Exception as e:  # an unreadable file only costs this flag
        log.info("cannot read the ops of %s: %s", model.path, e)
    return None
