"""sd_notify without a dependency: one datagram to $NOTIFY_SOCKET (READY=1, WATCHDOG=1, STATUS=...)."""
from __future__ import annotations

import os
import socket


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

