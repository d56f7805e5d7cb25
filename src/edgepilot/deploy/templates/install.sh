#!/usr/bin/env bash
# Install the edgepilot device runtime and update agent ({{platform}}): a venv, a service user, folders, systemd units.
# Written by `edgepilot deploy-script --platform {{platform}}`. Run as root on the device, from this folder:
#   sudo ./install.sh                    # installs edgepilot[{{extras}}] from the package index
#   sudo EDGEPILOT_SPEC=./edgepilot-0.1.0-py3-none-any.whl ./install.sh   # or a wheel you copied over
set -euo pipefail

PREFIX="{{prefix}}"
STATE="{{state}}"
CONF="{{conf}}"
SERVICE_USER="{{user}}"
SPEC="${EDGEPILOT_SPEC:-edgepilot}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo $0)" >&2
    exit 1
fi
command -v python3 >/dev/null || { echo "install.sh: python3 is missing (apt-get install python3-venv)" >&2; exit 1; }

if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin "$SERVICE_USER"
fi
{{extra_groups}}
install -d -m 0755 "$PREFIX" "$CONF"
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE" "$STATE/agent" "$STATE/inbox" "$STATE/work"

python3 -m venv {{venv_flags}} "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/venv/bin/pip" install --quiet --no-compile "${SPEC}[{{extras}}]"
# bytecode for what runs (the service user cannot write it into the venv), not for the packages' own test suites
"$PREFIX/venv/bin/python" -m compileall -q -j 0 -x '/tests?/' "$PREFIX/venv/lib" >/dev/null \
    || echo "install.sh: some modules were not byte-compiled (they compile at each start)" >&2

if [ ! -f "$CONF/update.pub" ]; then
    echo "install.sh: copy your bundle signing key (edgepilot keygen's KEY.pub) to $CONF/update.pub" >&2
fi
for unit in edgepilot-runtime.service edgepilot-agent.service edgepilot-update.path edgepilot-update.service; do
    install -m 0644 "$HERE/$unit" "/etc/systemd/system/$unit"
done
systemctl daemon-reload
systemctl enable --now edgepilot-agent.service edgepilot-update.path
systemctl enable edgepilot-runtime.service
echo "installed: drop signed .edgebundle files into $STATE/inbox; the runtime starts on the first committed one"
