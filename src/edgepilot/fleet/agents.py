"""Fleet agents in light mode: one process hosts many devices, each with its own state folder (A/B slots), MQTT
client (with a last will), TUF client and gate checks; a shared loop runs each device's committed model on its own
inputs and publishes the health measured (latency p95, error rate, crashes, mean top-1 confidence, temperature).

Devices whose committed models are the same bytes share one loaded session for the health runs (the model is
measured, not the loading); installs and their trials are each device's own.

For a real device, `health_dir` (one hosted device) publishes the running runtime's own health instead
(runtime_health.py): what `edgepilot run` reports in that folder about the committed model, and no model runs here.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepilot.deploy.agent import Agent
from edgepilot.errors import ConfigError, EdgepilotError
from edgepilot.fleet.client import RepoClient
from edgepilot.fleet.protocol import check_device_id, cmd_topic, state_topic, status_topic
from edgepilot.fleet.runtime_health import RuntimeReader
from edgepilot.runtime.mqtt import MqttConfig, make_client

log = logging.getLogger(__name__)


@dataclass
class HostConfig:
    broker: MqttConfig
    repo_url: str
    root: bytes  # the repository's first root metadata
    keys: list  # trusted bundle public keys
    state: Path
    device_class: str
    ids: list[str]
    initial: Path | None = None  # installed on a device that has no committed model (its factory image)
    interval_s: float = 1.0
    runs: int = 4  # inferences per device per interval
    window: int = 64  # health is over the last `window` inferences of the current model
    workers: int = 2  # concurrent installs
    health_dir: Path | None = None  # the runtime's health folder (EDGEPILOT_HEALTH_DIR): its health, not ours
    health_max_age_s: float | None = None  # a runtime report older than this is stale (default: stale_after())

    def stale_after(self) -> float:
        """3 health intervals, and at least 3 ticks of the runtime's default 5 s statistics interval."""
        return self.health_max_age_s if self.health_max_age_s is not None else max(3 * self.interval_s, 15.0)


class Health:
    """Inference outcomes of the committed model since it became active."""

    def __init__(self, window: int) -> None:
        self.latency: deque[float] = deque(maxlen=window)
        self.confidence: deque[float] = deque(maxlen=window)
        self.outcomes: deque[bool] = deque(maxlen=window)
        self.crashes = 0
        self.inferences = 0

    def summary(self) -> dict:
        return {
            "p95_ms": round(float(np.percentile(self.latency, 95)), 4) if self.latency else None,
            "error_rate": round(1 - sum(self.outcomes) / len(self.outcomes), 4) if self.outcomes else None,
            "crashes": self.crashes,
            "confidence": round(float(np.mean(self.confidence)), 4) if self.confidence else None,
            "inferences": self.inferences,
            "temperature_c": _temperature(),
            "source": "light",
        }


def _temperature() -> float | None:
    """The hottest sensor psutil reads here; None where there is none (never a made-up value)."""
    import psutil

    try:
        sensors = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
    except OSError:
        return None
    temps = [t.current for entries in (sensors or {}).values() for t in entries if t.current]
    return round(max(temps), 1) if temps else None


class Device:
    """One device: real slots, real bundle checks, real inference (here, or the runtime's); its own MQTT client."""

    def __init__(self, host: Host, device_id: str) -> None:
        cfg = host.cfg
        self.host, self.id = host, check_device_id(device_id)
        self.dir = cfg.state / device_id
        self.agent = Agent(self.dir / "agent", cfg.keys, engine="onnxruntime")
        self.repo = RepoClient(self.dir / "tuf", cfg.repo_url, cfg.root, cfg.device_class)
        self.health = Health(cfg.window)
        self.runtime = RuntimeReader(cfg.health_dir, cfg.stale_after(), device_id) if cfg.health_dir else None
        self.last_update: dict | None = None
        self.lock = threading.Lock()  # one update at a time; the health loop skips a device mid-update
        self.client = make_client(cfg.broker.model_copy(update={"client_id": f"edgepilot-dev-{device_id}"}),
                                  "device")
        self.client.will_set(status_topic(cfg.device_class, device_id), b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 5)

    def start(self) -> None:
        self.client.connect_async(self.host.cfg.broker.host, self.host.cfg.broker.port,
                                  keepalive=self.host.cfg.broker.keepalive_s)
        self.client.loop_start()

    def say_offline(self):
        return self.client.publish(status_topic(self.host.cfg.device_class, self.id), b"offline", qos=1, retain=True)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe(cmd_topic(self.host.cfg.device_class, self.id), qos=1)
        client.publish(status_topic(self.host.cfg.device_class, self.id), b"online", qos=1, retain=True)
        self.publish()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            cmd = json.loads(msg.payload)
            if not isinstance(cmd, dict) or cmd.get("op") not in ("update", "rollback"):
                raise ValueError("not a command")
        except (ValueError, RecursionError) as e:  # anything escaping here would end paho's network thread
            log.warning("%s: ignored a malformed command (%s)", self.id, e)
            return
        self.host.work.put((self, cmd))

    # -- commands ------------------------------------------------------------------------------------------
    def handle(self, cmd: dict) -> None:
        with self.lock:
            info = self.agent.state().committed()
            version = int(cmd.get("version") or 0)
            rollout = cmd.get("rollout")
            if cmd["op"] == "update":
                if info is not None and info.version >= version:
                    self.last_update = {"state": "COMMITTED", "version": info.version, "rollout": rollout,
                                        "reason": "already at or above this version"}
                elif self.agent.state().highest >= version:
                    self.last_update = {"state": "FAILED", "version": version, "rollout": rollout,
                                        "reason": f"v{version} is not newer than v{self.agent.state().highest}"}
                else:
                    self._update(str(cmd.get("target", "")), version, rollout)
            elif info is not None and info.version == version:
                try:
                    out = self.agent.rollback(f"rolled back by the fleet controller (rollout {rollout})")
                except EdgepilotError as e:  # no previous model to go back to: say so, keep running this one
                    self.last_update = {"state": "FAILED", "version": version, "rollout": rollout, "reason": str(e)}
                else:
                    self.health = Health(self.host.cfg.window)
                    self.last_update = {"state": "ROLLED_BACK", "version": version, "rollout": rollout,
                                        "reason": out.reason, "to": out.version}
            else:
                self.last_update = {"state": "ROLLED_BACK", "version": version, "rollout": rollout,
                                    "reason": "not running this version"}
        self.publish()

    def _update(self, target: str, version: int, rollout) -> None:
        try:
            path = self.repo.fetch(target)
        except EdgepilotError as e:
            self.last_update = {"state": "FAILED", "version": version, "rollout": rollout, "reason": str(e)}
            return
        out = self.agent.install(path)
        path.unlink(missing_ok=True)  # the slot holds the verified copy
        if out.state == "COMMITTED":
            self.health = Health(self.host.cfg.window)
        self.last_update = {"state": out.state, "version": out.version or version, "rollout": rollout,
                            "reason": out.reason}

    def install_initial(self) -> None:
        if self.host.cfg.initial is not None and self.agent.state().committed() is None:
            out = self.agent.install(self.host.cfg.initial)
            if out.state != "COMMITTED":
                log.error("%s: the initial bundle did not commit: %s", self.id, out.reason)

    # -- health ---------------------------------------------------------------------------------------------
    def measure(self, runs: int) -> None:
        if self.runtime is not None:  # the runtime measures itself
            return
        if not self.lock.acquire(blocking=False):
            return
        try:
            st = self.agent.state()
            info = st.committed()
            if info is None:
                return
            model = self.agent.committed_model()
            key = self.agent.manifest(st.active).files[info.model].sha256
            try:
                session, feeds = self.host.session(key, model, self.id)
            except EdgepilotError as e:  # the committed model no longer loads: a crash of the runtime
                log.error("%s: %s", self.id, e)
                self.health.crashes += 1
                return
            for i in range(runs):
                feed = feeds[(self.health.inferences + i) % len(feeds)]
                t0 = time.perf_counter()
                try:
                    out = session.run(feed)
                except Exception as e:  # an inference error counts against the model's error rate
                    log.warning("%s: inference failed: %s", self.id, e)
                    self.health.outcomes.append(False)
                    continue
                self.health.latency.append((time.perf_counter() - t0) * 1e3)
                self.health.outcomes.append(True)
                first = np.asarray(next(iter(out.values())))
                self.health.confidence.append(float(first.reshape(first.shape[0], -1).max(axis=1).mean()))
            self.health.inferences += runs
        finally:
            self.lock.release()

    def publish(self) -> None:
        st = self.agent.state()
        info = st.committed()
        if self.runtime is not None:
            health = {**self.runtime.summary(st.active if info else None, info.version if info else None),
                      "temperature_c": _temperature()}
        else:
            health = self.health.summary()
        body = {
            "device": self.id, "target": self.host.cfg.device_class, "name": info.name if info else None,
            "version": info.version if info else None, "active": st.active, "highest": st.highest,
            "slots": {k: ({"name": v.name, "version": v.version} if v else None) for k, v in st.slots.items()},
            "update": self.last_update, "health": {**health, "version": info.version if info else None},
            "at": time.time(),
        }
        self.client.publish(state_topic(self.host.cfg.device_class, self.id), json.dumps(body), qos=1, retain=True)


class Host:
    """Many devices in one process: their MQTT clients, an install queue and the health loop."""

    def __init__(self, cfg: HostConfig) -> None:
        self.cfg = cfg
        if cfg.health_dir is not None and len(cfg.ids) != 1:
            raise ConfigError(f"--health-dir reads one runtime's health, but this process hosts {len(cfg.ids)} "
                              "devices", hint="run one agent per real device with --count 1, or drop --health-dir "
                                              "for light mode")
        cfg.state.mkdir(parents=True, exist_ok=True)
        self.work: queue.Queue = queue.Queue()
        self._sessions: dict[str, tuple] = {}
        self._slock = threading.Lock()
        self.devices = [Device(self, d) for d in cfg.ids]
        self._stop = threading.Event()

    def session(self, key: str, model_path: Path, device_id: str):
        """The shared health session for the model whose bytes hash to `key`, and this device's inputs."""
        from edgepilot.engines import open_session
        from edgepilot.evaluate.latency import synthetic_feeds
        from edgepilot.model import Model

        with self._slock:
            if key not in self._sessions:
                model = Model.load(model_path)
                self._sessions[key] = (open_session(model, "onnxruntime", threads=1), model, {})
            session, model, feeds = self._sessions[key]
            if device_id not in feeds:
                seed = int.from_bytes(device_id.encode()[-4:], "little")
                feeds[device_id] = [synthetic_feeds(model.inputs, batch=1, seed=seed + i) for i in range(8)]
            return session, feeds[device_id]

    def run(self, stop: threading.Event | None = None) -> None:
        """Install initial images, connect every device, then serve commands and measure until `stop` is set."""
        stop = stop or self._stop
        for d in self.devices:
            d.install_initial()
        for d in self.devices:
            d.start()
        workers = [threading.Thread(target=self._worker, args=(stop,), daemon=True) for _ in range(self.cfg.workers)]
        for w in workers:
            w.start()
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                for d in self.devices:
                    d.measure(self.cfg.runs)
                    d.publish()
                stop.wait(max(0.0, self.cfg.interval_s - (time.monotonic() - t0)))
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Say offline, then disconnect every device at once (one at a time waits out each network loop)."""
        sent = [d.say_offline() for d in self.devices]
        deadline = time.monotonic() + 5
        for info in sent:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
        for d in self.devices:
            d.client.disconnect()
        for d in self.devices:
            d.client.loop_stop()

    def _worker(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                device, cmd = self.work.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                device.handle(cmd)
            except Exception:  # one device's failure never stops the host
                log.exception("%s: command %s failed", device.id, cmd.get("op"))
