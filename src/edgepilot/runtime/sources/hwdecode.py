"""Hardware video decoding: which decoder a video or stream source opens with, and how OpenCV is told.

    v4l2m2m  FFmpeg's V4L2 memory-to-memory decoders (`h264_v4l2m2m`, ...) through OpenCV's FFmpeg backend
             (its `video_codec` capture option): the Raspberry Pi 0-4's bcm2835-codec, other stateful SoC codecs
    vaapi    OpenCV's FFmpeg hardware acceleration on a DRM render node (Intel/AMD edge boxes)
    nvdec    a GStreamer pipeline through `nvv4l2decoder` (Jetson), opened with cv2.CAP_GSTREAMER; needs an
             OpenCV built with GStreamer (JetPack's), which pip's opencv-python is not

`auto` tries what this machine has, in that order of preference (nvdec, v4l2m2m, vaapi), and falls back to
software; an explicit choice that this machine cannot do is a start error. Every open is a real attempt: a
candidate counts only once it has decoded a frame.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

HwDecode = Literal["auto", "off", "v4l2m2m", "vaapi", "nvdec"]

# FourCC (as OpenCV reports it) → FFmpeg codec name
_FOURCC_CODECS = {
    "avc1": "h264", "h264": "h264", "x264": "h264", "avc3": "h264",
    "hev1": "hevc", "hvc1": "hevc", "hevc": "hevc", "h265": "hevc",
    "fmp4": "mpeg4", "mp4v": "mpeg4", "xvid": "mpeg4", "divx": "mpeg4", "dx50": "mpeg4",
    "vp80": "vp8", "vp90": "vp9", "mjpg": "mjpeg", "mpg2": "mpeg2video",
}
_V4L2M2M_DECODERS = {"h264": "h264_v4l2m2m", "hevc": "hevc_v4l2m2m", "mpeg4": "mpeg4_v4l2m2m",
                     "vp8": "vp8_v4l2m2m", "vp9": "vp9_v4l2m2m", "mpeg2video": "mpeg2_v4l2m2m"}
# Stateless (request API) decoders: FFmpeg's *_v4l2m2m cannot drive them
_STATELESS = ("rpi-hevc-dec", "hantro", "cedrus", "rkvdec", "visl")
_GST_PARSERS = {"h264": ("h264parse", "rtph264depay"), "hevc": ("h265parse", "rtph265depay")}
_GST_DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".mkv": "matroskademux",
                 ".webm": "matroskademux", ".avi": "avidemux", ".ts": "tsdemux", ".mts": "tsdemux"}


def codec_of(fourcc: float | int) -> str | None:
    """The FFmpeg codec name of OpenCV's CAP_PROP_FOURCC value, or None when unknown."""
    code = int(fourcc)
    text = bytes((code >> s) & 0xFF for s in (0, 8, 16, 24)).decode("latin-1").strip("\0 ").lower()
    return _FOURCC_CODECS.get(text)


@dataclass(frozen=True)
class Decoder:
    """One way to open the input: FFmpeg (optionally a decoder by name, hardware acceleration) or GStreamer."""

    backend: str  # software, v4l2m2m, vaapi, nvdec
    detail: str = ""  # the device, the FFmpeg decoder or the GStreamer element, for the log
    ffmpeg_codec: str | None = None  # FFmpeg's `video_codec` capture option
    hw_acceleration: bool = False  # cv2.CAP_PROP_HW_ACCELERATION = VIDEO_ACCELERATION_VAAPI
    gstreamer: str | None = None  # a pipeline for cv2.CAP_GSTREAMER

    def describe(self) -> str:
        return self.backend + (f" ({self.detail})" if self.detail else "")


@dataclass
class Machine:
    """What this machine offers for decoding; the paths are parameters so tests can describe another machine."""

    sysfs: Path = Path("/sys/class/video4linux")
    dri: Path = Path("/dev/dri")
    gst_inspect: str | None = field(default_factory=lambda: shutil.which("gst-inspect-1.0"))

    def v4l2_decoders(self) -> list[str]:
        """/dev/videoN nodes of stateful memory-to-memory decoders, by the names their drivers give them."""
        found = []
        for node in sorted(self.sysfs.glob("video*")) if self.sysfs.is_dir() else []:
            try:
                name = (node / "name").read_text().strip().lower()
            except OSError:
                continue
            if "dec" in name and not any(s in name for s in _STATELESS):
                found.append(f"/dev/{node.name} ({name})")
        return found

    def render_nodes(self) -> list[str]:
        return [str(p) for p in sorted(self.dri.glob("renderD*"))] if self.dri.is_dir() else []

    def gstreamer_element(self, name: str) -> bool:
        if not self.gst_inspect:
            return False
        try:
            return subprocess.run([self.gst_inspect, "--exists", name], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def opencv_has_gstreamer() -> bool:
    import cv2

    return any(line.split(":")[0].strip() == "GStreamer" and "YES" in line
               for line in cv2.getBuildInformation().splitlines())


def gstreamer_pipeline(source: str, codec: str, *, rtsp_tcp: bool = True) -> str:
    """nvv4l2decoder between the demuxer (file) or depayloader (RTSP) and an appsink that hands BGR to OpenCV."""
    parser, depay = _GST_PARSERS[codec]
    convert = "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
    if "://" in source:
        protocols = "tcp" if rtsp_tcp else "udp"
        head = f'rtspsrc location="{source}" latency=200 protocols={protocols} ! {depay} ! {parser}'
        sink = "appsink drop=true max-buffers=1 sync=false"
    else:
        demux = _GST_DEMUXERS.get(PurePosixPath(source).suffix.lower(), "qtdemux")
        head = f'filesrc location="{source}" ! {demux} ! queue ! {parser}'
        sink = "appsink sync=false"
    return f"{head} ! nvv4l2decoder ! {convert} ! {sink}"


def candidates(request: HwDecode, source: str, codec: str | None, *, rtsp_tcp: bool = True,
               machine: Machine | None = None,
               gstreamer_in_opencv: bool | None = None) -> tuple[list[Decoder], list[str]]:
    """The decoders to try in order (software last under `auto`), and why each hardware one is not among them."""
    software = Decoder("software", "FFmpeg")
    if request == "off":
        return [software], []
    machine = machine or Machine()
    wanted = ["nvdec", "v4l2m2m", "vaapi"] if request == "auto" else [request]
    found: list[Decoder] = []
    missing: list[str] = []
    for backend in wanted:
        if backend == "nvdec":
            if codec not in _GST_PARSERS:
                missing.append(f"nvdec: not for {codec or 'this codec'} (H.264 and HEVC only)")
            elif not (opencv_has_gstreamer() if gstreamer_in_opencv is None else gstreamer_in_opencv):
                missing.append("nvdec: this OpenCV was built without GStreamer (JetPack's OpenCV has it)")
            elif not machine.gstreamer_element("nvv4l2decoder"):
                missing.append("nvdec: no GStreamer element nvv4l2decoder (not a Jetson, or DeepStream/L4T "
                               "GStreamer plugins missing)")
            else:
                found.append(Decoder("nvdec", "nvv4l2decoder",
                                     gstreamer=gstreamer_pipeline(source, codec, rtsp_tcp=rtsp_tcp)))
        elif backend == "v4l2m2m":
            devices = machine.v4l2_decoders()
            if codec not in _V4L2M2M_DECODERS:
                missing.append(f"v4l2m2m: no V4L2 decoder for {codec or 'this codec'}")
            elif not devices:
                missing.append("v4l2m2m: no V4L2 memory-to-memory decoder device")
            else:
                name = _V4L2M2M_DECODERS[codec]
                found.append(Decoder("v4l2m2m", f"{name} on {devices[0]}", ffmpeg_codec=name))
        elif backend == "vaapi":
            nodes = machine.render_nodes()
            if not nodes:
                missing.append("vaapi: no DRM render node (/dev/dri/renderD*)")
            else:
                found.append(Decoder("vaapi", nodes[0], hw_acceleration=True))
    return found + ([software] if request == "auto" else []), missing
