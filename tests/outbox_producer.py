"""Test helper, run as a child process: puts events into an outbox and writes each event_id once `put` returned."""
from __future__ import annotations

import json
import sys
import time

from edgepilot.runtime.mqtt import MqttConfig
from edgepilot.runtime.outbox import Outbox


def main(db: str, port: int, count: int) -> None:
    outbox = Outbox(db, MqttConfig(port=port), reconnect_min_s=0.2, reconnect_max_s=0.5)
    for i in range(count):
        eid = f"child-{i:06d}"
        outbox.put("kill/events", json.dumps({"event_id": eid, "seq": i}), event_id=eid)
        sys.stdout.write(eid + "\n")  # only after put returned: every line is an accepted event
        sys.stdout.flush()
        time.sleep(0.002)
    time.sleep(60)  # the test kills us long before this


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
