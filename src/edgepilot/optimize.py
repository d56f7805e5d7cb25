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

from edgepilot import catalog
from edgepilot.catalog import SOURCE
from edgepilot.errors import ConfigError, EdgepilotError, InputError, first_line
from edgepilot.evaluate.datasets import Dataset
from edgepilot.host import has_capability
from edgepilot.logcapture import section
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes import PassContext, all_passes
from edgepilot.shapes import Shapes, shapes_for

log = logging.getLogger(__name__)
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
    wanted = set(families or catalog.FAMILIES)
    unknown = wanted - set(catalog.FAMILIES)
    if unknown:
        raise ConfigError(f"unknown format {sorted(unknown)[0]!r}",
                          hint=f"choose from {', '.join(catalog.FAMILIES)}")
    registered = all_passes()
    start = catalog.source_variant(model)
    have = {SOURCE} | ({start} if start else set())
    steps: list[Step] = []
    for spec in catalog.CATALOGUE:
        p = registered.get(spec.pass_name)
        unusable = (p is None or (spec.source == SOURCE and model.format not in p.consumes)
                    or (spec.needs is not None and not has_capability(spec.needs)))
        if spec.id in have or spec.source not in have or unusable:
            continue
        steps.append(Step(spec.id, spec.pass_name, spec.options, spec.source))
        have.add(spec.id)
    needed = _needed(steps, wanted)
    planned = [s for s in steps if s.variant in needed]
    return planned + (_unreachable(model, set(families), planned) if families else [])


def _unreachable(model: Model, wanted: set[str], planned: list[Step]) -> list[Step]:
    """A skipped step for each variant of a wanted family that neither the plan nor the source provides."""
    start = catalog.source_variant(model)
    built = {catalog.get(s.variant).family for s in planned} | ({catalog.get(start).family} if start else set())
    registered = all_passes()

    def starts(variant: str, seen: frozenset[str] = frozenset()) -> set[str]:
        """The source formats some pass chain turns into `variant` (chains may loop: TFLite ↔ ONNX)."""
        found = {f.value for f in catalog.source_formats(variant)}
        for spec in catalog.CATALOGUE:
            if spec.id == variant and spec.source != SOURCE and spec.source not in seen:
                found |= starts(spec.source, seen | {variant})
            elif spec.id == variant and spec.source == SOURCE and spec.pass_name in registered:
                found |= {f.value for f in registered[spec.pass_name].consumes}
        return found

    steps: list[Step] = []
    for f in sorted(wanted - built):
        specs = list({s.id: s for s in reversed(catalog.CATALOGUE) if s.family == f}.values())[::-1]
        reason = (f"no pass chain builds {f} from the {model.format.value} source (chains to {f} start from "
                  f"{', '.join(sorted(set().union(*(starts(s.id) for s in specs)))) or 'no installed pass'})")
        steps += [Step(s.id, s.pass_name, s.options, s.source, unreachable=reason) for s in specs]
    return steps


def _needed(steps: list[Step], wanted: set[str]) -> set[str]:
    needed = {s.variant for s in steps if catalog.get(s.variant).family in wanted}
    by_variant = {s.variant: s for s in steps}
    frontier = list(needed)
    while frontier:  # keep the intermediate variants the wanted ones are built from
        src = by_variant[frontier.pop()].source
        if src in by_variant and src not in needed:
            needed.add(src)
            frontier.append(src)
    return needed


def run_plan(model: Model, steps: list[Step], out: Path, calibration: Dataset | None = None,
             progress: Progress | None = None, shapes: Shapes | None = None,
             trust_model_code: bool = False) -> tuple[dict[str, Model], list[Record]]:
    """Run every step; write out/variants/<id>/ and out/lineage.json. Never raises for one failed pass.

    `shapes` are the source model's input shapes, for converters that need concrete ones (pnnx).
    Passes that would run code from the model file are skipped unless `trust_model_code`.
    """
    from edgepilot.evaluate.sanity import SanityCheck

    variants: dict[str, Model] = {SOURCE: model}
    records: list[Record] = []
    sanity = SanityCheck(calibration)  # every variant loads, runs and gives the reference's output shapes
    start = catalog.source_variant(model)
    if start:
        variants[start] = _copy_source(model, out / "variants" / start)
        records.append(Record(start, "ok", source=SOURCE, reason="the source model itself",
                              files=[str(f) for f in variants[start].files]))
        try:
            sanity.check(start, variants[start])
        except EdgepilotError as e:
            records[-1].status, records[-1].reason = "failed", str(e)
            variants.pop(start)
    task = progress.add_task("optimizing", total=len(steps)) if progress else None
    registered = all_passes()
    for step in steps:
        if progress:
            progress.update(task, description=f"{step.variant} ({step.pass_name})")
        section(f"{step.variant} ({step.pass_name})")
        p = registered[step.pass_name]()
        rec = Record(step.variant, "ok", step.pass_name, step.source, step.options, tools=_tools(p))
        src = variants.get(step.source)
        ctx = PassContext(out / "variants" / step.variant, trust_model_code=trust_model_code,
                          cache_dir=out / ".cache")
        t0 = time.perf_counter()
        try:
            if step.unreachable:
                raise _Skip(step.unreachable)
            if src is None:
                raise _Skip(f"its source {step.source} was not built")
            ctx.input_shapes = shapes_for(src.inputs, shapes) if shapes else None
            if calibration is not None:
                ctx.calibration = {src.inputs[0].name: _calibration_for(calibration, src)}
                ctx.labels = calibration.y  # lets NNCF's accuracy control validate
            reasons = p.why_not(src, ctx)
            if reasons:
                raise _Skip("; ".join(reasons))
            result = p.run(src, p.options(**step.options), ctx)
            rec.files = [str(f) for f in result.files]
            sanity.check(step.variant, result)
            variants[step.variant] = result
            if calibration is not None and "calibration_samples" in ctx.notes:  # set by passes that calibrate
                rec.calibration_sha256 = calibration.fingerprint()
            rec.notes = ctx.notes
        except _Skip as e:
            rec.status, rec.reason = "skipped", str(e)
        except EdgepilotError as e:
            rec.status, rec.reason = "failed", str(e)
        except Exception as e:  # a converter's own bug must not stop the other variants
            log.exception("pass %s crashed", step.pass_name)
            rec.status, rec.reason = "failed", f"{type(e).__name__}: {first_line(e)}"
        rec.seconds = round(time.perf_counter() - t0, 3)
        records.append(rec)
        if progress:
            progress.advance(task)
    shutil.rmtree(out / ".cache", ignore_errors=True)
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
    "tflite-quantize": [{"float_head": True}],
}


def optimize_and_report(source: Model, ds: Dataset, out: Path, families: list[str] | None = None, *,
                        calibration_samples: int = 200, eval_samples: int = 1000, seconds: float = 2.0,
                        threads: int | None = None, max_accuracy_drop: float | None = 0.01,
                        min_agreement: float | None = None, task: str | None = None, postprocess=None,
                        calibration: Dataset | None = None, progress: Progress | None = None,
                        shapes: Shapes | None = None, trust_model_code: bool = False):
    """Plan, build, measure and report: writes variants/, lineage.json and report.{json,md,html} under `out`.

    Calibration samples come from `calibration` when given (e.g. the training split), else from `ds`.
    `task` and `postprocess` (a PostprocessConfig) say how to read the outputs; inferred when None.
    A quantised variant over the accuracy gates (on the task metric) is rebuilt with the RETRIES settings
    until one passes; the report lists every try. Variants are converted and timed at `shapes` (the source's
    input shapes), else at the data's sample shape with batch 1.
    """
    from edgepilot.evaluate.report import build_report, evaluate_variants, write_html, write_report
    from edgepilot.targets.select import Gates, accuracy_reasons

    sample = sample_shapes(source, ds, shapes)
    out.mkdir(parents=True, exist_ok=True)
    calib = (calibration or ds).subset(calibration_samples)
    eval_set = ds.subset(eval_samples, seed=1)
    variants, records = run_plan(source, plan(source, families), out, calib, progress, sample, trust_model_code)
    results, ref = evaluate_variants(variants, eval_set, seconds=seconds, threads=threads, progress=progress,
                                     task=task, postprocess=postprocess, shapes=shapes,
                                     reference=catalog.source_variant(source))
    gates = Gates(max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement)
    analysed = variants.get("onnx-fp32") or (source if source.format in (Format.ONNX, Format.KERAS) else None)
    report = build_report(source, ds, results, ref, analysed)
    by_record = {r.variant: r for r in records}
    for i, r in enumerate(report.variants):
        failing = accuracy_reasons(r, gates, report) if ref is not None and r.variant != ref.variant else []
        if not failing:
            continue
        rec = by_record.get(r.variant)
        tries = RETRIES.get(rec.pass_name, []) if rec else []
        better, tried = _retry(rec, variants, tries, out, calib, eval_set, ref, gates, report,
                               seconds=seconds, threads=threads, shapes=shapes) if tries else (None, [])
        if better is not None:
            report.variants[i] = better
        else:
            r.tries = tried
            r.flags.append(f"rejected by the accuracy gate: {'; '.join(failing)}"
                           + (f"; {len(tried)} safer settings tried, none passed" if tried
                              else "; no safer setting to try"))
    write_report(report, out)
    write_html(report, out)
    return report, records


def sample_shapes(source: Model, ds: Dataset, shapes: Shapes | None = None) -> Shapes:
    """The source's input shapes for conversion: the given ones, else the data's sample shape with batch 1.

    Data that does not fit them, or that a dynamic source model cannot run on, stops here with one
    InputError, before any variant is built (each would fail the same way).
    """
    from edgepilot.shapes import data_shape, with_shapes

    given = {k: tuple(v) for k, v in (shapes or {}).items()}
    first = with_shapes(source, given).inputs[0]
    sample = data_shape(first, ds)  # data that does not fit the model (or the given shape) stops here
    found = {**given, first.name: given.get(first.name, sample)}
    if not source.inputs[0].is_static:
        _check_runs(source, ds, found[first.name])
    return {s.name: found[s.name] for s in source.inputs if s.name in found}


def _check_runs(source: Model, ds: Dataset, shape: tuple[int, ...]) -> None:
    """Run one sample through a dynamic source model where an engine here runs its format."""
    from edgepilot.engines import all_engines, open_session
    from edgepilot.evaluate.datasets import fit_to_input

    engine = next((n for n, e in all_engines().items() if source.format in e.formats and e.available()[0]), None)
    if engine is None or len(source.inputs) != 1:  # a Keras or PyTorch source: its variants show it as they run
        return
    try:
        with open_session(source, engine) as s:
            s.run({s.inputs[0].name: fit_to_input(ds.subset(1), s.inputs[0])})
    except EdgepilotError as e:
        raise InputError(f"dataset {ds.name}: {source.path.name} cannot run on samples of shape {list(shape[1:])} "
                         f"({e.message})", hint="resize the data to a size the model takes, or give --shape") from e


def _retry(rec: Record, variants: dict[str, Model], tries: list[dict[str, Any]], out: Path, calib: Dataset,
           eval_set: Dataset, ref, gates, report, *, seconds: float, threads: int | None,
           shapes: Shapes | None = None):
    """Rebuild a variant with each safer setting in turn; the first that passes the gates replaces it."""
    from edgepilot.evaluate.report import check_int8, evaluate_one, score_variant
    from edgepilot.targets.select import accuracy_reasons

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
        result, outputs = evaluate_one(rec.variant, model, eval_set, seconds=seconds, threads=threads,
                                       shapes=shapes)
        if outputs is not None:
            score_variant(result, outputs, ref, eval_set.y)
        check_int8(result, model, report.variants, ref.variant)
        a = result.agreement
        log_lines.append(f"{options}: " + (f"{a.metric} {a.value:.4f}" if a else "not scored")
                         + (f", top-1 {result.top1:.4f}" if result.top1 is not None else ""))
        if a is not None and result.error is None and not accuracy_reasons(result, gates, report):
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
