"""Load hardware profiles (built-in profiles.yaml plus the user's own files) and detect the host's."""
from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgepilot.errors import ConfigError
from edgepilot.host import HostInfo, host_info

BUILTIN = Path(__file__).with_name("profiles.yaml")
USER_ENV = "EDGEPILOT_PROFILES"  # colon-separated extra profile files


class HardwareClass(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    examples: list[str]
    compute: str
    memory: str
    power: str
    typical_use: str
    runtimes: list[str]


class Board(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # `class` is a Python keyword; the YAML field keeps the natural name
    klass: str = ""
    arch: str
    cpu: str
    cores: int
    ram_bytes: int
    flash_bytes: int | None = None  # MCUs: where the model and the runtime live
    power_w: float
    accelerators: list[str] = []
    tops: float | None = None
    runtimes: list[str]
    formats_note: str | None = None
    precision: str
    est_gflops: float
    int8_speedup: float = 1.0
    fp16_speedup: float = 1.0


class Profiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: dict[str, HardwareClass]
    boards: dict[str, Board]


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read profiles ({e})") from e
    for board in (data.get("boards") or {}).values():
        if isinstance(board, dict) and "class" in board:
            board["klass"] = board.pop("class")
    return data


@cache
def load_profiles(extra: tuple[str, ...] = ()) -> Profiles:
    """Built-in profiles, then each user file (later files add or replace boards and classes)."""
    files = [BUILTIN, *(Path(p) for p in os.environ.get(USER_ENV, "").split(":") if p), *map(Path, extra)]
    merged: dict = {"classes": {}, "boards": {}}
    for f in files:
        data = _read(f)
        for key in ("classes", "boards"):
            merged[key].update(data.get(key) or {})
        try:
            profiles = Profiles.model_validate(merged)
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"{f}: invalid profile at {'.'.join(map(str, err['loc']))}: {err['msg']}") from e
    for name, b in profiles.boards.items():
        if b.klass not in profiles.classes:
            raise ConfigError(f"board {name!r} names an unknown class {b.klass!r}",
                              hint=f"classes: {', '.join(profiles.classes)}")
    return profiles


def get_board(name: str, profiles: Profiles | None = None) -> Board:
    profiles = profiles or load_profiles()
    if name in profiles.boards:
        return profiles.boards[name]
    raise ConfigError(f"unknown target {name!r}", hint=f"see `edgepilot targets`; known: {', '.join(profiles.boards)}")


class HostMatch(BaseModel):
    board: str | None  # a named profile this host is, when detected
    klass: str
    how: str  # what the detection read


def detect_host(info: HostInfo | None = None, root: Path = Path("/")) -> HostMatch:
    """The class and board of this machine from the device tree, Jetson release file, CPU flags and GPUs."""
    info = info or host_info()
    model = _read_text(root / "proc/device-tree/model").lower()
    if (root / "etc/nv_tegra_release").exists() or "jetson" in model:
        for key, board in (("orin nano", "jetson-orin-nano"), ("agx orin", "jetson-agx-orin"), ("nano", "jetson-nano")):
            if key in model:
                return HostMatch(board=board, klass=load_profiles().boards[board].klass, how=f"device tree: {model}")
        return HostMatch(board=None, klass="edge-gpu", how=f"Jetson ({model or '/etc/nv_tegra_release'})")
    if "raspberry pi 5" in model:
        return HostMatch(board="rpi5", klass="embedded-cpu", how=f"device tree: {model}")
    if "raspberry pi 4" in model:
        return HostMatch(board="rpi4", klass="embedded-cpu", how=f"device tree: {model}")
    if "coral" in model or "phanbell" in model:
        return HostMatch(board="coral-dev-board", klass="edge-gpu", how=f"device tree: {model}")
    if "rk3588" in model:
        return HostMatch(board="rk3588", klass="edge-gpu", how=f"device tree: {model}")
    gpus = [a for a in info.accelerators if a.kind == "nvidia-gpu"]
    flags = ", ".join(info.instruction_sets) or "no SIMD flags read"
    if gpus:
        big = info.ram_bytes >= 32 * 2**30
        return HostMatch(board="nvidia-edge-server" if big else None, klass="edge-server" if big else "edge-gpu",
                         how=f"{len(gpus)} NVIDIA GPU(s) via NVML ({gpus[0].name}); "
                             f"{info.ram_bytes / 2**30:.0f} GiB RAM")
    if (info.arch or platform.machine()) in ("x86_64", "AMD64"):
        return HostMatch(board=None, klass="embedded-cpu" if info.ram_bytes <= 32 * 2**30 else "edge-server",
                         how=f"x86-64 CPU without a GPU ({flags}); closest profile: x86-edge-box")
    return HostMatch(board=None, klass="embedded-cpu", how=f"{info.arch} CPU ({flags})")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().rstrip(b"\x00").decode("utf-8", "replace").strip()
    except OSError:
        return ""
