"""Facts about the machine edgepilot runs on: CPU, memory, OS, instruction sets, accelerators."""
from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import psutil
from pydantic import BaseModel

# CPU flags that decide which kernels a runtime can use (x86 from /proc/cpuinfo, Arm from its Features).
_INTERESTING = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                "avx512_bf16", "amx_tile", "amx_int8", "neon", "asimd", "asimddp", "fphp", "asimdhp", "i8mm",
                "sve", "sve2", "bf16")


class Accelerator(BaseModel):
    kind: str  # "nvidia-gpu", "jetson", "coral-tpu", "intel-gpu", ...
    name: str
    detail: str = ""


class HostInfo(BaseModel):
    hostname: str
    os: str
    arch: str
    python: str
    cpu_model: str
    physical_cores: int | None
    logical_cores: int
    ram_bytes: int
    instruction_sets: list[str]
    accelerators: list[Accelerator]


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info.setdefault(k.strip().lower(), v.strip())
    return info


def cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("features") or "").split())


# Capabilities a catalogue variant may need, by the CPU flags (x86 /proc/cpuinfo "flags", Arm "Features") that
# give them.
_CAPABILITIES = {"bf16": {"avx512_bf16", "amx_bf16", "bf16"}}


def has_capability(name: str, flags: set[str] | None = None) -> bool:
    """Whether this CPU has `name` (a key of _CAPABILITIES) in hardware."""
    return bool(_CAPABILITIES[name] & (cpu_flags() if flags is None else flags))


def _accelerators() -> list[Accelerator]:
    found: list[Accelerator] = []
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():
        found.append(Accelerator(kind="jetson", name="NVIDIA Jetson", detail=tegra.read_text().splitlines()[0][:120]))
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
                name = pynvml.nvmlDeviceGetName(h)
                found.append(Accelerator(kind="nvidia-gpu", name=name if isinstance(name, str) else name.decode(),
                                         detail=f"{mem / 2**30:.1f} GiB"))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library or no driver: NVML is absent, fall back to device nodes
        if Path("/dev/nvidia0").exists():
            found.append(Accelerator(kind="nvidia-gpu", name="NVIDIA GPU", detail="/dev/nvidia0 (NVML unavailable)"))
    if Path("/dev/apex_0").exists():
        found.append(Accelerator(kind="coral-tpu", name="Coral Edge TPU (PCIe)", detail="/dev/apex_0"))
    for dri in sorted(Path("/sys/class/drm").glob("renderD*")) if Path("/sys/class/drm").exists() else []:
        vendor = (dri / "device" / "vendor")
        if vendor.exists() and vendor.read_text().strip() == "0x8086":
            found.append(Accelerator(kind="intel-gpu", name="Intel GPU", detail=f"/dev/dri/{dri.name}"))
    if Path("/dev/accel/accel0").exists():
        found.append(Accelerator(kind="npu", name="NPU", detail="/dev/accel/accel0"))
    return found


@cache
def host_info() -> HostInfo:
    info = _cpuinfo()
    flags = cpu_flags()
    return HostInfo(
        hostname=platform.node(),
        os=f"{platform.system()} {platform.release()}" + (f" ({_os_release()})" if _os_release() else ""),
        arch=platform.machine(),
        python=platform.python_version(),
        cpu_model=info.get("model name") or info.get("hardware") or platform.processor() or "unknown",
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=os.cpu_count() or 1,
        ram_bytes=psutil.virtual_memory().total,
        instruction_sets=[f for f in _INTERESTING if f in flags],
        accelerators=_accelerators(),
    )


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return ""
