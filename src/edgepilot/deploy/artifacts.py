"""Install artifacts per platform: install script, systemd units (sd_notify watchdog), Dockerfile, k3s DaemonSet."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgepilot.errors import ConfigError

TEMPLATES = Path(__file__).with_name("templates")
_FIELD = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class Platform:
    extras: str  # what the device installs: never tf or torch
    klass: str  # the hardware class in targets/profiles.yaml: the DaemonSet's node selector
    arch: str  # kubernetes.io/arch
    venv_flags: str = ""
    extra_groups: str = ""  # camera and GPU device groups for the service user
    device_access: str = ""
    memory_limit: str = "1Gi"


_VIDEO_GROUP = 'usermod -a -G video "$SERVICE_USER"'
PLATFORMS = {
    "raspberry-pi": Platform("onnx,tflite,vision,serve,deploy", "embedded-cpu", "arm64",
                             extra_groups=_VIDEO_GROUP, device_access="SupplementaryGroups=video",
                             memory_limit="768Mi"),
    # JetPack's TensorRT and CUDA come from the system's Python packages, not from pip
    "jetson": Platform("onnx,vision,serve,deploy,gpu", "edge-gpu", "arm64", venv_flags="--system-site-packages",
                       extra_groups=_VIDEO_GROUP, device_access="SupplementaryGroups=video"),
    "generic": Platform("onnx,tflite,serve,deploy", "embedded-cpu", "amd64"),
}
FILES = ("install.sh", "edgepilot-runtime.service", "edgepilot-agent.service", "edgepilot-update.path",
         "edgepilot-update.service", "Dockerfile", "daemonset.yaml")
DOCKER_EXTRAS = "onnx,tflite,serve,deploy"


def render(text: str, values: dict[str, str]) -> str:
    def field(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template field {m.group(1)!r} has no value")
        return values[m.group(1)]

    return _FIELD.sub(field, text)


def write_artifacts(platform: str, out: Path, *, prefix: str = "/opt/edgepilot", state: str = "/var/lib/edgepilot",
                    conf: str = "/etc/edgepilot", user: str = "edgepilot",
                    image: str = "edgepilot-runtime:latest") -> list[Path]:
    """Write every artifact for `platform` into `out`; returns the files written."""
    if platform not in PLATFORMS:
        raise ConfigError(f"unknown platform {platform!r}", hint=f"choose from {', '.join(PLATFORMS)}")
    p = PLATFORMS[platform]
    values = {"platform": platform, "extras": p.extras, "klass": p.klass, "arch": p.arch, "venv_flags": p.venv_flags,
              "extra_groups": p.extra_groups, "device_access": p.device_access, "memory_limit": p.memory_limit,
              "prefix": prefix, "state": state, "conf": conf, "user": user, "image": image,
              "docker_extras": DOCKER_EXTRAS}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        dest = out / name
        dest.write_text(render((TEMPLATES / name).read_text(), values))
        if name.endswith(".sh"):
            dest.chmod(0o755)
        written.append(dest)
    return written
