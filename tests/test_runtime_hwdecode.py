"""Hardware decoding: what a source chooses on which machine, the real FFmpeg attempts, and the fallback."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgepilot.errors import UnavailableError  # noqa: E402
from edgepilot.runtime.sources import hwdecode  # noqa: E402
from edgepilot.runtime.sources.capture import VideoSource, VideoSourceConfig, _open_capture  # noqa: E402
from edgepilot.runtime.sources.hwdecode import Decoder, Machine, candidates, codec_of  # noqa: E402


def _video(path, fourcc: str, n: int = 8):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
    for i in range(n):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, : 8 * (i + 1)] = (30 * i, 255 - 30 * i, 100)
        writer.write(frame)
    writer.release()
    return path


def _frames(source) -> list[np.ndarray]:
    return [item.frame.copy() for item in source]


def _pi4(tmp_path, *, render_node: bool = False) -> Machine:
    """A Raspberry Pi 4's video4linux nodes (names as bcm2835-codec and the HEVC block register them)."""
    sysfs = tmp_path / "video4linux"
    for node, name in (("video10", "bcm2835-codec-decode"), ("video11", "bcm2835-codec-encode"),
                       ("video12", "bcm2835-codec-isp"), ("video19", "rpi-hevc-dec"), ("video0", "unicam-image")):
        (sysfs / node).mkdir(parents=True)
        (sysfs / node / "name").write_text(name + "\n")
    dri = tmp_path / "dri"
    dri.mkdir()
    if render_node:
        (dri / "renderD128").touch()
    return Machine(sysfs=sysfs, dri=dri, gst_inspect=None)


def test_codec_from_opencv_fourcc(tmp_path):
    for fourcc, codec in (("MJPG", "mjpeg"), ("mp4v", "mpeg4")):
        cap = cv2.VideoCapture(str(_video(tmp_path / f"v-{fourcc}.{'avi' if fourcc == 'MJPG' else 'mp4'}", fourcc)))
        assert codec_of(cap.get(cv2.CAP_PROP_FOURCC)) == codec
        cap.release()
    assert codec_of(0) is None


def test_candidates_on_a_raspberry_pi_4(tmp_path):
    pi = _pi4(tmp_path)
    found, missing = candidates("auto", "/v/cam.mp4", "h264", machine=pi, gstreamer_in_opencv=False)
    assert [d.backend for d in found] == ["v4l2m2m", "software"]
    assert found[0].ffmpeg_codec == "h264_v4l2m2m" and "/dev/video10" in found[0].detail  # not the encoder, ISP
    assert any(m.startswith("nvdec: this OpenCV was built without GStreamer") for m in missing)
    assert any(m.startswith("vaapi: no DRM render node") for m in missing)
    # MJPEG has no V4L2 decoder here; the stateless HEVC block is not one FFmpeg's v4l2m2m can drive
    assert [d.backend for d in candidates("auto", "/v/a.avi", "mjpeg", machine=pi)[0]] == ["software"]
    only_stateless = _pi4(tmp_path / "pi5")
    for node in ("video10", "video11", "video12"):
        (only_stateless.sysfs / node / "name").write_text("unused\n")
    found, missing = candidates("v4l2m2m", "/v/cam.mp4", "hevc", machine=only_stateless)
    assert found == [] and missing == ["v4l2m2m: no V4L2 memory-to-memory decoder device"]
    assert candidates("off", "/v/cam.mp4", "h264", machine=pi) == ([Decoder("software", "FFmpeg")], [])


def test_vaapi_and_nvdec_candidates(tmp_path):
    found, _ = candidates("auto", "/v/cam.mp4", "mjpeg", machine=_pi4(tmp_path, render_node=True))
    assert [d.backend for d in found] == ["vaapi", "software"] and found[0].hw_acceleration
    jetson = Machine(sysfs=tmp_path / "none", dri=tmp_path / "none", gst_inspect="/bin/true")  # the element exists
    found, _ = candidates("nvdec", "/data/cam.mkv", "hevc", machine=jetson, gstreamer_in_opencv=True)
    assert found[0].gstreamer == ('filesrc location="/data/cam.mkv" ! matroskademux ! queue ! h265parse ! '
                                  "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
                                  "video/x-raw,format=BGR ! appsink sync=false")
    found, _ = candidates("auto", "rtsp://cam/stream", "h264", rtsp_tcp=False, machine=jetson,
                          gstreamer_in_opencv=True)
    assert found[0].backend == "nvdec" and found[0].gstreamer.startswith(
        'rtspsrc location="rtsp://cam/stream" latency=200 protocols=udp ! rtph264depay ! h264parse ! nvv4l2decoder')
    assert "drop=true" in found[0].gstreamer
    no_element = Machine(sysfs=tmp_path / "none", dri=tmp_path / "none", gst_inspect="/bin/false")
    found, missing = candidates("nvdec", "/data/cam.mp4", "h264", machine=no_element, gstreamer_in_opencv=True)
    assert found == [] and "no GStreamer element nvv4l2decoder" in missing[0]
    assert "H.264 and HEVC only" in candidates("nvdec", "/a.avi", "mjpeg", machine=jetson)[1][0]


def test_ffmpeg_decoder_by_name_is_real(tmp_path):
    path = str(_video(tmp_path / "v.mp4", "mp4v"))
    by_name = _open_capture(path, Decoder("software", ffmpeg_codec="mpeg4"))
    default = _open_capture(path, Decoder("software"))
    assert by_name is not None and default is not None
    for _ in range(8):
        (ok1, a), (ok2, b) = by_name.read(), default.read()
        assert ok1 and ok2 and np.array_equal(a, b)
    assert _open_capture(path, Decoder("software", ffmpeg_codec="no-such-decoder")) is None


@pytest.mark.skipif(bool(Machine().v4l2_decoders() or Machine().render_nodes()), reason="this machine decodes in HW")
def test_a_source_without_hardware_here(tmp_path, monkeypatch):
    path = _video(tmp_path / "v.mp4", "mp4v")
    auto = VideoSource(VideoSourceConfig(path=str(path)))  # hw_decode: auto by default
    assert auto.decoder.backend == "software" and auto.stats()["decoder"] == "software (FFmpeg)"
    off = VideoSource(VideoSourceConfig(path=str(path), hw_decode="off"))
    assert all(np.array_equal(a, b) for a, b in zip(_frames(auto), _frames(off), strict=True))
    with pytest.raises(UnavailableError, match="hw_decode v4l2m2m is not available here: v4l2m2m: no V4L2"):
        VideoSource(VideoSourceConfig(path=str(path), hw_decode="v4l2m2m"))
    # A machine that claims a V4L2 decoder FFmpeg then cannot open: auto tries it for real, then software
    pi = _pi4(tmp_path)
    monkeypatch.setattr(hwdecode, "Machine", lambda: pi)
    fallback = VideoSource(VideoSourceConfig(path=str(path)))
    assert fallback.decoder.backend == "software"
    assert all(np.array_equal(a, b) for a, b in zip(_frames(fallback), _frames(off), strict=True))
    with pytest.raises(UnavailableError, match=r"hw_decode v4l2m2m: v4l2m2m \(mpeg4_v4l2m2m on /dev/video10"):
        VideoSource(VideoSourceConfig(path=str(path), hw_decode="v4l2m2m"))
