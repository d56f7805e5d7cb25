"""A real Mosquitto on 127.0.0.1 for tests (Debian's package), and a subscriber that records what arrives."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """`start()`/`stop()` can be called repeatedly on the same port, to test broker outages."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if MOSQUITTO is None:
            pytest.fail("mosquitto is not installed: `apt-get install -y mosquitto` (.ci/run does it)")
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # persistence off: a restarted broker is a fresh one, as after a real outage with state lost
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-500:]}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening in 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Subscriber:
    """A paho client on its own network thread; keeps every message (topic, decoded JSON or bytes) in order
    and reconnects by itself (clean_session=False, QoS 1) so it sees what was sent while the broker was down
    only if the broker kept it — tests restart the broker without persistence, so the publisher must resend."""

    def __init__(self, port: int, topic: str = "#", client_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, object]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{free_port()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        self.wait_connected()

    def wait_connected(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError("subscriber did not connect")
            time.sleep(0.02)
        time.sleep(0.2)  # let the SUBACK come back before anything is published

    def _on_message(self, client, userdata, msg) -> None:
        try:
            body: object = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            body = msg.payload
        with self._cond:
            self.messages.append((msg.topic, body))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> list[tuple[str, object]]:
        """Waits until predicate(messages) is true; returns the messages either way."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()
