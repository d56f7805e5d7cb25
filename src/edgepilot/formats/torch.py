"""Read a TorchScript archive or a torch.export (.pt2) program; needs PyTorch (the `torch` extra).

Both are loaded with PyTorch's own restricted loaders: edgepilot never unpickles arbitrary objects.
"""
from __future__ import annotations

from pathlib import Path

from edgepilot.errors import ModelError
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require


def describe(path: Path, fmt: Format) -> Model:
    torch = require("torch", "torch")
    try:
        if fmt == Format.TORCH_EXPORT:
            return _describe_exported(torch, path)
        m = torch.jit.load(str(path), map_location="cpu")
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{path}: PyTorch cannot load it ({str(e).strip().splitlines()[0]})") from e
    args = [a for a in m.forward.schema.arguments if a.name != "self"]
    # TorchScript records no shapes: the rank is unknown until the user names one.
    inputs = [TensorSpec(a.name, "float32", None) for a in args]
    return Model(path=path, format=Format.TORCHSCRIPT, inputs=inputs,
                 outputs=[TensorSpec("output", "float32", None)],
                 params=int(sum(p.numel() for p in m.parameters())), files=[path])


def _describe_exported(torch, path: Path) -> Model:
    ep = torch.export.load(str(path))
    nodes = {n.name: n for n in ep.graph.nodes}
    user_inputs = ep.graph_signature.user_inputs
    inputs = [_spec(torch, name, nodes[name].meta.get("val")) for name in user_inputs]
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = out_node.args[0] if isinstance(out_node.args[0], (tuple, list)) else [out_node.args[0]]
    outputs = [_spec(torch, getattr(o, "name", f"output_{i}"), getattr(o, "meta", {}).get("val"))
               for i, o in enumerate(outs)]
    return Model(path=path, format=Format.TORCH_EXPORT, inputs=inputs, outputs=outputs,
                 params=int(sum(t.numel() for t in ep.state_dict.values())), files=[path])


def _spec(torch, name: str, val) -> TensorSpec:
    if val is None or not hasattr(val, "shape"):
        return TensorSpec(name, "float32", None)
    shape = tuple(int(d) if isinstance(d, int) else str(d) for d in val.shape)
    return TensorSpec(name, str(val.dtype).removeprefix("torch."), shape)
