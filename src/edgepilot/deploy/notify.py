"""sd_notify without a dependency: one datagram to $NOTIFY_SOCKET (READY=1, WATCHDOG=1, STATUS=...)."""
from __future__ import annotations

import os
import socket
import threading


def notify(message: str) -> bool:
    """Send `message` to systemd; False where no service manager listens (run by hand, in a container)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # an abstract socket: a leading NUL byte
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(address)
            s.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec= (systemd passes it as $WATCHDOG_USEC to the main process), or None when unset."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def keep_alive(healthy, stop: threading.Event) -> threading.Thread | None:
    """Feed the watchdog from a thread while `healthy()` holds: a wedged process stops feeding and is restarted."""
    interval = watchdog_interval()
    if interval is None:
        return None

    def loop() -> None:
        while not stop.wait(interval):
            if healthy():
                notify("WATCHDOG=1")

    t = threading.Thread(target=loop, name="sd-watchdog", daemon=True)
    t.start()
    return t
