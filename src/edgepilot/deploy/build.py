"""Build a signed bundle from a variant folder (optimize's variants/<id>/) or a model file."""
from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from edgepilot import catalog
from edgepilot.config import load_yaml
from edgepilot.deploy import golden, signing
from edgepilot.deploy.bundle import Gates, Manifest, write_bundle
from edgepilot.engines import open_session
from edgepilot.errors import ConfigError, ModelError
from edgepilot.model import Model, detect_format

GOLDEN = "golden.npz"
_COMPANIONS = {".bin"}  # OpenVINO weights, ncnn weights: files beside the model, never the model itself


def find_model(path: Path) -> tuple[Path, str | None, dict]:
    """The model file, the variant id (a variant folder's name) and its lineage row, where optimize wrote one."""
    if not path.is_dir():
        return path, None, {"source": str(path)}
    models = []
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix not in _COMPANIONS:
            try:
                detect_format(f)
                models.append(f)
            except ModelError:
                continue
    if len(models) != 1:
        raise ConfigError(f"{path}: expected one model file in the variant folder, found {len(models)}",
                          hint="give the model file itself")
    lineage: dict = {}
    record = path.parent.parent / "lineage.json"  # out/variants/<id>/ beside out/lineage.json
    if record.is_file():
        data = json.loads(record.read_text())
        row = next((r for r in data.get("variants", []) if r.get("variant") == path.name), None)
        lineage = {"source": data.get("source"), "created": data.get("created"), "variant": row}
    return models[0], path.name, lineage


def build(model_or_variant: Path, out: Path, key: Path, *, version: int, target: str, gates: Gates,
          pipeline: Path | None = None, name: str | None = None, engine: str | None = None, task: str | None = None,
          reference: Path | None = None, golden_inputs: Path | None = None, samples: int = 8,
          expires_days: float = 90.0) -> Manifest:
    """Compute the golden outputs (from `reference`, else the model itself) and write the signed bundle."""
    from edgepilot.evaluate.tasks import resolve
    from edgepilot.targets.profiles import get_board

    get_board(target)  # an unknown target is a mistake now, not on the device
    private = signing.load_private(key)
    model_path, variant, lineage = find_model(Path(model_or_variant))
    model = Model.load(model_path)
    spec = catalog.get(variant) if variant else None
    engine = engine or (spec.engine if spec else None)
    inputs = golden.make_inputs(model, samples, golden_inputs)
    ref_model = Model.load(reference) if reference else model
    with open_session(ref_model, None if reference else engine) as session:
        outputs = golden.run_all(session, inputs)
    lineage = {**lineage, "variant_id": variant, "golden_reference": str(reference or model_path)}
    created = datetime.now(timezone.utc).replace(microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        files = {f"model/{f.name}": f for f in model.files or [model_path]}
        files[GOLDEN] = Path(tmp) / GOLDEN
        golden.save(files[GOLDEN], inputs, outputs)
        if pipeline is not None:
            files["pipeline.yaml"] = _pipeline_for(pipeline, f"model/{model_path.name}", Path(tmp))
        return write_bundle(out, dict(
            name=name or variant or model_path.stem, version=version, created=created,
            expires=created + timedelta(days=expires_days), target=target, engine=engine,
            task=resolve(model, task).task, model=f"model/{model_path.name}",
            pipeline="pipeline.yaml" if pipeline else None, golden=GOLDEN, samples=len(inputs),
            gates=gates, lineage=lineage), files, private)


def _pipeline_for(path: Path, model_member: str, tmp: Path) -> Path:
    """The pipeline config, validated, with model.path pointing at the model inside the installed slot."""
    from edgepilot.runtime.pipeline import PipelineConfig

    load_yaml(path, PipelineConfig)  # errors name the file, line and field
    data = yaml.safe_load(path.read_text())
    data["model"]["path"] = model_member  # relative paths resolve against the YAML's folder: the slot
    out = tmp / "pipeline.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out
