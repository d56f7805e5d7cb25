"""The outbox's SQLite file: its schema and mark, the one-process lock, opening and checking it, and the statements
that change it. `Outbox` (runtime/outbox.py) owns the connections and the locks around these."""
from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from edgepilot.errors import InputError, RuntimeFailure

try:  # POSIX only; elsewhere two processes sharing one outbox would only cause duplicates, not losses
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

APP_ID = 0x45504F42  # "EPOB": marks a file as an edgepilot outbox, so we never write into someone else's database
MAX_PAYLOAD = 268_435_455  # the MQTT limit on a packet's remaining length
SCHEMA = """
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


def lock(path: Path) -> IO[str]:
    """The open lock file next to `path`, holding an exclusive flock: one process (and one sink) per outbox."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(f"{path}.lock", "a+")  # held open for the outbox's lifetime: the flock lives on it
    except OSError as e:
        raise RuntimeFailure(f"cannot create the MQTT outbox {path}: {e}",
                             hint="point the sink's `outbox` at a writable directory") from e
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RuntimeFailure(f"the MQTT outbox {path} is already open in another process or sink",
                                 hint="give each pipeline its own `outbox` file") from None
    return f


def connect(path: Path, *, synchronous: str, max_bytes: int | None, create: bool) -> sqlite3.Connection:
    """A connection to the outbox file; `create`: check the file is an outbox (or empty) and make its tables."""
    corrupt = ("the file is not a readable edgepilot outbox: move it aside (edgepilot then starts a new, empty "
               "one) and inspect it with the sqlite3 tool")
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    except sqlite3.Error as e:
        raise RuntimeFailure(f"cannot open the MQTT outbox {path}: {e}",
                             hint="check that the directory exists and is writable") from e
    try:
        if create:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise RuntimeFailure(f"the MQTT outbox {path} is corrupt (sqlite quick_check failed)",
                                     corrupt)
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and app_id != APP_ID:
                raise RuntimeFailure(f"{path} is an SQLite database but not an edgepilot MQTT outbox",
                                     hint="point the sink's `outbox` at a file of its own")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA journal_size_limit=4194304")  # a burst must not leave a huge WAL file behind
        if max_bytes is not None:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={max(8, int(max_bytes) // page)}")
        if create and not {"outbox", "dead_letters"} <= tables:  # writes nothing if it exists: the disk may be full
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA application_id={APP_ID}")
    except RuntimeFailure:
        db.close()
        raise
    except sqlite3.DatabaseError as e:
        db.close()
        if isinstance(e, sqlite3.OperationalError):  # the file is fine, the system is not
            full = "full" in str(e).lower()
            raise RuntimeFailure(f"cannot open the MQTT outbox {path}: {e}",
                                 hint="free disk space" if full else "check the file's permissions") from e
        raise RuntimeFailure(f"the MQTT outbox {path} is corrupt: {e}", corrupt) from e
    return db


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none: a change means it was deleted or replaced."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def count(db: sqlite3.Connection) -> int:
    """Messages waiting in the file."""
    return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def insert(db: sqlite3.Connection, rows: Iterable[tuple[str, bytes, str]], now: float) -> int:
    """Stores (topic, payload, event_id) rows in one transaction, ignoring event ids already waiting; how many were
    new. On an sqlite3.Error nothing is stored (rolled back) and the error is raised."""
    try:
        db.execute("BEGIN IMMEDIATE")
        inserted = sum(db.execute(
            "INSERT OR IGNORE INTO outbox (event_id, topic, payload, created) VALUES (?, ?, ?, ?)",
            (eid, topic, body, now)).rowcount for topic, body, eid in rows)
        db.execute("COMMIT")  # with synchronous=FULL, on stable storage when this returns
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return inserted


def after(db: sqlite3.Connection, last: int, limit: int) -> list[tuple[int, str, str, bytes]]:
    """The next (row id, event_id, topic, payload) rows after row `last`, in delivery order, marked as attempted."""
    rows = db.execute("SELECT id, event_id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                      (last, limit)).fetchall()
    if rows:
        try:  # bookkeeping only: a full disk must not hold up delivery
            marks = ",".join("?" * len(rows))
            db.execute(f"UPDATE outbox SET attempts = attempts + 1 WHERE id IN ({marks})", [r[0] for r in rows])
        except sqlite3.Error as e:
            log.debug("outbox: attempts not recorded: %s", e)
    return rows


def delete(db: sqlite3.Connection, ids: list[int]) -> None:
    """Removes delivered rows; raises sqlite3.Error when it cannot (a full disk needs room even to delete)."""
    db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))})", ids)


def dead_letter(db: sqlite3.Connection, rid: int, error: str) -> None:
    """Moves row `rid` to the dead_letters table, with why it cannot be published."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT INTO dead_letters SELECT id, event_id, topic, payload, created, ? FROM outbox "
                   "WHERE id = ?", (error, rid))
        db.execute("DELETE FROM outbox WHERE id = ?", (rid,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def checked(topic: str, payload: bytes | str, event_id: str | None) -> tuple[str, bytes, str]:
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
    if len(body) > MAX_PAYLOAD:
        raise InputError(f"MQTT payload of {len(body)} bytes is over the protocol limit of {MAX_PAYLOAD}")
    eid = uuid.uuid4().hex if event_id is None else str(event_id)
    if not eid:
        raise InputError("event_id must not be empty")
    return topic, body, eid
