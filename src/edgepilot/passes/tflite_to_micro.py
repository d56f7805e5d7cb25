"""int8 TFLite → TFLite Micro deliverable: the model as an aligned C array, its op resolver and measured arena."""
from __future__ import annotations

import re
import shutil
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ModelError
from edgepilot.formats.tflite import read
from edgepilot.model import Format, Model
from edgepilot.passes.base import Pass, PassContext

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Where TFLM's method name is not what its generator's rule gives (its own tool special-cases the first two).
_METHOD_EXCEPTIONS = {"Lstm": "LSTM", "BatchMatmul": "BatchMatMul", "Padv2": "PadV2"}
_BYTES_PER_LINE = 12


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    array_name: str = Field("g_model", pattern=_IDENT, description="C name of the model array")
    language: Literal["c++", "c"] = Field(
        "c++", description="c++: a .cc file as TFLM projects use; c: a C11 .c file (stdalign.h)")
    arena_margin: float = Field(
        0.0, ge=0, le=4, description="fraction added to the measured arena: the measure uses TFLM's reference "
                                     "kernels, and optimised ones (CMSIS-NN) may want scratch memory")
    allow_float: bool = Field(False, description="also accept a float model (TFLM has float kernels for some MCUs)")


class TFLiteToMicro(Pass):
    name = "tflite-to-micro"
    consumes = frozenset({Format.TFLITE})
    produces = Format.TFLITE
    Options = Options
    requires = ("tflite_micro",)
    extra = "micro"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if model.format != Format.TFLITE:
            return reasons
        ops = set(model.meta.get("ops") or [])
        if "CUSTOM" in ops:
            reasons.append("the model has custom operators, which TFLM cannot resolve by name here")
        unnamed = sorted(op for op in ops if op.startswith("OP_"))
        if unnamed:
            reasons.append(f"operator codes {', '.join(unnamed)} have no known name (is tflite-micro installed?)")
        if not is_int8(model):
            reasons.append("tflite-to-micro takes a full-int8 TFLite model (convert with precision int8), "
                           "or set allow_float")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        from edgepilot.engines.micro import measure_arena

        if not options.allow_float and not is_int8(model):
            raise ModelError(f"{model.path.name} is not a full-int8 model",
                             hint="convert it with keras-to-tflite precision=int8, or set allow_float")
        data = model.path.read_bytes()
        ops = sorted(set(read(data).ops))
        methods = [resolver_method(op) for op in ops]
        tflite = ctx.workdir / "model.tflite"
        if model.path.resolve() != tflite.resolve():
            shutil.copyfile(model.path, tflite)
        arena = measure_arena(tflite)  # raises ModelError when TFLM lacks a kernel for one of the ops
        arena_size = _align(int(arena * (1 + options.arena_margin)))
        name = options.array_name
        ext = "cc" if options.language == "c++" else "c"
        header = ctx.workdir / f"{name}_data.h"
        source = ctx.workdir / f"{name}_data.{ext}"
        resolver = ctx.workdir / f"{name}_ops.h"
        header.write_text(_header(name, len(data), arena, arena_size, ops))
        source.write_text(_source(name, header.name, data, options.language))
        resolver.write_text(_resolver(name, header.name, methods))
        out = Model.load(tflite)
        out.files = [tflite, source, header, resolver]
        # model_bytes is what the array takes in flash; size_bytes also counts the C text around it
        out.meta.update(arena_bytes=arena, arena_size=arena_size, model_bytes=len(data), ops=ops,
                        resolver_methods=methods, c_source=str(source), header=str(header), resolver=str(resolver))
        ctx.notes.update(arena_bytes=arena, ops=ops)
        return out


def is_int8(model: Model) -> bool:
    """Full integer: quantised I/O, or float I/O wrapped around a QUANTIZE op (the converter's float-I/O int8)."""
    if any(t.quantization is not None and t.dtype in ("int8", "uint8", "int16") for t in model.inputs + model.outputs):
        return True
    return "QUANTIZE" in set(model.meta.get("ops") or [])


def resolver_method(op: str) -> str:
    """The MicroMutableOpResolver method that registers a builtin op: CONV_2D → AddConv2D.

    The rule of tflite-micro's generate_micro_mutable_op_resolver_from_model.py: split on '_'/'-',
    capitalise each part (keeping parts that start with a digit upper-case), then fix its exceptions.
    """
    parts = re.split(r"[_-]", op.replace("TFLite", ""))
    name = "".join((p[0].upper() + p[1:].lower()) if len(p) > 1 and p[0].isalpha() else p.upper() for p in parts)
    for wrong, right in _METHOD_EXCEPTIONS.items():
        name = name.replace(wrong, right)
    return "Add" + name


def _guard(name: str) -> str:
    return f"EDGEPILOT_{name.upper()}_DATA_H_"


def _header(name: str, size: int, arena: int, arena_size: int, ops: list[str]) -> str:
    upper = name.upper()
    return f"""// Generated by edgepilot: a TFLite model for TensorFlow Lite Micro. Do not edit.
// Ops: {', '.join(ops)}
#ifndef {_guard(name)}
#define {_guard(name)}

// Tensor arena: {arena} bytes measured by running the model in TFLM's reference kernels on a 64-bit host
// (a 32-bit MCU needs slightly less); {upper}_ARENA_SIZE adds the requested margin.
#define {upper}_ARENA_BYTES_MEASURED {arena}
#define {upper}_ARENA_SIZE {arena_size}
#define {upper}_LEN {size}

#ifdef __cplusplus
extern "C" {{
#endif

extern const unsigned char {name}[];
extern const unsigned int {name}_len;

#ifdef __cplusplus
}}
#endif

#endif  // {_guard(name)}
"""


def _source(name: str, header: str, data: bytes, language: str) -> str:
    rows = []
    for i in range(0, len(data), _BYTES_PER_LINE):
        rows.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + _BYTES_PER_LINE]) + ",")
    # The flatbuffer is read in place: TFLM needs it 16-byte aligned. C11 spells alignas via stdalign.h.
    include = '#include <stdalign.h>\n' if language == "c" else ""
    return (f"// Generated by edgepilot: the model flatbuffer ({len(data)} bytes). Do not edit.\n"
            f"{include}#include \"{header}\"\n\n"
            f"alignas(16) const unsigned char {name}[] = {{\n" + "\n".join(rows) + "\n};\n"
            f"const unsigned int {name}_len = {len(data)};\n")


def _resolver(name: str, header: str, methods: list[str]) -> str:
    calls = "\n".join(f"  if (resolver.{m}() != kTfLiteOk) return kTfLiteError;" for m in methods)
    count = f"k{_camel(name)}OpCount"
    return f"""// Generated by edgepilot: registers exactly the ops {header} needs. For TFLM builds. Do not edit.
#pragma once

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

constexpr int {count} = {len(methods)};
using {_camel(name)}OpResolver = tflite::MicroMutableOpResolver<{count}>;

inline TfLiteStatus Register{_camel(name)}Ops({_camel(name)}OpResolver& resolver) {{
{calls}
  return kTfLiteOk;
}}
"""


def _camel(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.split("_") if p) or "Model"


def _align(n: int, to: int = 16) -> int:
    return -(-n // to) * to
