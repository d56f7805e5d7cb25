"""ONNX or OpenVINO IR → int8 OpenVINO IR with NNCF post-training quantisation, with accuracy control on labels."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConfigError, ConversionError, EdgepilotError, InputError, last_line, translate
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext
from edgepilot.passes.calibration import batches, calibration_set, fixed_batch

log = logging.getLogger(__name__)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="performance: symmetric weights and activations; mixed: asymmetric activations")
    subset_size: int = Field(300, ge=1, description="calibration samples NNCF collects statistics on")
    fast_bias_correction: bool = Field(True, description="False: the slower, usually more accurate bias correction")
    target_device: Literal["ANY", "CPU", "GPU", "NPU"] = "ANY"
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names to keep in float (ONNX node "
                                        "names for an ONNX source, operation names for an IR): NNCF's ignored scope")
    accuracy_control: bool | None = Field(
        None, description="quantize_with_accuracy_control: None uses it when labels exist, True requires labels")
    max_drop: float = Field(0.01, ge=0, le=1, description="largest allowed top-1 accuracy drop (accuracy control)")
    drop_type: Literal["absolute", "relative"] = "absolute"
    max_num_iterations: int = Field(
        30, ge=1, description="accuracy control: at most this many layers are reverted to float")


class OpenVINONncfInt8(Pass):
    name = "openvino-nncf-int8"
    consumes = frozenset({Format.ONNX, Format.OPENVINO})
    produces = Format.OPENVINO
    Options = Options
    requires = ("openvino", "nncf")
    extra = "openvino"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if not ctx.calibration:
            reasons.append("NNCF int8 needs calibration data (none given)")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        ov = require("openvino", "openvino")
        nncf = _nncf()
        data = calibration_set(model, ctx)
        names = [t.name for t in model.inputs]
        batch = fixed_batch(model) or 1  # NNCF feeds one item at a time; a dynamic batch takes single samples
        items = [f for f in batches(data, batch) if len(f[names[0]]) == batch]
        if not items:
            raise InputError(f"the model takes batches of {batch}, but there are only "
                             f"{len(data[names[0]])} calibration samples")
        use_labels = options.accuracy_control if options.accuracy_control is not None else ctx.labels is not None
        if use_labels:
            labels = _labels(ctx, len(data[names[0]]), batch)
        try:
            # read_model reads ONNX through the frontend directly (no ovc conversion step)
            source = ov.Core().read_model(str(model.path))
        except Exception as e:
            raise translate(e, ConversionError, f"OpenVINO cannot read {model.path.name}", line=last_line, limit=300,
                            hint="OpenVINO's reader may lack an op of this model") from e
        calibration = nncf.Dataset(items)
        kwargs: dict[str, Any] = dict(
            preset=getattr(nncf.QuantizationPreset, options.preset.upper()),
            target_device=getattr(nncf.TargetDevice, options.target_device),
            subset_size=min(options.subset_size, len(items)), fast_bias_correction=options.fast_bias_correction)
        if options.nodes_to_exclude:
            ignored = _ov_names(model, source, options.nodes_to_exclude)
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored)
            ctx.notes["ignored_scope"] = len(ignored)
        try:
            with _quiet(nncf):
                if use_labels:
                    validation = nncf.Dataset(list(zip(items, labels)))
                    params = nncf.quantization.advanced_parameters.AdvancedAccuracyRestorerParameters(
                        max_num_iterations=options.max_num_iterations)
                    quantized = nncf.quantize_with_accuracy_control(
                        source, calibration, validation, _top1, max_drop=options.max_drop,
                        drop_type=getattr(nncf.DropType, options.drop_type.upper()),
                        advanced_accuracy_restorer_parameters=params, **kwargs)
                else:
                    quantized = nncf.quantize(source, calibration, **kwargs)
        except EdgepilotError:
            raise
        except Exception as e:
            raise translate(e, ConversionError, f"NNCF failed to quantise {model.path.name}", line=last_line,
                            limit=300, hint="keep the nodes it fails on in float (nodes_to_exclude)") from e
        xml = ctx.workdir / "model_int8.xml"
        ov.save_model(quantized, str(xml), compress_to_fp16=False)  # int8 weights already; keep the rest exact
        ctx.notes["accuracy_control"] = bool(use_labels)
        if use_labels:
            core = ov.Core()
            before = _top1(core.compile_model(source, "CPU"), list(zip(items, labels)))[0]
            after = _top1(core.compile_model(str(xml), "CPU"), list(zip(items, labels)))[0]
            ctx.notes["top1_on_calibration"] = {"float": round(before, 4), "int8": round(after, 4)}
        return Model.load(xml)


def _ov_names(model: Model, source: Any, names: list[str]) -> list[str]:
    """The OpenVINO operations that ONNX nodes `names` became (an IR's names are used as they are).

    The ONNX frontend keeps a node's name, splits a biased Conv into `<name>/WithoutBiases` + `<name>`,
    and names an operation that yields a graph output after that output.
    """
    ops = {op.get_friendly_name() for op in source.get_ops()}
    outputs: dict[str, list[str]] = {}
    if model.format == Format.ONNX:
        onnx = require("onnx", "onnx")
        outputs = {n.name: list(n.output) for n in onnx.load(str(model.path), load_external_data=False).graph.node}
    found: list[str] = []
    for name in names:
        mine = sorted(o for o in ops if o == name or o.startswith(name + "/") or o in outputs.get(name, ()))
        if not mine:
            raise ConfigError(f"nodes_to_exclude names node {name!r}, which is not in {model.path.name}",
                              hint="give names of nodes in the source model's graph (Netron shows them)")
        found += mine
    return sorted(set(found))


def _nncf():
    # NNCF sends usage telemetry unless it sees its CI variable (read once, when nncf is first imported).
    os.environ.setdefault("NNCF_CI", "1")
    return require("nncf", "openvino")


def _labels(ctx: PassContext, n: int, batch: int) -> list[np.ndarray]:
    if ctx.labels is None:
        raise InputError("accuracy control needs labels", hint="pass --labels, or set accuracy_control: false")
    labels = np.asarray(ctx.labels).reshape(-1)
    if len(labels) < n:
        raise InputError(f"{len(labels)} labels for {n} calibration samples",
                         hint="give one integer class label per calibration sample")
    return [labels[i:i + batch] for i in range(0, n - n % batch, batch)]


def _top1(compiled: Any, items: Any) -> tuple[float, list[float]]:
    """The validation function: top-1 accuracy of the first output, and each item's (NNCF ranks layers by them)."""
    per_item: list[float] = []
    for feeds, label in items:
        logits = np.asarray(compiled(feeds)[0])
        per_item.append(float(np.mean(logits.reshape(len(label), -1).argmax(1) == label)))
    return (float(np.mean(per_item)) if per_item else 0.0), per_item


@contextlib.contextmanager
def _quiet(nncf):
    """NNCF logs progress to stdout at INFO; hand it to our logger's debug level instead."""
    chatter = io.StringIO()
    level = nncf.common.logging.nncf_logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(chatter):
            yield
    finally:
        nncf.set_log_level(level)
        if chatter.getvalue().strip():
            log.debug("nncf said: %s", chatter.getvalue().strip()[-2000:])
