"""Sources on real inputs: videos written with OpenCV, PNG folders, a loopback MJPEG server, Mosquitto, a pty."""
from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edgepilot.assets import asset
from edgepilot.errors import InputError, UnavailableError
from edgepilot.runtime.mqtt import MqttConfig
from edgepilot.runtime.sources import (
    CameraSourceConfig,
    FolderSourceConfig,
    MqttSourceConfig,
    SensorSourceConfig,
    StreamSourceConfig,
    VideoSourceConfig,
    open_source,
    parse_payload,
)

W, H = 160, 120


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick"):
        img = cv2.imread(str(asset(f"photo-{name}", download=False)), cv2.IMREAD_COLOR)
        out.append(cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA))
    return out


def make_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    """MJPG in AVI by default: this OpenCV build writes it (and mp4v) through FFmpeg, but not H.264."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def close_to(a: np.ndarray, b: np.ndarray, tol: float = 12.0) -> bool:
    """JPEG round trips are lossy: equal within a few gray levels on average."""
    return a.shape == b.shape and float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) < tol


def which_photo(frame: np.ndarray, photos: list[np.ndarray]) -> int:
    return int(np.argmin([np.abs(frame.astype(np.int16) - p.astype(np.int16)).mean() for p in photos]))


class Drain:
    """Iterates a source on a thread, keeping every item, as the pipeline's reader would."""

    def __init__(self, source) -> None:
        self.source, self.items, self.error = source, [], None
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.source:
                with self._cond:
                    self.items.append(item)
                    self._cond.notify_all()
        except Exception as e:  # kept for the test to assert on
            self.error = e

    def wait(self, n: int, timeout: float = 15.0) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.items) < n and time.monotonic() < deadline:
                self._cond.wait(0.05)
            assert len(self.items) >= n, f"got {len(self.items)} items, wanted {n}; stats {self.source.stats()}"
            return list(self.items)

    def stop(self, within: float = 1.5) -> None:
        self.source.stop()
        self.thread.join(within)
        assert not self.thread.is_alive(), "stop() did not end the iteration"


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# ---------------------------------------------------------------- video files

def test_video_yields_every_frame_in_order(tmp_path, photos):
    video = make_video(tmp_path / "clip.avi", photos)
    src = open_source(VideoSourceConfig(path=str(video)))
    items = list(src)
    assert src.id == "video:clip" and src.live is False
    assert [i.seq for i in items] == list(range(len(photos)))
    assert [i.meta["frame_index"] for i in items] == list(range(len(photos)))
    for item, photo in zip(items, photos):
        assert item.frame.dtype == np.uint8 and item.frame.shape == (H, W, 3)
        assert close_to(item.frame, photo) and item.source == "video:clip" and not item.live
    assert items[0].ts <= items[-1].ts and abs(items[0].ts - time.time()) < 60
    assert src.stats()["items"] == len(photos)


def test_video_start_and_stride(tmp_path, photos):
    video = make_video(tmp_path / "clip.avi", photos)
    items = list(open_source({"type": "video", "path": str(video), "start": 1, "stride": 2, "id": "cam-a"}))
    assert [i.meta["frame_index"] for i in items] == [1, 3, 5]
    assert [i.seq for i in items] == [0, 1, 2] and items[0].source == "cam-a"
    assert [which_photo(i.frame, photos) for i in items] == [1, 3, 5]


def test_video_decodes_into_the_buffer_it_is_given(tmp_path, photos):
    """The decoder process hands a shared-memory slot per frame; a buffer that does not fit gets a new array."""
    video = make_video(tmp_path / "clip.avi", photos[:3])
    expected = [i.frame for i in open_source(VideoSourceConfig(path=str(video)))]
    buffers = [np.zeros((H, W, 3), np.uint8), np.zeros((H, W, 3), np.uint8), np.zeros((H // 2, W, 3), np.uint8)]
    given = iter(buffers)
    src = open_source(VideoSourceConfig(path=str(video)))
    src.frame_buffer = lambda: next(given, None)
    items = list(src)
    assert [i.frame is b for i, b in zip(items, buffers)] == [True, True, False]
    assert all(np.array_equal(i.frame, e) for i, e in zip(items, expected))


def test_decode_threads_reach_ffmpeg(tmp_path, photos):
    from edgepilot.runtime.sources.capture import _open_capture
    from edgepilot.runtime.sources.hwdecode import Decoder

    # mp4v: FFmpeg decodes it on frame threads (its MJPEG decoder has none)
    video = make_video(tmp_path / "clip.mp4", photos[:2], fourcc="mp4v")
    for threads in (1, 3):
        cap = _open_capture(str(video), Decoder("software", "FFmpeg"), threads=threads)
        assert cap.get(cv2.CAP_PROP_N_THREADS) == threads
        cap.release()
    assert VideoSourceConfig(path=str(video)).decode_threads == "auto"
    with pytest.raises(ValidationError):
        VideoSourceConfig(path=str(video), decode_threads=-1)


def test_video_loop_runs_until_stop(tmp_path, photos):
    video = make_video(tmp_path / "clip.avi", photos[:3])
    drain = Drain(open_source(VideoSourceConfig(path=str(video), loop=True)))
    items = drain.wait(8)
    drain.stop()
    assert [i.seq for i in items[:8]] == list(range(8))
    assert [i.meta["frame_index"] for i in items[:8]] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_video_realtime_is_paced_and_live(tmp_path, photos):
    video = make_video(tmp_path / "clip.avi", photos, fps=20)
    src = open_source(VideoSourceConfig(path=str(video), realtime=True))
    items = list(src)
    assert src.live and all(i.live for i in items)
    # six frames at 20 fps span 5/20 s: the source waited for them, as a camera would deliver them
    assert items[-1].ts - items[0].ts >= 0.2


def test_unreadable_or_missing_video_is_a_clear_error(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(InputError) as e:
        open_source(VideoSourceConfig(path=str(fake)))
    assert "notes.mp4" in str(e.value) and e.value.hint
    with pytest.raises(InputError, match="not found"):
        open_source(VideoSourceConfig(path=str(tmp_path / "missing.mp4")))


def test_truncated_video_ends_cleanly(tmp_path, photos):
    video = make_video(tmp_path / "clip.avi", photos * 4)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) * 6 // 10])  # a copy cut short, like an interrupted upload
    src = open_source(VideoSourceConfig(path=str(video)))
    items = list(src)
    assert 0 < len(items) < len(photos) * 4 and src.stats()["read_errors"] == 1
    assert [i.seq for i in items] == list(range(len(items)))
    # the last frame is cut through, so only its top part decodes; all before it are whole
    assert all(close_to(i.frame, photos[i.meta["frame_index"] % len(photos)]) for i in items[:-1])


# ---------------------------------------------------------------- cameras (no camera here: see the docstring)

def test_camera_that_disappears_is_reopened_with_back_off(tmp_path, photos):
    """There is no camera on this machine. OpenCV's VideoCapture takes a file path in place of a device, so a
    video file stands in for /dev/videoN: its end is a failed read, as when a USB camera is unplugged, and
    deleting it makes reopening fail until it is created again. The open/read/reopen code is the camera's own."""
    device = make_video(tmp_path / "video0.avi", photos[:3])
    src = open_source(CameraSourceConfig(device=str(device), reconnect_initial_s=0.05, reconnect_max_s=0.2))
    assert src.live and src.id == f"camera:{device}"
    drain = Drain(src)
    drain.wait(1)
    device.unlink()  # the capture already holds the file open, so it still reads its three frames
    drain.wait(3)
    wait_until(lambda: src.stats()["read_errors"] >= 1 and not src.stats()["connected"])
    time.sleep(0.3)  # several reopen attempts fail meanwhile
    assert len(drain.items) == 3 and src.stats()["reconnects"] == 0
    make_video(tmp_path / "video0.avi", photos[3:5])  # plugged back in
    items = drain.wait(5)
    assert src.stats()["reconnects"] == 1 and src.stats()["connected"]
    drain.stop()
    assert [i.seq for i in items[:5]] == [0, 1, 2, 3, 4]
    assert [which_photo(i.frame, photos) for i in items[:5]] == [0, 1, 2, 3, 4]
    assert all(i.live and i.meta["device"] == str(device) for i in items)


def test_camera_missing_at_start_keeps_retrying_until_stop(tmp_path):
    src = open_source(CameraSourceConfig(device=str(tmp_path / "video9"), reconnect_initial_s=0.05))
    drain = Drain(src)
    time.sleep(0.4)
    drain.stop()
    assert drain.items == [] and drain.error is None and src.stats()["connected"] is False


# ---------------------------------------------------------------- network streams

class MjpegServer:
    """A loopback HTTP server sending multipart/x-mixed-replace JPEG frames; each connection gets `per_connection`
    frames (cycling through `frames`) and is then cut, or, with `hang`, nothing after the headers."""

    def __init__(self, frames: list[np.ndarray], per_connection: int, hang: bool = False) -> None:
        jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames]
        self.connections = 0
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                n, server.connections = server.connections, server.connections + 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                if hang:
                    server.release.wait(10)
                    return
                for k in range(per_connection):
                    jpg = jpegs[(n * per_connection + k) % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg))
                    self.wfile.write(jpg + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.02)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/video.mjpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_mjpeg_stream_reconnects_after_a_cut_and_keeps_counting(photos):
    """OpenCV's FFmpeg backend reads MJPEG over HTTP here, so http(s) streams go through it as RTSP does."""
    server = MjpegServer(photos[:4], per_connection=4)
    try:
        src = open_source(StreamSourceConfig(url=server.url, reconnect_initial_s=0.05, read_timeout_s=3))
        assert src.live and src.id.startswith("stream:127.0.0.1:")
        drain = Drain(src)
        items = drain.wait(10, timeout=30)
        stats = src.stats()
        drain.stop()
    finally:
        server.close()
    assert [i.seq for i in items[:10]] == list(range(10))
    assert stats["reconnects"] >= 2 and server.connections >= 3 and stats["read_errors"] >= 2
    assert all(close_to(i.frame, photos[k % 4]) for k, i in enumerate(items[:10]))
    assert items[0].meta["url"] == server.url and items[0].frame.shape == (H, W, 3)


def test_stop_unblocks_a_stream_that_hangs(photos):
    server = MjpegServer(photos[:1], per_connection=0, hang=True)
    try:
        src = open_source(StreamSourceConfig(url=server.url, open_timeout_s=30, read_timeout_s=30))
        drain = Drain(src)
        wait_until(lambda: server.connections >= 1)
        time.sleep(0.2)
        drain.stop(within=1.0)  # while OpenCV is still blocked waiting for the first frame
        assert drain.items == [] and drain.error is None
    finally:
        server.close()


def test_stream_gives_up_after_max_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    src = open_source(StreamSourceConfig(url=f"http://user:secret@127.0.0.1:{port}/x.mjpg", max_retries=2,
                                         reconnect_initial_s=0.02, open_timeout_s=2))
    assert "secret" not in src.id
    with pytest.raises(UnavailableError, match="no frames after 3 tries"):
        list(src)


def test_stream_url_must_be_rtsp_or_http():
    with pytest.raises(ValidationError, match="rtsp://"):
        StreamSourceConfig(url="ftp://cam/x")
    assert StreamSourceConfig(url="rtsp://10.0.0.5:554/live").rtsp_tcp is True


# ---------------------------------------------------------------- image folders

def test_folder_reads_images_in_order_and_skips_broken_ones(tmp_path, photos):
    cv2.imwrite(str(tmp_path / "a.png"), photos[0])
    cv2.imwrite(str(tmp_path / "b.png"), cv2.cvtColor(photos[1], cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "c.png"), cv2.cvtColor(photos[2], cv2.COLOR_BGR2BGRA))
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "e.png.part").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not an image")
    src = open_source(FolderSourceConfig(path=str(tmp_path)))
    items = list(src)
    assert [Path(i.meta["path"]).name for i in items] == ["a.png", "b.png", "c.png"]
    assert all(i.frame.shape == (H, W, 3) and i.frame.dtype == np.uint8 for i in items)
    assert np.array_equal(items[0].frame, photos[0]) and np.array_equal(items[2].frame, photos[2])
    assert np.ptp(items[1].frame.astype(int), axis=2).max() == 0  # gray expanded to three equal channels
    assert src.stats()["skipped_malformed"] == 1 and src.stats()["items"] == 3 and not src.live


def test_folder_sorted_by_mtime_and_filtered_by_pattern(tmp_path, photos):
    for k, name in enumerate(["z.png", "y.png", "x.png", "skip.jpg"]):
        cv2.imwrite(str(tmp_path / name), photos[k])
        os.utime(tmp_path / name, (1_700_000_000 + k, 1_700_000_000 + k))
    items = list(open_source(FolderSourceConfig(path=str(tmp_path), pattern="*.png", sort="mtime")))
    assert [Path(i.meta["path"]).name for i in items] == ["z.png", "y.png", "x.png"]
    with pytest.raises(InputError, match="not found"):
        open_source(FolderSourceConfig(path=str(tmp_path / "nope")))


def test_folder_watch_picks_up_complete_new_files(tmp_path, photos):
    cv2.imwrite(str(tmp_path / "000.png"), photos[0])
    src = open_source(FolderSourceConfig(path=str(tmp_path), watch=True, poll_s=0.05))
    assert src.live
    drain = Drain(src)
    drain.wait(1)
    ok, png = cv2.imencode(".png", photos[1])
    partial = tmp_path / "001.png.part"
    partial.write_bytes(png.tobytes()[:100])  # a writer's temporary name: ignored while it grows
    time.sleep(0.2)
    partial.write_bytes(png.tobytes())
    partial.rename(tmp_path / "001.png")
    drain.wait(2)
    (tmp_path / "002.png").write_bytes(b"garbage")
    cv2.imwrite(str(tmp_path / "003.png"), photos[3])
    items = drain.wait(3)
    time.sleep(0.2)  # later polls must not read any file twice
    drain.stop()
    assert [Path(i.meta["path"]).name for i in drain.items] == ["000.png", "001.png", "003.png"]
    assert [which_photo(i.frame, photos) for i in items] == [0, 1, 3]
    assert src.stats()["skipped_malformed"] == 1


# ---------------------------------------------------------------- MQTT

def publish(port: int, topic: str, payloads: list[bytes]) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for p in payloads:
        client.publish(topic, p, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_parse_payload_flattens_numbers_and_decodes_images(photos):
    frame, values = parse_payload(b'{"t": 21.5, "env": {"hum": 40, "ok": true, "name": "x"}, "acc": [1, 2]}')
    assert frame is None and values == {"t": 21.5, "env.hum": 40.0, "env.ok": 1.0, "acc.0": 1.0, "acc.1": 2.0}
    assert parse_payload(b"23.5") == (None, {"value": 23.5})
    png = cv2.imencode(".png", cv2.cvtColor(photos[0], cv2.COLOR_BGR2GRAY))[1].tobytes()
    frame, values = parse_payload(png)
    assert frame.shape == (H, W, 3) and values is None
    for bad, why in [(b"{oops", "not JSON"), (b'{"name": "x"}', "no numeric"), (b"\xff\xd8\xffjunk", "image"),
                     (b'{"image": "***"}', "base64"), (b"[" * 100_000 + b"]" * 100_000, "too deep")]:
        with pytest.raises(ValueError, match=why):
            parse_payload(bad)


def test_mqtt_source_yields_sensor_json_and_images_and_skips_malformed(mosquitto, photos):
    src = open_source(MqttSourceConfig(topic="plant/+/data", mqtt=MqttConfig(port=mosquitto.port)))
    drain = Drain(src)
    wait_until(lambda: src.stats()["subscribed"])
    jpeg = cv2.imencode(".jpg", photos[0])[1].tobytes()
    b64 = json.dumps({"image": base64.b64encode(cv2.imencode(".png", photos[1])[1].tobytes()).decode(), "n": 7})
    publish(mosquitto.port, "plant/a/data", [
        b'{"temp": 21.5, "motor": {"rpm": 1200}}', b"{not json", jpeg, b'{"status": "ok"}',
        b"\xff\xd8\xff\xe0 truncated jpeg", b64.encode(),
        b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,  # a RecursionError had ended paho's thread: nothing more came
        b'{"temp": 22.0}'])
    items = drain.wait(4)
    time.sleep(0.1)
    drain.stop()
    assert len(drain.items) == 4 and [i.seq for i in items] == [0, 1, 2, 3]
    assert items[0].values == {"temp": 21.5, "motor.rpm": 1200.0} and items[0].frame is None
    assert items[1].values is None and close_to(items[1].frame, photos[0])
    assert np.array_equal(items[2].frame, photos[1]) and items[2].values == {"n": 7.0}
    assert items[3].values == {"temp": 22.0}
    assert all(i.meta["topic"] == "plant/a/data" and i.live and i.source == "mqtt:plant/+/data" for i in items)
    assert src.stats()["skipped_malformed"] == 4


def test_mqtt_source_survives_a_broker_restart(mosquitto):
    src = open_source(MqttSourceConfig(topic="s/#", mqtt=MqttConfig(port=mosquitto.port)))
    drain = Drain(src)
    wait_until(lambda: src.stats()["subscribed"])
    publish(mosquitto.port, "s/1", [b'{"v": 1}'])
    drain.wait(1)
    mosquitto.stop()
    wait_until(lambda: not src.stats()["connected"])
    mosquitto.start()
    wait_until(lambda: src.stats()["subscribed"], timeout=20)
    publish(mosquitto.port, "s/1", [b'{"v": 2}'])
    items = drain.wait(2)
    drain.stop()
    assert [i.values for i in items] == [{"v": 1.0}, {"v": 2.0}] and [i.seq for i in items] == [0, 1]
    assert src.stats()["reconnects"] == 1


# ---------------------------------------------------------------- line-based sensors

def test_csv_with_header_and_malformed_lines(tmp_path):
    csv = tmp_path / "plant.csv"
    csv.write_text("ts,temp,hum\n1700000000,21.5,40\n# a comment\n1700000001,oops,41\n1700000002,22\n\n"
                   "2023-11-14T22:13:23Z,22.5,42\n1700000004,23,43")  # last line without its newline
    src = open_source(SensorSourceConfig(path=str(csv), timestamp_field="ts"))
    items = list(src)
    assert src.id == "sensor:plant.csv" and not src.live
    assert [i.values for i in items] == [{"temp": 21.5, "hum": 40.0}, {"temp": 22.5, "hum": 42.0},
                                         {"temp": 23.0, "hum": 43.0}]
    assert [i.ts for i in items] == [1700000000.0, 1700000003.0, 1700000004.0]
    assert [i.meta["line"] for i in items] == [2, 7, 8] and [i.seq for i in items] == [0, 1, 2]
    assert src.stats()["skipped_malformed"] == 2


def test_sensor_with_given_fields_and_whitespace_delimiter(tmp_path):
    data = tmp_path / "log.txt"
    data.write_text("a b\n1 2\n3   4\n")
    items = list(open_source(SensorSourceConfig(path=str(data), fields=["a", "b"], delimiter=" ")))
    assert [i.values for i in items] == [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]
    with pytest.raises(InputError, match="not found"):
        open_source(SensorSourceConfig(path=str(tmp_path / "none.csv")))


def test_sensor_follow_tails_a_growing_file(tmp_path):
    csv = tmp_path / "live.csv"
    csv.write_text("temp,hum\n20,30\n")
    src = open_source(SensorSourceConfig(path=str(csv), follow=True))
    assert src.live
    drain = Drain(src)
    drain.wait(1)
    with csv.open("a") as f:
        f.write("21,3")  # half a line: not read until its end arrives
        f.flush()
        time.sleep(0.3)
        assert len(drain.items) == 1
        f.write("1\nbad,line,here\n22,32\n")
    drain.wait(3)
    csv.rename(tmp_path / "live.csv.1")  # log rotation: a new file with its own header takes the name
    (tmp_path / "live.csv").write_text("temp,hum\n23,33\n")
    items = drain.wait(4)
    drain.stop()
    assert [i.values for i in items] == [{"temp": 20.0, "hum": 30.0}, {"temp": 21.0, "hum": 31.0},
                                         {"temp": 22.0, "hum": 32.0}, {"temp": 23.0, "hum": 33.0}]
    assert src.stats()["skipped_malformed"] == 1 and [i.seq for i in items] == [0, 1, 2, 3]


def test_serial_style_source_on_a_pty(tmp_path):
    """A real pseudo-terminal: the test writes into the master as a microcontroller would into a USB serial
    adapter, and the source opens the slave path, sets it raw at 115200 baud with termios, and reads lines."""
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        src = open_source(SensorSourceConfig(path=path, baudrate=115200, id="uart"))
        assert src.live
        drain = Drain(src)
        time.sleep(0.3)  # let the source open and configure the tty before the first line
        os.write(master, b"temp=21.5,hum=40\r\n")
        os.write(master, b"temp=22.0,hum=41\r\ntemp=?\r\ntemp=")
        time.sleep(0.1)
        os.write(master, b"22.5,hum=42\r\n")
        items = drain.wait(3)
        assert [i.values for i in items] == [{"temp": 21.5, "hum": 40.0}, {"temp": 22.0, "hum": 41.0},
                                             {"temp": 22.5, "hum": 42.0}]
        assert items[0].source == "uart" and src.stats()["skipped_malformed"] == 1
        os.close(master)  # unplugged: reads on the slave fail with EIO, and without `follow` the source ends
        master = -1
        drain.thread.join(3)
        assert not drain.thread.is_alive() and drain.error is None and src.stats()["read_errors"] == 1
    finally:
        if master >= 0:
            os.close(master)
        os.close(slave)


def test_fifo_source_waits_for_its_writer_and_ends_when_it_hangs_up(tmp_path):
    fifo = tmp_path / "readings"
    os.mkfifo(fifo)
    src = open_source(SensorSourceConfig(path=str(fifo), fields=["a", "b"]))
    assert src.live
    drain = Drain(src)
    time.sleep(0.3)  # the source is open with no writer yet: that is not the end
    assert drain.thread.is_alive()
    with open(fifo, "w") as w:
        w.write("1,2\n3,4\n")
    drain.thread.join(3)
    assert not drain.thread.is_alive() and drain.error is None
    assert [i.values for i in drain.items] == [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]


def test_baudrate_on_a_plain_file_is_an_error(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a\n1\n")
    with pytest.raises(InputError, match="not a serial device"):
        open_source(SensorSourceConfig(path=str(f), baudrate=9600))


def test_source_configs_forbid_unknown_fields():
    with pytest.raises(ValidationError):
        VideoSourceConfig(path="x.mp4", fps=3)
    with pytest.raises(ValidationError):
        open_source({"type": "webcam", "device": 0})
