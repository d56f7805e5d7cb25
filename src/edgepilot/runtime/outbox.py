"""A durable SQLite outbox in front of MQTT: a message is accepted once it is on disk and leaves, in order, QoS 1."""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgepilot.errors import InputError, RuntimeFailure
from edgepilot.runtime.mqtt import MqttConfig, make_client

try:  # POSIX only; elsewhere two processes sharing one outbox would only cause duplicates, not losses
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_APP_ID = 0x45504F42  # "EPOB": marks a file as an edgepilot outbox, so we never write into someone else's database
_MQTT_OK, _MQTT_NO_CONN = 0, 4  # paho's MQTT_ERR_SUCCESS and MQTT_ERR_NO_CONN
_MAX_PAYLOAD = 268_435_455  # the MQTT limit on a packet's remaining length
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the delivery order; AUTOINCREMENT never reuses an id
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    error TEXT NOT NULL
);
"""


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
        self._lockfile = self._lock_file()
        try:
            self._db = self._open(synchronous="FULL", max_bytes=max_bytes, create=True)  # put's connection
            self._pub_db = self._open(synchronous="NORMAL", max_bytes=max_bytes, create=False)  # the publisher's
            self._pending = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            self._identity = self._file_identity()
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

    def _lock_file(self) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(f"{self.path}.lock", "a+")  # held open for the outbox's lifetime: the flock lives on it
        except OSError as e:
            raise RuntimeFailure(f"cannot create the MQTT outbox {self.path}: {e}",
                                 hint="point the sink's `outbox` at a writable directory") from e
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise RuntimeFailure(f"the MQTT outbox {self.path} is already open in another process or sink",
                                     hint="give each pipeline its own `outbox` file") from None
        return f

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing the descriptor drops the flock
            self._lockfile = None

    def _open(self, *, synchronous: str, max_bytes: int | None, create: bool) -> sqlite3.Connection:
        corrupt = ("the file is not a readable edgepilot outbox: move it aside (edgepilot then starts a new, empty "
                   "one) and inspect it with the sqlite3 tool")
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as e:
            raise RuntimeFailure(f"cannot open the MQTT outbox {self.path}: {e}",
                                 hint="check that the directory exists and is writable") from e
        try:
            if create:
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise RuntimeFailure(f"the MQTT outbox {self.path} is corrupt (sqlite quick_check failed)",
                                         corrupt)
                app_id = db.execute("PRAGMA application_id").fetchone()[0]
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and app_id != _APP_ID:
                    raise RuntimeFailure(f"{self.path} is an SQLite database but not an edgepilot MQTT outbox",
                                         hint="point the sink's `outbox` at a file of its own")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA journal_size_limit=4194304")  # a burst must not leave a huge WAL file behind
            if max_bytes is not None:
                page = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={max(8, int(max_bytes) // page)}")
            if create and not {"outbox", "dead_letters"} <= tables:  # writes nothing if it exists: the disk may be full
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA application_id={_APP_ID}")
        except RuntimeFailure:
            db.close()
            raise
        except sqlite3.DatabaseError as e:
            db.close()
            if isinstance(e, sqlite3.OperationalError):  # the file is fine, the system is not
                full = "full" in str(e).lower()
                raise RuntimeFailure(f"cannot open the MQTT outbox {self.path}: {e}",
                                     hint="free disk space" if full else "check the file's permissions") from e
            raise RuntimeFailure(f"the MQTT outbox {self.path} is corrupt: {e}", corrupt) from e
        return db

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _recover_if_replaced(self) -> None:
        """Recreates the file when it is no longer the one opened (deleted, or another file in its place), and says
        loudly how many pending messages went with it. The caller holds _wlock."""
        now = self._file_identity()
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
            self._db = self._open(synchronous="FULL", max_bytes=self._max_bytes, create=True)
            self._pub_db = self._open(synchronous="NORMAL", max_bytes=self._max_bytes, create=False)
            self._identity = self._file_identity()
            pending = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
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
        rows = [_checked(*m) for m in messages]
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
                self._db.execute("BEGIN IMMEDIATE")
                inserted = sum(self._db.execute(
                    "INSERT OR IGNORE INTO outbox (event_id, topic, payload, created) VALUES (?, ?, ?, ?)",
                    (eid, topic, body, now)).rowcount for topic, body, eid in rows)
                self._db.execute("COMMIT")  # with synchronous=FULL, on stable storage when this returns
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
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
        rows = self._pub_db.execute("SELECT id, event_id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (self._last_sent, room)).fetchall()
        if rows:
            try:  # bookkeeping only: a full disk must not hold up delivery
                marks = ",".join("?" * len(rows))
                self._pub_db.execute(f"UPDATE outbox SET attempts = attempts + 1 WHERE id IN ({marks})",
                                     [r[0] for r in rows])
            except sqlite3.Error as e:
                log.debug("outbox: attempts not recorded: %s", e)
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
            self._pub_db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))})", ids)
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
        db = self._pub_db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO dead_letters SELECT id, event_id, topic, payload, created, ? FROM outbox "
                       "WHERE id = ?", (error, rid))
            db.execute("DELETE FROM outbox WHERE id = ?", (rid,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        with self._cond:
            self._pending -= 1
            self._dead += 1
            self._last_error = error
            self._cond.notify_all()


def _checked(topic: str, payload: bytes | str, event_id: str | None) -> tuple[str, bytes, str]:
    """Rejects, before it is accepted, what MQTT cannot carry: stored, it would block the queue forever."""
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic or "\0" in topic \
            or len(topic.encode()) > 65535:
        raise InputError(f"invalid MQTT topic for publishing: {topic!r}",
                         hint="a non-empty topic without the wildcards + and #")
    if isinstance(payload, str):
        body = payload.encode("utf-8")
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        body = bytes(payload)
    else:
        raise InputError(f"MQTT payload must be bytes or str, not {type(payload).__name__}")
    if len(body) > _MAX_PAYLOAD:
        raise InputError(f"MQTT payload of {len(body)} bytes is over the protocol limit of {_MAX_PAYLOAD}")
    eid = uuid.uuid4().hex if event_id is None else str(event_id)
    if not eid:
        raise InputError("event_id must not be empty")
    return topic, body, eid
