"""Sinks: JSONL with rotation, webhook retried against a real loopback server, annotated video, snapshots."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np

from brokers import free_port
from edgepilot.runtime.item import Detection, Event, Item, Result
from edgepilot.runtime.sinks import (
    JsonlSink,
    JsonlSinkConfig,
    SnapshotSink,
    SnapshotSinkConfig,
    StdoutSink,
    StdoutSinkConfig,
    VideoSink,
    VideoSinkConfig,
    WebhookSink,
    WebhookSinkConfig,
)


def item(seq: int, events: int = 0) -> Item:
    frame = np.full((120, 160, 3), 90, np.uint8)
    det = Detection((20.0, 30.0, 80.0, 100.0), 0.9, 0, "face", ((40.0, 50.0),))
    it = Item("cam", seq, 1000.0 + seq, frame=frame, result=Result("detection", detections=[det]))
    it.events = [Event("r", "cam", seq, kind="alert", state="raised", message=f"m{seq}") for _ in range(events)]
    return it


def test_jsonl_results_and_events_with_rotation(tmp_path):
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(tmp_path / "out.jsonl"), max_bytes=2048, backups=2))
    for i in range(40):
        sink.write(item(i, events=i % 10 == 0))
    sink.close()
    files = sorted(tmp_path.glob("out.jsonl*"))
    assert [f.name for f in files] == ["out.jsonl", "out.jsonl.1", "out.jsonl.2"]
    rows = [json.loads(ln) for f in reversed(files) for ln in f.read_text().splitlines()]
    assert rows[-1]["seq"] == 39 and rows[-1]["result"]["detections"][0]["box"] == [20.0, 30.0, 80.0, 100.0]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)  # oldest files dropped, order kept

    events = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(tmp_path / "ev.jsonl"), what="events"))
    for i in range(12):
        events.write(item(i, events=i % 5 == 0))
    events.close()
    ev = [json.loads(ln) for ln in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in ev] == [0, 5, 10] and all(e["event_id"] and e["state"] == "raised" for e in ev)


def test_stdout_events_only(capsys):
    sink = StdoutSink(StdoutSinkConfig(type="stdout"))
    sink.write(item(0)), sink.write(item(1, events=1))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "m1"


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_webhook_retries_until_the_endpoint_is_up_in_order(tmp_path):
    port = free_port()
    cfg = WebhookSinkConfig(type="webhook", url=f"http://127.0.0.1:{port}/hook", retry_s=0.1, max_retry_s=0.2,
                            timeout_s=1)
    sink = WebhookSink(cfg, tmp_path)
    for i in range(3):  # nobody listens yet: kept in the spool
        sink.write(item(i, events=1))
    time.sleep(0.3)
    assert delivered_once_up(sink, port, last=3) == [0, 1, 2, 3]


def delivered_once_up(sink: WebhookSink, port: int, last: int) -> list[int]:
    """The seqs a webhook endpoint started on `port` receives, in order, once event `last` follows the rest."""
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink.write(item(last, events=1))
        deadline = time.monotonic() + 10
        while len(_Hook.received) <= last and time.monotonic() < deadline:
            time.sleep(0.05)
        return [e["seq"] for e in _Hook.received]
    finally:
        sink.close()
        server.shutdown()


def test_webhook_outlives_an_endpoint_that_does_not_speak_http_and_a_spool_that_cannot_grow(tmp_path):
    """An answer that is no HTTP (http.client's BadStatusLine, not an OSError) had killed the delivery thread, and
    every later event stayed queued; a spool the file system refuses (EFBIG here, as ENOSPC on a full disk) holds
    the event in memory until it can be written. Then a real endpoint gets them all, in order."""
    import resource
    import signal
    import socket

    port = free_port()
    liar = socket.create_server(("127.0.0.1", port))

    def answer_garbage():
        while True:
            try:
                conn, _ = liar.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    cfg = WebhookSinkConfig(type="webhook", url=f"http://127.0.0.1:{port}/hook", retry_s=0.05, max_retry_s=0.1,
                            timeout_s=1)
    sink = WebhookSink(cfg, tmp_path)
    sink.write(item(0, events=1))
    deadline = time.monotonic() + 10
    while sink.undelivered()[0] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few retries against the liar
    assert sink._thread.is_alive() and sink.undelivered()[0] == 1
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    spooled = sink.poster.spool.stat().st_size
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (spooled, hard))
    try:
        sink.write(item(1, events=1))
        time.sleep(0.3)
        assert sink._thread.is_alive() and sink.undelivered()[0] == 2  # one spooled, one held
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    liar.shutdown(socket.SHUT_RDWR)  # wakes its accept, so the port is free for the real endpoint
    liar.close()
    assert delivered_once_up(sink, port, last=2) == [0, 1, 2]


def test_annotated_video_and_snapshots(tmp_path):
    import cv2

    video = VideoSink(VideoSinkConfig(type="video", path=str(tmp_path / "a.mp4"), fps=10), lambda s: None)
    snaps = SnapshotSink(SnapshotSinkConfig(type="snapshots", dir=str(tmp_path / "snaps"), on="alerts", max_files=2))
    for i in range(6):
        it = item(i, events=i % 2)
        video.write(it)
        snaps.write(it)
    video.close()
    cap = cv2.VideoCapture(str(tmp_path / "a.mp4"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 6 and frames[0].shape == (120, 160, 3)
    # the box edge is drawn where the detection is (frame was uniform gray 90)
    assert np.abs(frames[0][30:100, 19:22].astype(int) - 90).max() > 60
    assert sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg")) == ["cam-00000003.jpg", "cam-00000005.jpg"]
