"""`edgepilot optimize MODEL --data DATA`: every variant, measured the same way, in one report."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress

from edgepilot.errors import ConfigError
from edgepilot.evaluate.summary import print_summary
from edgepilot.evaluate.tasks import TASKS, Task
from edgepilot.runtime.decoders import DECODERS, PostprocessConfig


class Recipe(BaseModel):
    """An optimize run written down: `edgepilot optimize --recipe recipe.yaml` (command-line options win)."""

    model_config = ConfigDict(extra="forbid")
    model: Path
    data: str
    formats: list[str] | None = None
    out: Path = Path("workspace/optimize")
    calibration_samples: int = Field(200, ge=1)
    eval_samples: int = Field(1000, ge=1)
    max_accuracy_drop: float = Field(0.01, ge=0)
    min_agreement: float | None = Field(None, ge=0, le=1)
    task: Task | None = None
    postprocess: PostprocessConfig | None = None  # how detections are decoded, as a pipeline's postprocess:
    seconds: float = Field(2.0, gt=0)
    threads: int | None = Field(None, ge=1)
    target: str | None = None
    input_shapes: dict[str, list[Annotated[int, Field(ge=1)]]] | None = None  # e.g. {images: [1, 3, 640, 640]}
    trust_model_code: bool = False  # let conversions run code from the model file (see the README)


def register(app: typer.Typer) -> None:
    @app.command()
    def optimize(
        model: Path = typer.Argument(None, help="Keras, SavedModel, TorchScript/torch.export, ONNX or TFLite model."),
        data: str = typer.Option(None, help="Dataset: .npz (x, y), .csv, an image folder, or digits / mnist."),
        recipe: Path = typer.Option(None, help="A YAML recipe with these same settings."),
        formats: str = typer.Option(None, help="Comma-separated families (default: all): "
                                    "tflite, micro, onnx, openvino, mnn, ncnn, tensorrt."),
        out: Path = typer.Option(None, help="Output folder (default workspace/optimize)."),
        calibration_samples: int = typer.Option(None, min=1, help="Representative samples for calibration (200)."),
        eval_samples: int = typer.Option(None, min=1, help="Samples for accuracy and agreement (1000)."),
        max_accuracy_drop: float = typer.Option(None, min=0, help="Task metric lost vs the reference that fails a "
                                                "variant: top-1 with labels, else 1 - agreement (0.01)."),
        min_agreement: float = typer.Option(None, min=0, max=1, help="Least agreement with the reference on the "
                                            "task metric (top-1 agreement, detection F1, mask IoU, cosine)."),
        task: str = typer.Option(None, help="classification, detection, segmentation or tensors (default: inferred "
                                 "from the outputs)."),
        postprocess: str = typer.Option(None, help="Detection decoder: yolov5, yolov8, ssd, blazeface, or a YAML "
                                        "file with a pipeline's postprocess: mapping (default: inferred)."),
        seconds: float = typer.Option(None, min=0.1, help="Latency time budget per variant (2 s)."),
        threads: int = typer.Option(None, min=1, help="Runtime threads."),
        target: str = typer.Option(None, help="Plan only what this board (or host) can run, then select for it."),
        shape: list[str] = typer.Option([], help="Input shape to convert and time at: NAME=1x3x640x640 (repeatable "
                                        "or comma-separated); default: the data's sample shape, batch 1."),
        trust_model_code: bool = typer.Option(False, "--trust-model-code", help="Let conversions that must run "
                                              "code from the model file run it (SavedModel, .pt2, Keras Lambda)."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show the converters' and runtimes' own "
                                     "output (it always goes to OUT/optimize.log)."),
    ) -> None:
        """Convert MODEL into every deployable variant, measure each, and write lineage.json and report.md/json."""
        from edgepilot.cli import output_folder, wide_console
        from edgepilot.evaluate.datasets import fit_to_input, load_dataset
        from edgepilot.logcapture import run_log
        from edgepilot.model import Model
        from edgepilot.optimize import optimize_and_report
        from edgepilot.shapes import parse_shapes

        if task is not None and task not in TASKS:
            raise ConfigError(f"--task {task!r} is not a task", hint=f"choose from {', '.join(TASKS)}")
        given = {k: v for k, v in dict(model=model, data=data, out=out, calibration_samples=calibration_samples,
                                       eval_samples=eval_samples, max_accuracy_drop=max_accuracy_drop,
                                       seconds=seconds, threads=threads, target=target, task=task,
                                       min_agreement=min_agreement, postprocess=_postprocess(postprocess),
                                       trust_model_code=trust_model_code or None,  # a recipe may say true
                                       formats=[f.strip() for f in formats.split(",")] if formats else None,
                                       input_shapes=parse_shapes(shape) or None).items()
                 if v is not None}
        if recipe is not None:
            from edgepilot.config import load_yaml

            cfg = load_yaml(recipe, Recipe).model_copy(update=given)
        else:
            if model is None or data is None:
                raise ConfigError("give MODEL and --data, or --recipe FILE")
            cfg = Recipe(**given)
        out, target = output_folder(cfg.out), cfg.target
        source = Model.load(cfg.model, trust_model_code=cfg.trust_model_code)
        ds = load_dataset(cfg.data)
        fit_to_input(ds.subset(1), source.inputs[0])  # data that does not fit the model stops here, clearly
        families = cfg.formats
        if target:
            families = _families_for(target, families)
        console = wide_console()
        # third-party output goes to the log; the progress bar to the terminal the log leaves us
        with run_log(out / "optimize.log", verbose) as terminal, \
                Progress(console=wide_console(file=terminal), transient=True) as progress:
            report, records = optimize_and_report(
                source, ds, out, families, calibration_samples=cfg.calibration_samples,
                eval_samples=cfg.eval_samples, seconds=cfg.seconds, threads=cfg.threads,
                max_accuracy_drop=cfg.max_accuracy_drop, min_agreement=cfg.min_agreement, task=cfg.task,
                postprocess=cfg.postprocess, progress=progress, shapes=cfg.input_shapes,
                trust_model_code=cfg.trust_model_code)
        print_summary(console, report, records, out)
        if target:
            from edgepilot.cli.targets import print_selection
            from edgepilot.targets.select import Gates, select

            gates = Gates(max_accuracy_drop=cfg.max_accuracy_drop, min_agreement=cfg.min_agreement)
            print_selection(console, select(report, target, gates))


def _postprocess(value: str | None) -> PostprocessConfig | None:
    """A decoder name, or a YAML file holding a postprocess: mapping."""
    if value is None:
        return None
    if value in DECODERS:
        return PostprocessConfig(type=value)
    from edgepilot.config import load_yaml

    if not Path(value).is_file():
        raise ConfigError(f"--postprocess {value!r} is neither a decoder nor a file",
                          hint="give yolov5, yolov8, ssd, blazeface, or a YAML file with the postprocess mapping")
    return load_yaml(value, PostprocessConfig)


def _families_for(target: str, requested: list[str] | None) -> list[str]:
    from edgepilot.catalog import families_for
    from edgepilot.engines import all_engines
    from edgepilot.targets.profiles import get_board

    runtimes = list(all_engines()) if target == "host" else get_board(target).runtimes
    families = families_for(runtimes)
    return [f for f in families if requested is None or f in requested]
