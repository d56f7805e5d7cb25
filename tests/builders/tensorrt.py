"""TensorRT engine plan (fp32, TF32 off) built from the ONNX builder's model; needs TensorRT and a GPU."""
from pathlib import Path

from builders import BATCH, Built, sample, torch_reference
from builders.onnx import export_onnx

MAX_BATCH = 8


def build_plan(onnx_path: Path, plan_path: Path, input_shape: tuple[int, ...]) -> Path:
    """Parse the ONNX model and serialise a plan with one profile for batch 1..MAX_BATCH."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 256 << 20)
    config.clear_flag(trt.BuilderFlag.TF32)  # plain fp32, so the reference tolerance stays tight
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, *input_shape), (BATCH, *input_shape), (MAX_BATCH, *input_shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a plan from {onnx_path}")
    plan_path.write_bytes(plan)
    return plan_path


def build(kind: str, workdir: Path) -> Built:
    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    x = sample(kind)
    path = build_plan(onnx_path, workdir / f"{kind}.engine", x.shape[1:])
    return Built(path, [x], [torch_reference(kind, x)], atol=1e-3, rtol=1e-3, files=[path])
