"""Plan the passes for the requested formats, run them, and record the lineage of every variant.

A failed pass is recorded with its reason and the plan goes on; variants built from it are
recorded as skipped.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.progress import Progress

from edgepilot.errors import ConfigError, EdgepilotError
from edgepilot.evaluate.datasets import Dataset
from edgepilot.logcapture import section
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes import PassContext, all_passes

log = logging.getLogger(__name__)
SOURCE = "source"

# (variant, pass, options, built from, format family). Order matters: sources come first.
STEPS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("tflite-fp32", "keras-to-tflite", {"precision": "float32"}, SOURCE, "tflite"),
    ("tflite-dynamic", "keras-to-tflite", {"precision": "dynamic"}, SOURCE, "tflite"),
    ("tflite-fp16", "keras-to-tflite", {"precision": "float16"}, SOURCE, "tflite"),
    ("tflite-int8", "keras-to-tflite", {"precision": "int8"}, SOURCE, "tflite"),
    ("micro-int8", "tflite-to-micro", {}, "tflite-int8", "micro"),
    ("onnx-fp32", "keras-to-onnx", {}, SOURCE, "onnx"),
    ("onnx-fp32", "torch-to-onnx", {}, SOURCE, "onnx"),
    ("onnx-fp16", "onnx-fp16", {}, "onnx-fp32", "onnx"),
    ("onnx-int8-dynamic", "onnx-quantize-dynamic", {}, "onnx-fp32", "onnx"),
    ("onnx-int8-static", "onnx-quantize-static", {}, "onnx-fp32", "onnx"),
    ("openvino-fp32", "to-openvino", {"precision": "fp32"}, "onnx-fp32", "openvino"),
    ("openvino-fp16", "to-openvino", {"precision": "fp16"}, "onnx-fp32", "openvino"),
    ("openvino-int8", "openvino-nncf-int8", {}, "onnx-fp32", "openvino"),
    ("mnn-fp32", "onnx-to-mnn", {"precision": "fp32"}, "onnx-fp32", "mnn"),
    ("mnn-fp16", "onnx-to-mnn", {"precision": "fp16"}, "onnx-fp32", "mnn"),
    ("mnn-int8-weights", "onnx-to-mnn", {"precision": "int8-weights"}, "onnx-fp32", "mnn"),
    ("mnn-int8", "mnn-quantize-int8", {}, "onnx-fp32", "mnn"),
    ("ncnn-fp32", "onnx-to-ncnn", {"precision": "fp32"}, "onnx-fp32", "ncnn"),
    ("ncnn-fp16", "onnx-to-ncnn", {"precision": "fp16"}, "onnx-fp32", "ncnn"),
    ("tensorrt-fp16", "onnx-to-tensorrt", {"precision": "fp16"}, "onnx-fp32", "tensorrt"),
]
FAMILIES = sorted({s[4] for s in STEPS})
# A source model of these formats is already the variant of that name.
_SOURCE_IS = {Format.ONNX: "onnx-fp32", Format.TFLITE: "tflite-fp32"}


@dataclass
class Step:
    variant: str
    pass_name: str
    options: dict[str, Any]
    source: str
    unreachable: str | None = None  # why a requested variant cannot be built from this source: recorded as skipped


@dataclass
class Record:
    """One line of lineage.json."""

    variant: str
    status: str  # "ok", "failed", "skipped"
    pass_name: str | None = None
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    files: list[str] = field(default_factory=list)
    seconds: float | None = None
    tools: dict[str, str] = field(default_factory=dict)
    calibration_sha256: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def plan(model: Model, families: list[str] | None = None) -> list[Step]:
    """The steps that build the requested families from `model`, each from a source the plan provides.

    A family asked for by name that no pass chain reaches from this source gets steps marked unreachable.
    """
    wanted = set(families or FAMILIES)
    unknown = wanted - set(FAMILIES)
    if unknown:
        raise ConfigError(f"unknown format {sorted(unknown)[0]!r}", hint=f"choose from {', '.join(FAMILIES)}")
    registered = all_passes()
    have = {SOURCE} | ({_SOURCE_IS[model.format]} if model.format in _SOURCE_IS else set())
    steps: list[Step] = []
    for variant, pass_name, options, source, _ in STEPS:
        p = registered.get(pass_name)
        unusable = p is None or (source == SOURCE and model.format not in p.consumes)
        if variant in have or source not in have or unusable:
            continue
        steps.append(Step(variant, pass_name, options, source))
        have.add(variant)
    needed = _needed(steps, wanted)
    planned = [s for s in steps if s.variant in needed]
    return planned + (_unreachable(model, set(families), planned) if families else [])


def _unreachable(model: Model, wanted: set[str], planned: list[Step]) -> list[Step]:
    """A skipped step for each variant of a wanted family that neither the plan nor the source provides."""
    family = {v: f for v, *_, f in STEPS}
    built = {family[s.variant] for s in planned} | {family[v] for f, v in _SOURCE_IS.items() if f == model.format}
    registered = all_passes()

    def starts(variant: str) -> set[str]:  # the source formats some pass chain turns into `variant`
        found = {f.value for f, v in _SOURCE_IS.items() if v == variant}
        for v, p, _, src, _ in STEPS:
            if v == variant and src != SOURCE:
                found |= starts(src)
            elif v == variant and p in registered:
                found |= {f.value for f in registered[p].consumes}
        return found

    steps: list[Step] = []
    for f in sorted(wanted - built):
        variants = list(dict.fromkeys(v for v, *_, fam in STEPS if fam == f))
        reason = (f"no pass chain builds {f} from the {model.format.value} source (chains to {f} start from "
                  f"{', '.join(sorted(set().union(*map(starts, variants)))) or 'no installed pass'})")
        steps += [Step(v, p, o, src, unreachable=reason) for v, p, o, src, _ in
                  (next(r for r in STEPS if r[0] == v) for v in variants)]
    return steps


def _needed(steps: list[Step], wanted: set[str]) -> set[str]:
    family = {v: f for v, _, _, _, f in STEPS}
    needed = {s.variant for s in steps if family[s.variant] in wanted}
    by_variant = {s.variant: s for s in steps}
    frontier = list(needed)
    while frontier:  # keep the intermediate variants the wanted ones are built from
        src = by_variant[frontier.pop()].source
        if src in by_variant and src not in needed:
            needed.add(src)
            frontier.append(src)
    return needed


def run_plan(model: Model, steps: list[Step], out: Path, calibration: Dataset | None = None,
             progress: Progress | None = None) -> tuple[dict[str, Model], list[Record]]:
    """Run every step; write out/variants/<id>/ and out/lineage.json. Never raises for one failed pass."""
    variants: dict[str, Model] = {SOURCE: model}
    records: list[Record] = []
    if model.format in _SOURCE_IS:
        variants[_SOURCE_IS[model.format]] = _copy_source(model, out / "variants" / _SOURCE_IS[model.format])
        records.append(Record(_SOURCE_IS[model.format], "ok", source=SOURCE, reason="the source model itself",
                              files=[str(f) for f in variants[_SOURCE_IS[model.format]].files]))
    task = progress.add_task("optimizing", total=len(steps)) if progress else None
    registered = all_passes()
    for step in steps:
        if progress:
            progress.update(task, description=f"{step.variant} ({step.pass_name})")
        section(f"{step.variant} ({step.pass_name})")
        p = registered[step.pass_name]()
        rec = Record(step.variant, "ok", step.pass_name, step.source, step.options, tools=_tools(p))
        src = variants.get(step.source)
        ctx = PassContext(out / "variants" / step.variant)
        t0 = time.perf_counter()
        try:
            if step.unreachable:
                raise _Skip(step.unreachable)
            if src is None:
                raise _Skip(f"its source {step.source} was not built")
            if calibration is not None:
                ctx.calibration = {src.inputs[0].name: _calibration_for(calibration, src)}
                ctx.labels = calibration.y  # lets NNCF's accuracy control validate
            reasons = p.why_not(src, ctx)
            if reasons:
                raise _Skip("; ".join(reasons))
            result = p.run(src, p.options(**step.options), ctx)
            variants[step.variant] = result
            rec.files = [str(f) for f in result.files]
            if calibration is not None and "calibration_samples" in ctx.notes:  # set by passes that calibrate
                rec.calibration_sha256 = calibration.fingerprint()
            rec.notes = ctx.notes
        except _Skip as e:
            rec.status, rec.reason = "skipped", str(e)
        except EdgepilotError as e:
            rec.status, rec.reason = "failed", str(e)
        except Exception as e:  # a converter's own bug must not stop the other variants
            log.exception("pass %s crashed", step.pass_name)
            rec.status, rec.reason = "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
        rec.seconds = round(time.perf_counter() - t0, 3)
        records.append(rec)
        if progress:
            progress.advance(task)
    (out / "lineage.json").write_text(json.dumps({
        "source": {"path": str(model.path), "format": model.format.value},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "variants": [r.__dict__ for r in records]}, indent=2, default=str))
    variants.pop(SOURCE)
    return variants, records


class _Skip(Exception):
    pass


def _calibration_for(ds: Dataset, model: Model):
    from edgepilot.evaluate.datasets import fit_to_input

    return fit_to_input(ds, model.inputs[0])


def _copy_source(model: Model, dest: Path) -> Model:
    dest.mkdir(parents=True, exist_ok=True)
    for f in model.files:
        shutil.copy2(f, dest / f.name)
    return Model.load(dest / model.path.name)


def _tools(p) -> dict[str, str]:
    tools = {}
    for module in p.requires:
        dist = {"tensorflow": "tensorflow-cpu", "_tools": "MNN", "MNN": "MNN", "cv2": "opencv-python-headless"}.get(
            module, module)
        try:
            tools[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return tools


# Safer settings tried in order when a quantised variant loses more accuracy than the gate allows.
# "exclude_sensitive" keeps the first and last weight layers in float: the usual most sensitive ones;
# "exclude_head" keeps a detection head's decoding in float, as the usual YOLO int8 recipes do (tried
# only where the model has such a head).
RETRIES: dict[str, list[dict[str, Any]]] = {
    "onnx-quantize-static": [{"per_channel": True}, {"per_channel": True, "reduce_range": True},
                             {"per_channel": True, "calibrate_method": "entropy"},
                             {"per_channel": True, "calibrate_method": "percentile"},
                             {"per_channel": True, "exclude_head": True},
                             {"per_channel": True, "exclude_sensitive": True}],
    "onnx-quantize-dynamic": [{"per_channel": True}, {"per_channel": True, "reduce_range": True},
                              {"per_channel": True, "exclude_sensitive": True}],
    "openvino-nncf-int8": [{"preset": "mixed"}, {"exclude_head": True}, {"exclude_sensitive": True}],
}


def optimize_and_report(source: Model, ds: Dataset, out: Path, families: list[str] | None = None, *,
                        calibration_samples: int = 200, eval_samples: int = 1000, seconds: float = 2.0,
                        threads: int | None = None, max_accuracy_drop: float = 0.01,
                        calibration: Dataset | None = None, progress: Progress | None = None):
    """Plan, build, measure and report: writes variants/, lineage.json and report.{json,md,html} under `out`.

    Calibration samples come from `calibration` when given (e.g. the training split), else from `ds`.
    A quantised variant over the accuracy gate is rebuilt with the RETRIES settings until one passes;
    the report lists every try.
    """
    from edgepilot.evaluate.report import build_report, evaluate_variants, write_html, write_report

    out.mkdir(parents=True, exist_ok=True)
    calib = (calibration or ds).subset(calibration_samples)
    eval_set = ds.subset(eval_samples, seed=1)
    variants, records = run_plan(source, plan(source, families), out, calib, progress)
    results, reference, ref_out = evaluate_variants(variants, eval_set, seconds=seconds, threads=threads,
                                                    progress=progress)
    ref = next((r for r in results if r.variant == reference), None)
    by_record = {r.variant: r for r in records}
    for i, r in enumerate(results):
        if ref is None or ref.top1 is None or r.top1 is None or ref.top1 - r.top1 <= max_accuracy_drop:
            continue
        rec = by_record.get(r.variant)
        tries = RETRIES.get(rec.pass_name, []) if rec else []
        better, tried = _retry(rec, variants, tries, out, calib, eval_set, ref.top1 - max_accuracy_drop, ref_out,
                               seconds=seconds, threads=threads) if tries else (None, [])
        if better is not None:
            results[i] = better
        else:
            r.tries = tried
            r.flags.append(f"rejected by the accuracy gate: top-1 {ref.top1 - r.top1:.4f} below the reference "
                           f"(allowed {max_accuracy_drop})" + (f"; {len(tried)} safer settings tried, none passed"
                                                              if tried else "; no safer setting to try"))
    analysed = variants.get("onnx-fp32") or (source if source.format in (Format.ONNX, Format.KERAS) else None)
    report = build_report(source, ds, results, reference, analysed)
    write_report(report, out)
    write_html(report, out)
    return report, records


def _retry(rec: Record, variants: dict[str, Model], tries: list[dict[str, Any]], out: Path, calib: Dataset,
           eval_set: Dataset, needed_top1: float, ref_out, *, seconds: float, threads: int | None):
    """Rebuild a variant with each safer setting in turn; the first that passes the gate replaces it."""
    from edgepilot.evaluate.accuracy import agreement
    from edgepilot.evaluate.report import evaluate_one

    src = variants.get(rec.source)
    if src is None:
        return None, []
    p = all_passes()[rec.pass_name]()
    log_lines: list[str] = []
    for k, extra in enumerate(tries, 1):
        options = _retry_options(rec.options, extra, src)
        if options is None:
            continue
        ctx = PassContext(out / "variants" / rec.variant / f"retry{k}",
                          calibration={src.inputs[0].name: _calibration_for(calib, src)}, labels=calib.y)
        try:
            model = p.run(src, p.options(**options), ctx)
        except Exception as e:  # noqa: BLE001 - a setting that cannot be built is one failed try, not a crash
            log.debug("retry %s of %s failed", options, rec.variant, exc_info=True)
            log_lines.append(f"{options}: failed ({e if isinstance(e, EdgepilotError) else type(e).__name__})")
            continue
        result, outputs = evaluate_one(rec.variant, model, eval_set, seconds=seconds, threads=threads)
        log_lines.append(f"{options}: top-1 {result.top1 if result.top1 is not None else 'n/a'}")
        if result.top1 is not None and result.top1 >= needed_top1:
            if outputs is not None and ref_out is not None:
                result.agreement = agreement(outputs, ref_out)
            result.tries = log_lines
            result.flags.append(f"recovered by retry {k} with {options}")
            variants[rec.variant] = model
            return result, log_lines
    return None, log_lines


def _retry_options(options: dict[str, Any], extra: dict[str, Any], src: Model) -> dict[str, Any] | None:
    """A RETRIES entry as the pass's options; None where it does not apply to this model."""
    merged = {**options, **{k: v for k, v in extra.items() if k not in _NODE_CHOICES}}
    for key, choose in _NODE_CHOICES.items():
        if extra.get(key):
            nodes = choose(src) if src.format == Format.ONNX else []
            if not nodes:
                return None
            merged["nodes_to_exclude"] = sorted(set(merged.get("nodes_to_exclude", [])) | set(nodes))
    return merged


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_RESHAPING = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def _graph(model: Model):
    onnx = require("onnx", "onnx")
    return onnx.load(str(model.path), load_external_data=False).graph


def sensitive_nodes(model: Model) -> list[str]:
    """Names of the first and last Conv/Gemm/MatMul nodes of an ONNX model."""
    nodes = [n.name for n in _graph(model).node if n.op_type in _WEIGHTED and n.name]
    return sorted({nodes[0], nodes[-1]}) if nodes else []


def head_nodes(model: Model) -> list[str]:
    """The nodes that decode a detection head (sigmoid, box arithmetic, YOLOv8's DFL), or [] where there are none.

    Everything between the outputs and the last weight layers (short of shape computations), plus a weight
    layer fed by a Softmax (the DFL's fixed 1x1 Conv). A classifier's lone final Softmax is no such head.
    """
    graph = _graph(model)
    producer = {o: n for n in graph.node for o in n.output}

    def fed_by_softmax(node) -> bool:
        n = producer.get(node.input[0]) if node.input else None
        while n is not None and n.op_type in _RESHAPING:
            n = producer.get(n.input[0])
        return n is not None and n.op_type == "Softmax"

    head, seen = [], set()
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        node = stack.pop()
        if id(node) in seen or node.op_type == "Shape" or (node.op_type in _WEIGHTED and not fed_by_softmax(node)):
            continue  # a Shape reads only the size of the backbone's features
        seen.add(id(node))
        head.append(node)
        stack.extend(producer[i] for i in node.input if i in producer)
    names = sorted(n.name for n in head if n.name and n.op_type != "Constant")  # a Constant has nothing to quantise
    return names if len(names) > 1 else []


# RETRIES keys that choose nodes to keep in float, and how each chooses them
_NODE_CHOICES = {"exclude_sensitive": sensitive_nodes, "exclude_head": head_nodes}
