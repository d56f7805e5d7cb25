"""`edgepilot deploy-script`: the install script passes bash -n and shellcheck, the units systemd-analyze verify,
the Dockerfile and DaemonSet carry no TensorFlow/PyTorch and select nodes per class; sd_notify reaches a socket."""
from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from edgepilot.deploy.artifacts import PLATFORMS, write_artifacts
from edgepilot.deploy.notify import notify
from edgepilot.errors import ConfigError

UNITS = ("edgepilot-runtime.service", "edgepilot-agent.service", "edgepilot-update.path", "edgepilot-update.service")


@pytest.fixture(params=sorted(PLATFORMS))
def artifacts(request, tmp_path: Path):
    prefix = tmp_path / "opt"
    (prefix / "venv/bin").mkdir(parents=True)  # systemd-analyze checks that ExecStart= exists
    (prefix / "venv/bin/edgepilot").write_text("#!/bin/sh\n")
    (prefix / "venv/bin/edgepilot").chmod(0o755)
    out = tmp_path / "out"
    write_artifacts(request.param, out, prefix=str(prefix))
    return request.param, out


def test_install_script_is_valid_bash(artifacts):
    _, out = artifacts
    subprocess.run(["bash", "-n", str(out / "install.sh")], check=True)
    text = (out / "install.sh").read_text()
    assert "useradd --system" in text and "python3 -m venv" in text and "{{" not in text


def test_install_script_passes_shellcheck(artifacts):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    _, out = artifacts
    run = subprocess.run(["shellcheck", str(out / "install.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


def test_units_pass_systemd_analyze_verify(artifacts):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    _, out = artifacts
    run = subprocess.run(["systemd-analyze", "verify", *(f"./{u}" for u in UNITS)], cwd=out,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for unit in ("edgepilot-runtime.service", "edgepilot-agent.service"):
        text = (out / unit).read_text()
        assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=" in text


def test_a_commit_reloads_the_runtime_which_swaps_in_place_instead_of_restarting(artifacts):
    _, out = artifacts
    runtime, update = (out / "edgepilot-runtime.service").read_text(), (out / "edgepilot-update.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in runtime  # SIGHUP: `edgepilot run` swaps the model now
    assert "ExecStart=/bin/systemctl reload-or-restart edgepilot-runtime.service" in update
    assert "systemctl restart" not in update


def test_device_side_installs_no_tensorflow_or_torch(artifacts):
    platform, out = artifacts
    for name in ("install.sh", "Dockerfile"):
        extras = (out / name).read_text().split("[", 2)[-1]
        assert "tensorflow" not in extras and "torch" not in extras
    assert ",tf," not in f",{PLATFORMS[platform].extras}," and "torch" not in PLATFORMS[platform].extras
    assert "FROM python:3.11-slim" in (out / "Dockerfile").read_text()


def test_daemonset_selects_nodes_of_the_platforms_class(artifacts):
    platform, out = artifacts
    ds = yaml.safe_load((out / "daemonset.yaml").read_text())
    assert ds["kind"] == "DaemonSet"
    selector = ds["spec"]["template"]["spec"]["nodeSelector"]
    assert selector == {"edgepilot.io/class": PLATFORMS[platform].klass, "kubernetes.io/arch": PLATFORMS[platform].arch}
    assert {c["name"] for c in ds["spec"]["template"]["spec"]["containers"]} == {"runtime", "agent"}


def test_unknown_platform_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown platform"):
        write_artifacts("esp32", tmp_path)


def test_sd_notify_sends_one_datagram(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1") and notify("WATCHDOG=1")
        assert server.recv(64) == b"READY=1" and server.recv(64) == b"WATCHDOG=1"
    assert notify("READY=1") is False  # nobody listens any more: never an exception
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False  # no service manager: nothing to tell
