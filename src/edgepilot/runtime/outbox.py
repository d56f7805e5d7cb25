"""A durable SQLite outbox in front of MQTT: a message is accepted once it is on disk and leaves, in order, QoS 1."""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgepilot.errors import InputError, RuntimeFailure
from edgepilot.runtime import outbox_store as store
from edgepilot.runtime.mqtt import MqttConfig, make_client

log = logging.getLogger(__name__)

_MQTT_OK, _MQTT_NO_CONN = 0, 4  # paho's MQTT_ERR_SUCCESS and MQTT_ERR_NO_CONN


class Outbox:
    """Messages wait in SQLite until the broker acknowledges them (PUBACK), and go out strictly in `put` order.

    Guarantees: a `put` that returned is on disk (it survives a kill of the process and, with `synchronous=FULL`,
    a power cut) and will be delivered at least once, in order, whenever a broker is reachable - now or after a
    restart that reopens the same file. After a disconnect, unacknowledged messages are sent again, so a consumer
    may see one twice: it de-duplicates by event_id. `put` never changes the payload; a caller that wants
    de-duplication puts the event_id inside its payload (the MQTT sinks do).

    Durability: the table is written by two connections. `put`'s runs `synchronous=FULL`: every commit fsyncs the
    WAL, so "accepted" means on stable storage (measured ~0.3 ms per put on this machine's SSD). The publisher's
    deletes run `synchronous=NORMAL`: a delete lost to a power cut only means that message is sent again - a
    duplicate, never a loss - and it keeps one fsync per delivered message off the hot path.

    Limits: `max_pending` caps how many messages may wait; beyond it `put` refuses with RuntimeFailure (never a
    silent drop: the caller sees it and decides). `max_bytes` caps the database size - the outbox cannot fill the
    SD card - and a put past it fails like a full disk does: RuntimeFailure, every earlier message kept.
    One process at a time may open a file (a lock file next to it enforces this).

    A file deleted or replaced while open (its inode or device changed) is noticed at the next put and within a
    second by the publisher: the outbox recreates it, logs an error saying how many pending messages were lost with
    the old file, and counts them in `stats()["lost"]`.
    """

    def __init__(self, path: str | Path, mqtt: MqttConfig, *, qos: int = 1, max_pending: int | None = None,
                 max_bytes: int | None = None, max_inflight: int = 16, reconnect_min_s: float = 1.0,
                 reconnect_max_s: float = 60.0) -> None:
        """`max_inflight` messages may await their PUBACK at once (paho resends them in order after a reconnect).
        With qos=0 a message counts as delivered once written to the socket: no guarantee, as MQTT says."""
        if qos not in (0, 1, 2):
            raise InputError(f"MQTT QoS must be 0, 1 or 2, not {qos!r}")
        if max_inflight < 1:
            raise InputError(f"max_inflight must be at least 1, not {max_inflight}")
        self.path = Path(path)
        self.mqtt, self.qos, self.max_pending = mqtt, qos, max_pending
        self.max_inflight, self._max_bytes = max_inflight, max_bytes
        self._client = make_client(mqtt, "outbox")  # first: it raises if paho is missing, before anything is held
        self._lockfile = store.lock(self.path)
        try:
            # put's connection, then the publisher's
            self._db = store.connect(self.path, synchronous="FULL", max_bytes=max_bytes, create=True)
            self._pub_db = store.connect(self.path, synchronous="NORMAL", max_bytes=max_bytes, create=False)
            self._pending = store.count(self._db)
            self._identity = store.identity(self.path)
        except BaseException:
            self._release_lock()
            raise
        self._wlock = threading.Lock()  # serialises puts on their connection (and a recreation of the file)
        self._step_lock = threading.Lock()  # held by the publisher while it uses its connection
        self._cond = threading.Condition()  # guards everything below; the publisher sleeps on it
        self._dirty = True
        self._stopping = False
        self._connected = self._ever_connected = False
        self._stale = False  # a disconnect left messages in paho's queue: let paho resend them before new ones
        self._window: list[tuple[int, int]] = []  # (row id, mid) handed to paho, waiting for PUBACK, in order
        self._acked: set[int] = set()
        self._undeleted: list[int] = []  # acknowledged rows whose delete failed (full disk); retried
        self._retry_delete_at = 0.0
        self._last_sent = 0  # highest row id handed to paho; rows above it have not been sent by this process
        self._accepted = self._delivered = self._reconnects = self._connect_failures = self._dead = 0
        self._lost = self._replaced = 0  # messages lost with a deleted or replaced file, and how often it happened
        self._fails_in_row = 0
        self._last_error: str | None = None
        if self._pending:
            log.info("outbox %s: resuming delivery of %d pending message(s)", self.path, self._pending)

        self._client.max_inflight_messages_set(max_inflight)
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # paho doubles the wait after each failure
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s)
        self._client.loop_start()  # paho's network thread: connects, retries with back-off, resends unacked
        self._thread = threading.Thread(target=self._run, name=f"outbox-{self.path.name}", daemon=True)
        self._thread.start()

    # ---- storage -------------------------------------------------------------------------------------------

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing the descriptor drops the flock
            self._lockfile = None

    def _recover_if_replaced(self) -> None:
        """Recreates the file when it is no longer the one opened (deleted, or another file in its place), and says
        loudly how many pending messages went with it. The caller holds _wlock."""
        now = store.identity(self.path)
        if now == self._identity:
            return
        with self._step_lock:  # the publisher is between steps
            with self._cond:
                lost = self._pending - len(self._window)  # those handed to paho may still go out
            for db in (self._db, self._pub_db):
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = store.connect(self.path, synchronous="FULL", max_bytes=self._max_bytes, create=True)
            self._pub_db = store.connect(self.path, synchronous="NORMAL", max_bytes=self._max_bytes,
                                         create=False)
            self._identity = store.identity(self.path)
            pending = store.count(self._db)
            what = "was deleted" if now is None else "was replaced by another file"
            with self._cond:
                self._window, self._acked, self._undeleted, self._last_sent = [], set(), [], 0
                self._pending, self._lost, self._replaced = pending, self._lost + lost, self._replaced + 1
                self._last_error = f"the outbox file {what} while open: {lost} pending message(s) lost"
                self._dirty = True
                self._cond.notify_all()
        log.error("outbox %s %s while edgepilot had it open: %d pending message(s) were lost with it; using a new "
                  "file%s", self.path, what, lost, f" ({pending} message(s) found in it)" if pending else "")

    # ---- the producer side ---------------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes | str, event_id: str | None = None) -> str:
        """Stores a message durably and returns its event_id (a new uuid4 hex when None). A message whose
        event_id is still pending is ignored, so retrying a put is safe. Raises InputError for a topic or payload
        MQTT cannot carry, RuntimeFailure when the message cannot be stored (disk full, `max_bytes` or
        `max_pending` reached, file unwritable); messages accepted earlier are never affected."""
        return self.put_many([(topic, payload, event_id)])[0]

    def put_many(self, messages: Iterable[tuple[str, bytes | str, str | None]]) -> list[str]:
        """`put` for several (topic, payload, event_id) at once, in one transaction - one fsync, which matters on
        SD cards - and atomically: all are accepted or, with the error, none."""
        rows = [store.checked(*m) for m in messages]
        with self._wlock:
            if self.max_pending is not None and self._pending + len(rows) > self.max_pending:
                raise RuntimeFailure(
                    f"MQTT outbox {self.path} is full: {self._pending} messages wait for the broker "
                    f"(max_pending={self.max_pending}); {len(rows)} new one(s) not accepted",
                    hint=f"check that the broker {self.mqtt.host}:{self.mqtt.port} is reachable, or raise "
                         "max_pending; every message accepted earlier is kept and will be delivered")
            if self._db is None:
                raise RuntimeFailure(f"MQTT outbox {self.path} is closed")
            self._recover_if_replaced()
            now = time.time()
            try:
                inserted = store.insert(self._db, rows, now)  # one transaction: all are stored, or none
            except sqlite3.Error as e:
                full = "full" in str(e).lower()
                raise RuntimeFailure(
                    f"MQTT outbox {self.path} cannot store the message: {e}",
                    hint=("free disk space (or raise max_bytes)" if full else "check the file and its directory")
                    + "; every message accepted earlier is kept and will be delivered") from e
        with self._cond:
            self._pending += inserted
            self._accepted += inserted
            self._dirty = True
            self._cond.notify_all()
        return [eid for _, _, eid in rows]

    def pending(self) -> int:
        with self._cond:
            return self._pending

    def flush(self, timeout: float) -> bool:
        """Waits until every accepted message has been acknowledged by the broker; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"accepted": self._accepted, "delivered": self._delivered, "pending": self._pending,
                    "in_flight": len(self._window), "connected": self._connected, "reconnects": self._reconnects,
                    "connect_failures": self._connect_failures, "dead_letters": self._dead,
                    "lost": self._lost, "replaced": self._replaced, "last_error": self._last_error}

    def close(self, timeout: float = 5.0) -> None:
        """Stops delivery; messages not yet acknowledged stay in the file and go out when it is opened again."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("outbox %s: publisher did not stop within %.1f s", self.path, timeout)
        try:
            self._client.disconnect()
        except Exception as e:  # closing must always finish
            log.debug("outbox disconnect: %s", e)
        self._client.loop_stop()
        alive = self._thread.is_alive()
        with self._wlock:
            for db in (self._db, None if alive else self._pub_db):  # never pull a connection from under a thread
                if db is not None:
                    db.close()
            self._db = self._pub_db = None  # type: ignore[assignment]
        self._release_lock()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- paho callbacks (network thread): record and wake, never raise -------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._last_error = f"broker {self.mqtt.host}:{self.mqtt.port} refused the connection: {reason_code}"
                log.warning("outbox: %s", self._last_error)
                return
            if self._ever_connected:
                self._reconnects += 1
            self._connected = self._ever_connected = True
            self._fails_in_row = 0
            self._dirty = True
            self._cond.notify_all()
        log.info("outbox connected to %s:%d (%d pending)", self.mqtt.host, self.mqtt.port, self._pending)

    def _on_connect_fail(self, client, userdata) -> None:
        with self._cond:
            self._connect_failures += 1
            self._fails_in_row += 1
            self._last_error = f"cannot connect to the broker {self.mqtt.host}:{self.mqtt.port}"
            n = self._fails_in_row
        if n == 1 or n % 20 == 0:  # the first, then now and then: a long outage must not flood the log
            log.warning("outbox: %s (attempt %d); %d message(s) kept on disk", self._last_error, n, self._pending)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            # even with an empty window: a publish may be between paho and the window right now
            self._stale = True
            if not self._stopping:
                self._last_error = f"disconnected from {self.mqtt.host}:{self.mqtt.port}: {reason_code}"
            self._cond.notify_all()
        if was and not self._stopping:
            log.warning("outbox: %s; will reconnect and resend what was not acknowledged", self._last_error)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if getattr(reason_code, "is_failure", False):  # MQTT 5 brokers may refuse a message; 3.1.1 cannot say so
            log.warning("outbox: broker refused message %d: %s", mid, reason_code)
        with self._cond:
            self._acked.add(mid)
            self._dirty = True
            self._cond.notify_all()

    # ---- the publisher thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                if self._stopping:
                    break
            try:
                with self._wlock:
                    self._recover_if_replaced()
                with self._step_lock:
                    busy = self._step()
                backoff = 0.5
            except Exception as e:  # the publisher must outlive any one bad moment
                with self._cond:
                    self._last_error = f"outbox publisher: {e}"
                log.exception("outbox publisher error; retrying in %.1f s", backoff)
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            with self._cond:
                if not busy and not self._dirty and not self._stopping:
                    self._cond.wait(0.5)
                self._dirty = False
        try:  # record what was acknowledged while stopping, so it is not sent again next time
            with self._step_lock:
                self._step(send=False)
        except Exception as e:
            log.debug("outbox final step: %s", e)

    def _step(self, send: bool = True) -> bool:
        """Deletes acknowledged rows, then hands the next rows in id order to paho. True when there may be more."""
        with self._cond:
            done = [(rid, mid) for rid, mid in self._window if mid in self._acked]
        ids = self._undeleted + [rid for rid, _ in done]
        if ids and (done or not send or time.monotonic() >= self._retry_delete_at):
            self._record_delivered(ids)
        with self._cond:
            if done:
                mids = {mid for _, mid in done}
                self._window = [(rid, mid) for rid, mid in self._window if mid not in mids]
                self._acked -= mids
                self._pending -= len(done)
                self._delivered += len(done)
                self._cond.notify_all()
            if not self._window:
                # every mid handed to paho was registered in the window, so no acknowledgement is still awaited;
                # clearing keeps a mid reused after 65535 messages from matching a stray old one
                self._acked.clear()
                self._stale = False
            room = (self.max_inflight - len(self._window)
                    if send and self._connected and not self._stale and not self._stopping else 0)
        if room <= 0:
            return bool(done)
        rows = store.after(self._pub_db, self._last_sent, room)
        for rid, eid, topic, payload in rows:
            try:
                info = self._client.publish(topic, payload, qos=self.qos)
            except ValueError as e:  # only a row not written by put() can get here; it must not block the queue
                self._dead_letter(rid, str(e))
                self._last_sent = rid
                continue
            if info.rc not in (_MQTT_OK, _MQTT_NO_CONN):  # NO_CONN: paho queued it and sends it on reconnect
                log.warning("outbox: paho did not queue message %s (rc=%s); will retry", eid, info.rc)
                return False
            with self._cond:
                self._window.append((rid, info.mid))
            self._last_sent = rid
        return bool(done) or len(rows) == room

    def _record_delivered(self, ids: list[int]) -> None:
        """Deletes acknowledged rows. When that fails (a full disk needs room even to delete, WAL frames being
        appended) delivery goes on: the ids are remembered and the delete retried, and a restart in between only
        re-sends those messages - duplicates, never losses."""
        try:
            store.delete(self._pub_db, ids)
        except sqlite3.Error as e:
            if not self._undeleted:
                log.warning("outbox %s: cannot record deliveries (%s); delivering on, %d will be re-sent if "
                            "edgepilot restarts before the disk has room again", self.path, e, len(ids))
            self._undeleted = ids
            self._retry_delete_at = time.monotonic() + 1.0
            with self._cond:
                self._last_error = f"cannot record deliveries in {self.path}: {e}"
            return
        if self._undeleted:
            log.info("outbox %s: deliveries recorded again", self.path)
        self._undeleted = []

    def _dead_letter(self, rid: int, error: str) -> None:
        log.error("outbox: message %d cannot be published (%s); moved to the dead_letters table", rid, error)
        store.dead_letter(self._pub_db, rid, error)
        with self._cond:
            self._pending -= 1
            self._dead += 1
            self._last_error = error
            self._cond.notify_all()
