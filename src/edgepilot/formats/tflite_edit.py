"""Rewrite a TFLite flatbuffer into the form today's tools take: current op codes, fp32 weights, a signature.

Files written by older converters (MediaPipe's BlazeFace among them) keep op codes only in
`deprecated_builtin_code`, store weights as fp16 behind DEQUANTIZE ops, and carry no signature;
LiteRT's quantiser then quantises nothing or refuses the file. Also: what precision a file's weights hold.
"""
from __future__ import annotations

import numpy as np

from edgepilot.errors import ModelError
from edgepilot.optional import require

# Precisions of a TFLite file's weights (the catalogue's names, kept literal here: formats never import it).
FP32, FP16, INT8, DYNAMIC_INT8, INT8_WEIGHTS = "fp32", "fp16", "int8", "dynamic-int8", "int8-weights"
_FLOAT16, _FLOAT32, _INT8, _UINT8 = 1, 0, 9, 3
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127


def _schema():
    return require("ai_edge_litert.schema_py_generated", "tflite")


def _load(buf: bytes):
    schema = _schema()
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    except Exception as e:  # the generated reader raises struct/index errors on a bad file
        raise ModelError(f"not a valid TFLite model ({type(e).__name__})") from e


def _pack(model) -> bytes:
    flatbuffers = require("flatbuffers", "tflite")
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def weight_precision(buf: bytes) -> str:
    """What the weights are stored and computed as: fp32, fp16 (behind DEQUANTIZE), int8 (full integer),
    dynamic-int8 (int8 weights fed to float ops) or int8-weights (int8 weights behind DEQUANTIZE)."""
    m = _load(buf)
    schema = _schema()
    codes = [_code(c) for c in m.operatorCodes or []]
    g = m.subgraphs[0]
    const = {i for i, t in enumerate(g.tensors or []) if _has_data(m, t)}
    dequantized = set()
    for op in g.operators or []:
        if codes[op.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE and op.inputs[0] in const:
            dequantized.add(g.tensors[op.inputs[0]].type)
    # a quantised activation has a scale: an unscaled uint8 image input cast to float is no int8 model
    activation_types = {t.type for i, t in enumerate(g.tensors or []) if i not in const and _scaled(t)}
    weight_types = {g.tensors[i].type for i in const}
    if activation_types & {_INT8, _UINT8}:
        return INT8
    if dequantized & {_INT8, _UINT8}:
        return INT8_WEIGHTS
    if weight_types & {_INT8, _UINT8}:
        return DYNAMIC_INT8
    if _FLOAT16 in dequantized or _FLOAT16 in weight_types:
        return FP16
    return FP32


def modernize(buf: bytes) -> tuple[bytes, dict[str, int]]:
    """The model with op codes in `builtin_code`, fp16 weights widened to fp32 (their DEQUANTIZE ops dropped),
    and a `serving_default` signature where it has none; with counts of what changed."""
    m = _load(buf)
    schema = _schema()
    fixed_codes = 0
    for c in m.operatorCodes or []:
        if c.builtinCode != c.deprecatedBuiltinCode and c.deprecatedBuiltinCode != _PLACEHOLDER_FOR_GREATER_OP_CODES \
                and c.builtinCode < c.deprecatedBuiltinCode:
            c.builtinCode, fixed_codes = c.deprecatedBuiltinCode, fixed_codes + 1
    codes = [_code(c) for c in m.operatorCodes or []]
    widened = 0
    for g in m.subgraphs or []:
        users = {}
        for op in g.operators or []:
            for i in op.inputs:
                users[i] = users.get(i, 0) + 1
        keep = []
        for op in g.operators or []:
            src = op.inputs[0] if op.inputs is not None and len(op.inputs) else -1
            t_in = g.tensors[src] if src >= 0 else None
            if (codes[op.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE and t_in is not None
                    and t_in.type == _FLOAT16 and _has_data(m, t_in) and op.outputs[0] not in g.outputs):
                data = np.frombuffer(bytes(bytearray(m.buffers[t_in.buffer].data)), np.float16).astype(np.float32)
                out = g.tensors[op.outputs[0]]
                buffer = schema.BufferT()
                buffer.data = np.frombuffer(data.tobytes(), np.uint8)
                m.buffers.append(buffer)
                out.buffer = len(m.buffers) - 1
                out.type = _FLOAT32
                if users.get(src) == 1:  # the fp16 copy is read by nothing else now
                    m.buffers[t_in.buffer].data = None
                widened += 1
                continue
            keep.append(op)
        g.operators = keep
        _drop_unused_tensors(g)
    signature = 0
    if not m.signatureDefs and m.subgraphs:
        signature = 1
        m.signatureDefs = [_signature(schema, m.subgraphs[0])]
    return _pack(m), {"op_codes_fixed": fixed_codes, "fp16_weights_widened": widened, "signature_added": signature}


def _drop_unused_tensors(g) -> None:
    """Remove tensors no operator or graph end refers to (an empty one would look like an activation)."""
    used = sorted({int(i) for op in g.operators or [] for i in [*op.inputs, *op.outputs] if i >= 0}
                  | {int(i) for i in g.inputs} | {int(i) for i in g.outputs})
    if len(used) == len(g.tensors or []):
        return
    new = {old: k for k, old in enumerate(used)}
    g.tensors = [g.tensors[i] for i in used]
    for op in g.operators or []:
        op.inputs = [new[int(i)] if i >= 0 else -1 for i in op.inputs]
        op.outputs = [new[int(i)] for i in op.outputs]
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = [new[int(i)] for i in op.intermediates if int(i) in new]
    g.inputs = [new[int(i)] for i in g.inputs]
    g.outputs = [new[int(i)] for i in g.outputs]


def signature_inputs(buf: bytes) -> tuple[str, dict[str, str]]:
    """The first signature's key and its input names by tensor name (the names calibration feeds use)."""
    m = _load(buf)
    if not m.signatureDefs:
        raise ModelError("the model has no signature", hint="rewrite it with modernize() first")
    sig, g = m.signatureDefs[0], m.subgraphs[m.signatureDefs[0].subgraphIndex]
    return _text(sig.signatureKey), {_text(g.tensors[t.tensorIndex].name): _text(t.name) for t in sig.inputs}


def _text(b) -> str:
    return b.decode() if isinstance(b, bytes) else str(b)


def head_tensors(buf: bytes) -> list[str]:
    """Names of the tensors a detection head computes: from the outputs back to and including the last weight
    layers (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED). Raw logits over a wide range (BlazeFace's scores run
    from -250 to 3) lose their sign in int8; these are the ops to keep in float."""
    m = _load(buf)
    ops = _schema().BuiltinOperator
    weighted = {ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.FULLY_CONNECTED}
    codes = [_code(c) for c in m.operatorCodes or []]
    g = m.subgraphs[0]
    producer = {int(o): op for op in g.operators or [] for o in op.outputs}
    names, stack, seen = [], [int(i) for i in g.outputs], set()
    while stack:
        op = producer.get(stack.pop())
        if op is None or id(op) in seen:
            continue
        seen.add(id(op))
        names += [_text(g.tensors[int(o)].name) for o in op.outputs]
        if codes[op.opcodeIndex] not in weighted:
            stack += [int(i) for i in op.inputs if i >= 0]
    return sorted(set(names))


def _signature(schema, g):
    sig = schema.SignatureDefT()
    sig.signatureKey = b"serving_default"
    sig.subgraphIndex = 0

    def maps(indices):
        out = []
        for i in indices:
            tm = schema.TensorMapT()
            tm.name, tm.tensorIndex = g.tensors[i].name, int(i)
            out.append(tm)
        return out

    sig.inputs, sig.outputs = maps(g.inputs), maps(g.outputs)
    return sig


def _scaled(t) -> bool:
    q = t.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


def _code(c) -> int:
    return max(int(c.builtinCode), int(c.deprecatedBuiltinCode))


def _has_data(m, t) -> bool:
    b = m.buffers[t.buffer] if 0 < t.buffer < len(m.buffers) else None
    return b is not None and b.data is not None and len(b.data) > 0
