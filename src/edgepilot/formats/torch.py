"""Read a TorchScript archive or a torch.export (.pt2) program without running code from the file.

A .pt2 archive is read member by member: its JSON describes the graph, and every pickle in it must
pass PyTorch's restricted (weights_only) unpickler. torch.export.load is never used to read one: it
retries a refused pickle with weights_only=False, unpickles opaque constants with plain pickle,
hands the graph's shape expressions to sympy's eval and exec's the archive's guard code.
A TorchScript archive is loaded by PyTorch's C++ loader only after every pickle global in it has
been checked against the few that TorchScript writes.
"""
from __future__ import annotations

import io
import json
import math
import pickletools
import re
import zipfile
from pathlib import Path

from edgepilot.errors import ModelError, first_line
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require

# torch._export.serde.schema.ScalarType → numpy dtype names (bfloat16 keeps torch's name)
_SCALAR_TYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
                 8: "float64", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
                 34: "uint32", 35: "uint64"}


def describe(path: Path, fmt: Format) -> Model:
    if fmt == Format.TORCH_EXPORT:
        return _describe_exported(path)
    m = load_torchscript(path)
    args = [a for a in m.forward.schema.arguments if a.name != "self"]
    # TorchScript records no shapes: the rank is unknown until the user names one.
    inputs = [TensorSpec(a.name, "float32", None) for a in args]
    return Model(path=path, format=Format.TORCHSCRIPT, inputs=inputs,
                 outputs=[TensorSpec("output", "float32", None)],
                 params=int(sum(p.numel() for p in m.parameters())), files=[path])


def load_torchscript(path: Path):
    """A TorchScript module, loaded by PyTorch once its pickles name only what TorchScript writes."""
    torch = require("torch", "torch")
    with _open_zip(path) as z:
        for name in z.namelist():
            if name.endswith((".pkl", ".debug_pkl")):
                _check_torchscript_pickle(path, name, z.read(name))
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelError(f"{path}: PyTorch cannot load it ({first_line(e)})") from e


def load_exported_program(path: Path):
    """The torch.export program itself, for conversion. This runs code from the file: callers opt in."""
    torch = require("torch", "torch")
    _describe_exported(path)  # refuse what the restricted reader refuses, even when the file is trusted
    try:
        return torch.export.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: PyTorch cannot load this torch.export program ({first_line(e)})") from e


# Globals a TorchScript pickle may name: TorchScript classes, tensor rebuilders, storages and qschemes.
_TORCH_NAMES = re.compile(r"[A-Za-z0-9]*Storage|per_(tensor|channel)_(affine|symmetric)"
                          r"|per_channel_affine_float_qparams")


def _check_torchscript_pickle(path: Path, member: str, data: bytes) -> None:
    for module, name in _pickle_globals(path, member, data):
        allowed = (module.split(".")[0] == "__torch__" or module == "torch.jit._pickle"
                   or (module == "torch._utils" and name.startswith("_rebuild_"))
                   or (module, name) == ("collections", "OrderedDict")
                   or (module == "torch" and _TORCH_NAMES.fullmatch(name)))
        if not allowed:
            raise ModelError(f"{path}: {member} names the Python global {module}.{name}, which TorchScript "
                             "never writes; edgepilot does not load it",
                             hint="the file may have been tampered with: re-export it with torch.jit.save")


def _pickle_globals(path: Path, member: str, data: bytes) -> list[tuple[str, str]]:
    """Every (module, name) a pickle imports, read from its opcodes without unpickling it."""
    found, recent = [], [None, None]  # the arguments of the last two opcodes
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                found.append((module, name))
            elif op.name == "STACK_GLOBAL":  # names pushed by anything but the two opcodes before it are refused
                found.append(tuple(a if isinstance(a, str) else "?" for a in recent))
            if op.name != "MEMOIZE":  # it leaves the stack as it is
                recent = [recent[1], arg]
    except Exception as e:
        raise ModelError(f"{path}: {member} is not a valid pickle ({first_line(e)})") from e
    return found


def _describe_exported(path: Path) -> Model:
    with _open_zip(path) as z:
        members = {n.split("/", 1)[1]: n for n in z.namelist() if "/" in n}  # names below the archive's root
        if any(n.startswith("data/aotinductor/") for n in members):
            raise ModelError(f"{path}: the archive holds AOTInductor compiled code (a shared library); "
                             "edgepilot never loads native code from a model file",
                             hint="save the program without AOTInductor: torch.export.save(ep, path)")
        if "models/model.json" not in members:
            old = "serialized_exported_program.json" in members
            raise ModelError(f"{path}: no exported program (models/model.json) in the archive",
                             hint="re-save it with torch.export.save from PyTorch 2.8 or newer" if old else None)
        program = _read_json(path, z, members, "models/model.json")
        weights = _read_json(path, z, members, "data/weights/model_weights_config.json")
        constants = _read_json(path, z, members, "data/constants/model_constants_config.json")
        raw = _raw_payloads(path, weights, constants)
        params = 0
        for name, member in members.items():
            if name.startswith("data/") and not name.endswith(".json") and name not in raw:
                obj = _restricted_load(path, name, z.read(member))
                if name.startswith("data/weights/") and isinstance(obj, dict):  # a legacy state dict
                    params += sum(int(t.numel()) for t in obj.values() if hasattr(t, "numel"))
    try:
        graph = program["graph_module"]["graph"]
        signature = program["graph_module"]["signature"]
        inputs = [_spec(path, graph["tensor_values"], s["user_input"]["arg"]["as_tensor"]["name"])
                  for s in signature["input_specs"] if "as_tensor" in s.get("user_input", {}).get("arg", {})]
        outputs = [_spec(path, graph["tensor_values"], s["user_output"]["arg"]["as_tensor"]["name"])
                   for s in signature["output_specs"] if "as_tensor" in s.get("user_output", {}).get("arg", {})]
        params += sum(_numel(e["tensor_meta"]["sizes"]) for e in weights.get("config", {}).values()
                      if e.get("tensor_meta"))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ModelError(f"{path}: models/model.json is not a torch.export program ({type(e).__name__}: {e})") from e
    return Model(path=path, format=Format.TORCH_EXPORT, inputs=inputs, outputs=outputs, params=params, files=[path])


def _raw_payloads(path: Path, weights: dict, constants: dict) -> set[str]:
    """The data/ members that are raw tensor bytes (use_pickle false in their config), not pickles."""
    try:
        return {f"data/{folder}/{e['path_name']}" for folder, cfg in (("weights", weights), ("constants", constants))
                for e in cfg.get("config", {}).values() if not e.get("use_pickle")}
    except (KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{path}: a payload config in the archive is malformed ({type(e).__name__}: {e})") from e


def _restricted_load(path: Path, name: str, data: bytes):
    """Unpickle with PyTorch's weights_only unpickler only: a pickle it refuses is refused here."""
    if not data:
        return None
    torch = require("torch", "torch")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "WeightsUnpickler" in ln),
                   first_line(e)).split(" Please")[0]  # torch goes on to say how to allow the global
        raise ModelError(f"{path}: {name} is a pickle that PyTorch's restricted loader refuses ({why}); "
                         "edgepilot never unpickles arbitrary objects",
                         hint="the file may run code when loaded: re-export it with torch.export.save from "
                              "plain tensors") from None


def _read_json(path: Path, z: zipfile.ZipFile, members: dict[str, str], name: str) -> dict:
    if name not in members:
        return {}
    try:
        data = json.loads(z.read(members[name]))
    except (ValueError, RecursionError) as e:
        raise ModelError(f"{path}: {name} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {name} is not a JSON object")
    return data


def _spec(path: Path, values: dict, name: str) -> TensorSpec:
    meta = values[name]
    dtype = _SCALAR_TYPES.get(meta["dtype"])
    if dtype is None:
        raise ModelError(f"{path}: tensor {name!r} has an unknown dtype code {str(meta['dtype'])[:20]!r}")
    return TensorSpec(name, dtype, tuple(_dim(d) for d in meta["sizes"]))


def _numel(sizes: list) -> int:
    dims = [_dim(d) for d in sizes]
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else 0


def _dim(size: dict) -> int | str:
    """A fixed size, or the name of a symbolic one; the expression is read as text, never evaluated."""
    if "as_int" in size:
        return int(size["as_int"])
    expr = str(size["as_expr"]["expr_str"])
    symbol = re.fullmatch(r"Symbol\('(\w{1,40})'.*\)", expr)
    return symbol.group(1) if symbol else expr[:40]


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{path}: not a readable PyTorch archive ({e})") from e
