"""Remote configuration: a new pipeline config for the model devices already run, as a signed bundle of its own.

The base bundle is verified, its model and golden samples are kept byte for byte, the pipeline is replaced and the
version raised; the result travels the same TUF path, trial and canary/rollback as any update."""
from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edgepilot.deploy import signing
from edgepilot.deploy.build import _pipeline_for
from edgepilot.deploy.bundle import Manifest, extract, write_bundle
from edgepilot.errors import ConfigError


def reconfigure(base: Path, pipeline: Path, key: Path, version: int, out: Path,
                expires_days: float = 90.0) -> Manifest:
    """`base` with `pipeline` in place of its pipeline config, as version `version`, signed with `key` (which
    must be the key that signed `base`)."""
    private = signing.load_private(key)
    with tempfile.TemporaryDirectory() as tmp:
        verified = extract(base, Path(tmp) / "base", [private.public_key()])
        m = verified.manifest
        if version <= m.version:
            raise ConfigError(f"--version {version} is not above the base bundle's v{m.version}",
                              hint="devices refuse anything not newer than what they run")
        files = {name: verified.path(name) for name in m.files if name != m.pipeline}
        files["pipeline.yaml"] = _pipeline_for(pipeline, m.model, Path(tmp))
        created = datetime.now(timezone.utc).replace(microsecond=0)
        fields = m.model_dump(exclude={"format", "key_id", "files"})
        fields.update(version=version, created=created, expires=created + timedelta(days=expires_days),
                      pipeline="pipeline.yaml",
                      lineage={**m.lineage, "configuration_of": f"{m.name} v{m.version}", "pipeline": str(pipeline)})
        return write_bundle(out, fields, files, private)
