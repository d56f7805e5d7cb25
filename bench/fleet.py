"""A fleet of simulated devices on one Mosquitto: bring-up, a good rollout and a bad one, timed and counted.

Devices run in light mode (`edgepilot fleet agents`, several hosts): each has its own state folder with A/B slots,
MQTT client, TUF client, and installs real signed bundles with real gate checks on a tiny ONNX classifier; each
runs its committed model and publishes the health it measured. The controller is `edgepilot fleet rollout`, a
separate process, sampled for CPU and memory. Broker rates come from Mosquitto's own $SYS counters.

    python bench/fleet.py [--devices 1000] [--hosts 4] [--interval 5] [--observe 10]

Writes bench/results/fleet.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
EXE = [sys.executable, "-c", "from edgepilot.cli import main; main()"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


class SysCounters:
    """Mosquitto's $SYS counters of MQTT messages of every type (sys_interval 1; its publish counters leave QoS 1
    out), and a count of the fleet's own publishes as one more subscriber of edgepilot/fleet/# receives them."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.values: dict[str, float] = {}
        self.fleet = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe("$SYS/broker/#"),
                                                         c.subscribe("edgepilot/fleet/#", qos=0))
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on(self, client, userdata, msg) -> None:
        if not msg.topic.startswith("$SYS"):
            self.fleet += 1
            return
        try:
            self.values[msg.topic.removeprefix("$SYS/broker/")] = float(msg.payload.split()[0])
        except (ValueError, IndexError):
            pass

    def publishes(self) -> tuple[float, float, int]:
        """(MQTT messages received by the broker, sent by it, fleet publishes seen) so far."""
        return self.values.get("messages/received", 0.0), self.values.get("messages/sent", 0.0), self.fleet


class Sampler:
    """CPU seconds and peak RSS of a process, polled while it runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu = 0.0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
                t = self.proc.cpu_times()
                self.cpu = t.user + t.system
            except psutil.Error:
                return
            self._stop.wait(0.2)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join()
        return {"cpu_s": round(self.cpu, 2), "peak_rss_mb": round(self.peak_rss / 2**20, 1)}


def rollout(tmp: Path, port: int, bundle: Path, counters: SysCounters, observe: float) -> dict:
    db = tmp / "fleet.db"
    rec0, sent0, fleet0 = counters.publishes()
    t0 = time.time()
    proc = subprocess.Popen([*EXE, "fleet", "rollout", str(bundle), "--repo", str(tmp / "repo"), "--db", str(db),
                             "--broker", f"127.0.0.1:{port}", "--canary", "10%", "--waves", "10,50,100",
                             "--observe", f"{observe}s", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    sampler = Sampler(proc.pid)
    out, err = proc.communicate(timeout=1800)
    wall = time.time() - t0
    usage = sampler.stop()
    time.sleep(2.5)  # the $SYS counters are published every second
    rec1, sent1, fleet1 = counters.publishes()
    if not out:
        raise SystemExit(f"the rollout printed nothing: {err.decode()[-2000:]}")
    summary = json.loads(out)
    stages = summary["stages"]
    created = sqlite3.connect(str(db)).execute("SELECT created FROM rollouts WHERE id = ?",
                                               (summary["id"],)).fetchone()[0]
    canary = stages[0]
    return {
        "bundle": Path(bundle).name, "state": summary["state"], "stages": [len(s["devices"]) for s in stages],
        "stage_states": [s["state"] for s in stages],
        "canary_reasons": canary["decision"]["reasons"] if canary["decision"] else None,
        "canary_numbers": {k: canary["decision"][k] for k in ("canary", "control")} if canary["decision"] else None,
        "observe_s_per_stage": observe,
        "s_to_canary_decision": round(canary["decided"] - created, 2) if canary["decided"] else None,
        "s_to_final": round(summary["updated"] - created, 2),
        "controller_process_wall_s": round(wall, 2),
        "controller_cpu_s": usage["cpu_s"],
        "controller_cpu_pct_of_one_core": round(usage["cpu_s"] / wall * 100, 1),
        "controller_peak_rss_mb": usage["peak_rss_mb"],
        "broker_messages_in_per_s": round((rec1 - rec0) / (wall + 2.5), 1),
        "broker_messages_out_per_s": round((sent1 - sent0) / (wall + 2.5), 1),
        "fleet_publishes_per_s": round((fleet1 - fleet0) / (wall + 2.5), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between a device's health reports")
    ap.add_argument("--observe", type=float, default=10.0, help="observation window per stage, s")
    args = ap.parse_args()

    from brokers import Mosquitto
    from deploy_helpers import keys
    from edgepilot.fleet.inventory import Inventory
    from edgepilot.fleet.protocol import broker
    from edgepilot.fleet.repository import Repository
    from fleet_helpers import Served, fleet_bundle

    results: dict = {"devices": args.devices, "hosts": args.hosts, "report_interval_s": args.interval,
                     "cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        mq = Mosquitto(tmp)
        mq.conf.write_text(mq.conf.read_text() + "sys_interval 1\nmax_queued_messages 100000\n")
        mq.start()
        broker_usage = Sampler(mq.proc.pid)
        key, pub = keys(tmp)
        repo = Repository.init(tmp / "repo")
        served = Served(tmp / "repo")
        initial = fleet_bundle(tmp, key, 1)
        per = -(-args.devices // args.hosts)
        hosts = []
        t0 = time.time()
        for h in range(args.hosts):
            count = min(per, args.devices - h * per)
            hosts.append(subprocess.Popen(
                [*EXE, "fleet", "agents", "--count", str(count), "--first", str(h * per), "--class", "rpi4",
                 "--state", str(tmp / "devices"), "--repo-url", served.url, "--root",
                 str(repo.metadata / "1.root.json"), "--key", str(pub), "--initial", str(initial),
                 "--interval", str(args.interval), "--runs", "2", "--broker", f"127.0.0.1:{mq.port}"],
                stdout=subprocess.DEVNULL, stderr=(tmp / f"host-{h}.log").open("wb"), env=env()))
        host_usage = [Sampler(p.pid) for p in hosts]
        counters = SysCounters(mq.port)
        inv = Inventory(broker(f"127.0.0.1:{mq.port}"), "bench").start()
        ok = inv.wait_for(lambda d: len([x for x in d.values() if x.get("version") == 1
                                         and (x.get("health") or {}).get("inferences")]) >= args.devices, 1800)
        results["s_to_fleet_online_with_initial_model"] = round(time.time() - t0, 1)
        if not ok:
            raise SystemExit(f"only {len(inv.devices())} devices came up; see {tmp}/host-*.log")
        time.sleep(2 * args.interval)
        rec0, sent0, fleet0 = counters.publishes()
        time.sleep(10)
        rec1, sent1, fleet1 = counters.publishes()
        results["steady"] = {"broker_messages_in_per_s": round((rec1 - rec0) / 10, 1),
                             "broker_messages_out_per_s": round((sent1 - sent0) / 10, 1),
                             "fleet_publishes_per_s": round((fleet1 - fleet0) / 10, 1)}
        inv.stop()
        results["good"] = rollout(tmp, mq.port, fleet_bundle(tmp, key, 2), counters, args.observe)
        results["bad_slower"] = rollout(tmp, mq.port, fleet_bundle(tmp, key, 3, kind="slow"), counters, args.observe)
        results["agent_hosts"] = [u.stop() for u in host_usage]
        results["broker"] = broker_usage.stop()
        results["run_wall_s"] = round(time.time() - t0, 1)
        results["broker"]["cpu_pct_of_one_core"] = round(results["broker"]["cpu_s"] / results["run_wall_s"] * 100, 2)
        results["broker"]["connections"] = counters.values.get("clients/connected")
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "fleet.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "fleet.md").write_text(markdown(results))
        print(markdown(results))
        t1 = time.time()
        for p in hosts:
            p.terminate()
        for p in hosts:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
        print(f"hosts shut down in {time.time() - t1:.1f} s")
        served.close()
        mq.stop()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
                return f"{line.split(':', 1)[1].strip()} ({isa})"
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(r: dict) -> str:
    lines = [f"# Fleet: {r['devices']} simulated devices on one Mosquitto", "",
             f"{r['hosts']} agent host processes, one health report per device every {r['report_interval_s']} s, "
             f"on {r['cores']} cores ({r['cpu']}), Python {r['python']}. Every device installs real signed bundles "
             "through TUF with its gates re-checked; the controller is `edgepilot fleet rollout`.", "",
             f"- fleet online with the initial model: {r['s_to_fleet_online_with_initial_model']} s",
             f"- steady state: {r['steady']['fleet_publishes_per_s']} fleet publishes/s; the broker receives "
             f"{r['steady']['broker_messages_in_per_s']} and sends {r['steady']['broker_messages_out_per_s']} MQTT "
             "messages/s (all packet types, $SYS)", "",
             "| rollout | outcome | stages | to canary decision (s) | to final (s) | observe/stage (s) | "
             "controller CPU (% of a core) | controller peak RSS (MB) | fleet publishes/s | broker msgs in/out per s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("good", "bad_slower"):
        x = r[name]
        lines.append(f"| {name} | {x['state']} | {'/'.join(map(str, x['stages']))} | {x['s_to_canary_decision']} | "
                     f"{x['s_to_final']} | {x['observe_s_per_stage']} | {x['controller_cpu_pct_of_one_core']} | "
                     f"{x['controller_peak_rss_mb']} | {x['fleet_publishes_per_s']} | {x['broker_messages_in_per_s']}"
                     f" / {x['broker_messages_out_per_s']} |")
    bad = r["bad_slower"]
    lines += ["", f"Bad bundle stopped in the canary: {'; '.join(bad['canary_reasons'] or [])}.", "",
              f"Broker (mosquitto) over the whole run ({r['run_wall_s']} s): {r['broker']['cpu_s']} CPU s "
              f"({r['broker']['cpu_pct_of_one_core']} % of one core), peak RSS "
              f"{r['broker']['peak_rss_mb']} MB. Agent hosts: "
              + ", ".join(f"{h['cpu_s']} CPU s / {h['peak_rss_mb']} MB" for h in r["agent_hosts"]) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
