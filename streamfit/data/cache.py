"""The persistent splat cache: packed float16 splats keyed by (sample id, settings hash).

Why SQLite (WAL mode) rather than a file format of our own or LMDB:

- a commit is atomic and survives the process being killed at any instant (the write-ahead
  log is replayed or ignored on the next open), which is exactly the crash model of a
  training job; ``synchronous=NORMAL`` gives that up only on power loss;
- many readers and one writer at a time across threads *and* processes on one machine with
  file locking and a busy timeout, so the ranks of a node share one cache;
- it ships with Python (no extra dependency), rows are plain typed columns (no pickle), and a
  size bound with least-recently-used eviction is a pair of SQL statements; LMDB would need a
  fixed map size and its own eviction bookkeeping.

Each row also stores a CRC32 of its blob, checked on every read: a row that does not verify
is deleted and treated as a miss, never returned. The cache must live on a local file
system (SQLite locking is unreliable over NFS).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamfit.splats import BYTES_PER_SPLAT

logger = logging.getLogger("streamfit.data")

DB_NAME = "splats.sqlite"
SCHEMA_VERSION = 1
# Eviction frees down to this fraction of the bound, so a full cache does not evict on
# every write.
LOW_WATER = 0.9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS splats (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    settings TEXT NOT NULL,
    params BLOB NOT NULL,
    crc INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    used INTEGER NOT NULL,
    UNIQUE (key, settings)
);
CREATE INDEX IF NOT EXISTS splats_used ON splats (used);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), nbytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS splats_add AFTER INSERT ON splats
    BEGIN UPDATE totals SET nbytes = nbytes + NEW.nbytes WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS splats_remove AFTER DELETE ON splats
    BEGIN UPDATE totals SET nbytes = nbytes - OLD.nbytes WHERE id = 0; END;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# SQLite's default limit on bound parameters is 999 in older builds
_MAX_VARS = 900


@dataclass
class CacheCounters:
    """What this process saw: lookups that hit / missed, entries written, evicted, and rows
    that failed their checksum (deleted, counted as misses)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    evictions: int = 0
    corrupt: int = 0


class SplatCache:
    """Packed splats (``16 * n`` bytes of little-endian float16, see
    :func:`streamfit.splats.pack_params`) stored under ``directory/splats.sqlite``.

    ``max_bytes`` bounds the stored splat bytes (the database file is a little larger and
    reuses freed pages rather than shrinking). Safe to use from several threads and
    processes at once; each thread and process opens its own connection.
    """

    def __init__(
        self, directory: str | Path, max_bytes: int, busy_timeout_s: float = 120.0
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        self.max_bytes = int(max_bytes)
        self.busy_timeout_s = busy_timeout_s
        self.counters = CacheCounters()
        self._counter_lock = threading.Lock()
        self._local = threading.local()
        conn = self._conn()
        with conn:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: cache schema {row[0]}, this code reads {SCHEMA_VERSION}"
                )

    def _conn(self) -> sqlite3.Connection:
        # one connection per thread and per process: sqlite3 connections must not cross
        # threads, and one inherited through fork would share locks with the parent
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _count(self, **deltas: int) -> None:
        with self._counter_lock:
            for name, value in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + value)

    # ------------------------------------------------------------------ lookups
    def get_many(self, keys: Sequence[str], settings: str) -> list[bytes | None]:
        """Packed splats of each key under ``settings`` (None where absent); refreshes the
        hits' recency for eviction and counts hits and misses."""
        conn = self._conn()
        found: dict[str, tuple[int, bytes]] = {}
        bad: list[int] = []
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _MAX_VARS):
            chunk = unique[i : i + _MAX_VARS]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT id, key, params, crc FROM splats WHERE settings = ? AND key IN ({marks})",
                (settings, *chunk),
            ).fetchall()
            for row_id, key, blob, crc in rows:
                if _valid(blob, crc):
                    found[key] = (row_id, blob)
                else:
                    bad.append(row_id)
        if found or bad:
            with _write(conn):
                if bad:
                    logger.warning(
                        "splat cache: %d entries failed their checksum; deleted", len(bad)
                    )
                    conn.executemany("DELETE FROM splats WHERE id = ?", [(b,) for b in bad])
                now = time.time_ns()
                conn.executemany(
                    "UPDATE splats SET used = ? WHERE id = ?",
                    [(now, rid) for rid, _ in found.values()],
                )
        out = [found[k][1] if k in found else None for k in keys]
        hits = sum(b is not None for b in out)
        self._count(hits=hits, misses=len(out) - hits, corrupt=len(bad))
        return out

    def put_many(self, items: Sequence[tuple[str, bytes]], settings: str) -> int:
        """Store ``(key, packed splats)`` pairs in one transaction (an existing entry is kept:
        another rank fitted the same sample with the same settings), then evict down to the
        bound if it is exceeded. Returns the number of entries evicted."""
        for key, blob in items:
            if len(blob) % BYTES_PER_SPLAT:
                raise ValueError(f"{key}: {len(blob)} bytes is not a whole number of splats")
        conn = self._conn()
        now = time.time_ns()
        with _write(conn):
            cursor = conn.executemany(
                "INSERT INTO splats (key, settings, params, crc, nbytes, used) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key, settings) DO NOTHING",
                [(k, settings, b, zlib.crc32(b), len(b), now) for k, b in items],
            )
            written = cursor.rowcount  # rows inserted here; trigger updates are not counted
            evicted = self._evict(conn)
        self._count(writes=written, evictions=evicted)
        if evicted:
            logger.info(
                "splat cache: evicted %d entries to stay under %d bytes", evicted, self.max_bytes
            )
        return evicted

    def _evict(self, conn: sqlite3.Connection) -> int:
        total = conn.execute("SELECT nbytes FROM totals WHERE id = 0").fetchone()[0]
        if total <= self.max_bytes:
            return 0
        excess = total - int(self.max_bytes * LOW_WATER)
        victims: list[int] = []
        freed = 0
        for row_id, nbytes in conn.execute("SELECT id, nbytes FROM splats ORDER BY used, id"):
            victims.append(row_id)
            freed += nbytes
            if freed >= excess:
                break
        conn.executemany("DELETE FROM splats WHERE id = ?", [(v,) for v in victims])
        return len(victims)

    # ------------------------------------------------------------------ inspection
    def total_bytes(self) -> int:
        """Stored splat bytes (all settings)."""
        return self._conn().execute("SELECT nbytes FROM totals WHERE id = 0").fetchone()[0]

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM splats").fetchone()[0]

    def entries(self, settings: str | None = None) -> Iterator[tuple[str, str, bytes]]:
        """``(key, settings, packed splats)`` of every entry that verifies (optionally of one
        settings hash), in insertion order."""
        query = "SELECT key, settings, params, crc FROM splats"
        args: tuple[str, ...] = ()
        if settings is not None:
            query, args = query + " WHERE settings = ?", (settings,)
        for key, entry_settings, blob, crc in self._conn().execute(query + " ORDER BY id", args):
            if _valid(blob, crc):
                yield key, entry_settings, blob

    def close(self) -> None:
        """Close this thread's connection (others close when their thread or process ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class CacheProbe:
    """Read-only "is this id cached under these settings?" for decode workers: picklable
    (workers may be processes), one connection per thread and process, opened lazily."""

    def __init__(self, path: str | Path, settings: str) -> None:
        self.path, self.settings = Path(path).resolve(), settings
        self._local = threading.local()

    def __contains__(self, cache_id: str) -> bool:
        try:
            conn = getattr(self._local, "conn", None)
            if conn is None or self._local.pid != os.getpid():
                conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=60.0)
                self._local.conn, self._local.pid = conn, os.getpid()
            query = "SELECT 1 FROM splats WHERE key = ? AND settings = ?"
            return conn.execute(query, (cache_id, self.settings)).fetchone() is not None
        except sqlite3.Error:
            return False  # only an optimisation: when unsure, decode the image

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "settings": self.settings}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"], state["settings"])  # type: ignore[misc, arg-type]


def _valid(blob: bytes, crc: int) -> bool:
    return len(blob) % BYTES_PER_SPLAT == 0 and zlib.crc32(blob) == crc


class _write:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error): takes the write lock up front,
    so two writers queue on the busy timeout instead of failing to upgrade a read lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
