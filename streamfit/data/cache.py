"""The persistent splat cache: splat blobs (:mod:`streamfit.codec`) keyed by (sample id,
settings hash); the settings include the blobs' format.

Why SQLite (WAL mode) rather than a file format of our own or LMDB:

- a commit is atomic and survives the process being killed at any instant (the write-ahead
  log is replayed or ignored on the next open), which is exactly the crash model of a
  training job; ``synchronous=NORMAL`` gives that up only on power loss;
- many readers and one writer at a time across threads *and* processes on one machine with
  file locking and a busy timeout, so the ranks of a node share one cache;
- it ships with Python (no extra dependency), rows are plain typed columns (no pickle), and a
  size bound with least-recently-used eviction is a pair of SQL statements; LMDB would need a
  fixed map size and its own eviction bookkeeping.

Each row also stores a CRC32 of its blob, checked on every read together with the blob's own
header (:func:`streamfit.codec.info`): a row that does not verify is deleted and treated as a
miss, never returned. The cache must live on a local file
system (SQLite locking is unreliable over NFS).

The cache is an optimisation, so damage to it costs fitting time, never the run: a file that
does not open as a store is moved aside (the warning names the new path) and a fresh store is
created; a file deleted or emptied during a run is started afresh (one warning); a read-only
store serves hits and keeps nothing new (said once); and a store that fails
``max_failures`` times in a row is switched off for the rest of the run (one warning). The
busy timeout is short: writes are millisecond transactions, so a lock held for seconds means
a wedged store, not a busy one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamfit import codec

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
    """Splat blobs (:func:`streamfit.codec.encode`) stored under ``directory/splats.sqlite``.

    ``max_bytes`` bounds the stored splat bytes (the database file is a little larger and
    reuses freed pages rather than shrinking). Safe to use from several threads and
    processes at once; each thread and process opens its own connection.

    The streaming graph calls :meth:`lookup` and :meth:`store`, which never raise a database
    error (see the module docstring); :meth:`get_many` and :meth:`put_many` are the raw
    operations. ``enabled`` turns False when the store is switched off; ``read_only`` is True
    for a store this process may not write.
    """

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int,
        busy_timeout_s: float = 5.0,
        max_failures: int = 3,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.max_bytes = int(max_bytes)
        self.busy_timeout_s, self.max_failures = busy_timeout_s, max_failures
        self.counters = CacheCounters()
        self.enabled, self.read_only = True, False
        self._counter_lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._local = threading.local()
        self._generation = 0  # bumped when the file is replaced: threads reconnect
        self._identity: tuple[int, int] | None = None
        self._failures: Counter[str] = Counter()  # failures in a row, by operation
        self._restarts = 0
        self._open()

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        """Open or create the store; move a damaged file aside; fall back to read-only, or
        switch off when neither works."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._switch_off(f"cannot create its folder ({err})")
            return
        if not _can_write(self.directory) or (self.path.exists() and not _can_write(self.path)):
            if not self.path.is_file():
                self._switch_off("its folder is read-only")
                return
            self.read_only = True
            logger.warning(
                "splat cache %s is read-only: serving its entries, keeping no new fits",
                self.path,
            )
        else:
            _remove_stale_shm(self.path)
            problem = _file_problem(self.path)
            if problem and not self._move_aside(problem):
                return
        for attempt in range(2):
            try:
                self._init_store()
                return
            except sqlite3.OperationalError as err:  # locked, cannot open: not damage
                self._switch_off(str(err))
                return
            except sqlite3.DatabaseError as err:
                if self.read_only or attempt:
                    self._switch_off(f"{err}; it cannot be replaced")
                    return
                if not self._move_aside(str(err)):
                    return

    def _init_store(self) -> None:
        """Create the schema (or check it, read-only) and remember which file this is."""
        conn = self._conn()
        if self.read_only:
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        else:
            with conn:
                conn.executescript(_SCHEMA)
                row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: cache schema {row[0]}, this code reads {SCHEMA_VERSION}"
            )
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def _move_aside(self, problem: str) -> bool:
        """Rename a damaged store (and its -wal/-shm) to ``*.damaged-<time>``, so the next
        connection creates a fresh one; False (store switched off) when it cannot be moved."""
        self.close()
        self._generation += 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{DB_NAME}.damaged-{stamp}-{os.getpid()}")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{aside}{suffix}")
        except OSError as err:
            self._switch_off(f"{problem}, and it cannot be moved aside: {err}")
            return False
        logger.warning(
            "splat cache %s does not open (%s): moved it to %s and started a fresh one",
            self.path,
            problem,
            aside,
        )
        return True

    def _switch_off(self, why: str) -> None:
        if self.enabled:
            self.enabled = False
            logger.warning(
                "splat cache %s switched off for the rest of this run (%s): every sample "
                "is fitted and nothing is kept",
                self.path,
                why,
            )

    def _conn(self) -> sqlite3.Connection:
        # one connection per thread and per process: sqlite3 connections must not cross
        # threads, and one inherited through fork would share locks with the parent
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or local.generation != self._generation:
            if conn is not None and local.pid == os.getpid():
                conn.close()
            if self.read_only:
                # immutable: no -shm or lock files, which a read-only folder could not hold
                # and a writable one would keep read-only after the store is writable again
                uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            local.conn, local.pid, local.generation = conn, os.getpid(), self._generation
        return conn

    def _check_file(self) -> None:
        """Start afresh (one warning) when the file was deleted or emptied under a running
        store; reconnect when another process replaced it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_size and (st.st_dev, st.st_ino) == self._identity:
            return
        with self._file_lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_size and (st.st_dev, st.st_ino) == self._identity:
                return  # another thread handled it
            self._generation += 1
            if st is not None and st.st_size:
                self._identity = (st.st_dev, st.st_ino)  # a fresh store another process made
                return
            self._restarts += 1
            if self._restarts > self.max_failures:
                self._switch_off(f"deleted or emptied {self._restarts} times")
                return
            what = "deleted" if st is None else "emptied"
            logger.warning(
                "splat cache %s was %s during the run: starting a fresh one (entries "
                "kept before are gone)",
                self.path,
                what,
            )
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._init_store()

    def _count(self, **deltas: int) -> None:
        with self._counter_lock:
            for name, value in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + value)

    # ------------------------------------------------------------------ failure-proof use
    def lookup(self, keys: Sequence[str], settings: str) -> list[bytes | None]:
        """:meth:`get_many`, with every key a miss when the store is off or fails."""
        if self.enabled:
            try:
                self._check_file()
                if self.enabled:
                    found = self.get_many(keys, settings)
                    self._failures["lookup"] = 0
                    return found
            except (sqlite3.Error, OSError) as err:
                self._failed("lookup", err)
        self._count(misses=len(keys))
        return [None] * len(keys)

    def store(self, items: Sequence[tuple[str, bytes]], settings: str) -> int:
        """:meth:`put_many` (returns entries evicted); nothing is kept, and 0 returned, when
        the store is off, read-only or fails."""
        if not self.enabled or self.read_only:
            return 0
        try:
            self._check_file()
            evicted = self.put_many(items, settings) if self.enabled else 0
        except (sqlite3.Error, OSError) as err:
            if "readonly" in str(err):
                self.read_only = True
                self._generation += 1
                logger.warning(
                    "splat cache %s is read-only (%s): serving its entries, keeping no new fits",
                    self.path,
                    err,
                )
            else:
                self._failed("write", err)
            return 0
        self._failures["write"] = 0
        return evicted

    def _failed(self, what: str, err: Exception) -> None:
        self._failures[what] += 1
        if self._failures[what] >= self.max_failures:
            self._switch_off(f"{what} failed {self._failures[what]} times in a row: {err}")
        else:
            logger.warning("splat cache %s %s failed (%s); fitting instead", self.path, what, err)

    def probe(self, settings: str) -> CacheProbe:
        """A :class:`CacheProbe` of this store for the decode workers."""
        return CacheProbe(self.path, settings, immutable=self.read_only)

    # ------------------------------------------------------------------ lookups
    def get_many(self, keys: Sequence[str], settings: str) -> list[bytes | None]:
        """The splat blob of each key under ``settings`` (None where absent); refreshes the
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
        if (found or bad) and not self.read_only:
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
        """Store ``(key, splat blob)`` pairs in one transaction (an existing entry is kept:
        another rank fitted the same sample with the same settings), then evict down to the
        bound if it is exceeded. Returns the number of entries evicted. A blob that is not a
        splat blob is a ``ValueError`` (nothing is stored)."""
        for key, blob in items:
            try:
                codec.info(blob)
            except codec.CodecError as err:
                raise ValueError(f"{key}: not a splat blob ({err})") from None
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
        """``(key, settings, splat blob)`` of every entry that verifies (optionally of one
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
    (workers may be processes), one connection per thread and process, opened lazily and
    reopened when the file is replaced. Only an optimisation: a busy, damaged or missing
    store answers "no" at once, and the image is decoded."""

    def __init__(self, path: str | Path, settings: str, immutable: bool = False) -> None:
        self.path, self.settings, self.immutable = Path(path).resolve(), settings, immutable
        self._local = threading.local()

    def __contains__(self, cache_id: str) -> bool:
        try:
            st = os.stat(self.path)
            local = self._local
            conn = getattr(local, "conn", None)
            if conn is None or local.pid != os.getpid() or local.ino != st.st_ino:
                # a read-only store is opened immutable (see SplatCache._conn)
                uri = f"{self.path.as_uri()}?mode=ro" + ("&immutable=1" if self.immutable else "")
                conn = sqlite3.connect(uri, uri=True, timeout=0.05)
                local.conn, local.pid, local.ino = conn, os.getpid(), st.st_ino
            query = "SELECT 1 FROM splats WHERE key = ? AND settings = ?"
            return conn.execute(query, (cache_id, self.settings)).fetchone() is not None
        except (OSError, sqlite3.Error):
            return False

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "settings": self.settings, "immutable": self.immutable}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(**state)  # type: ignore[misc, arg-type]


def _can_write(path: Path) -> bool:
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def _remove_stale_shm(path: Path) -> None:
    """A ``-shm`` left read-only (by a read-only open of an earlier run) would make every
    connection fail; no writer can be using it, so it goes."""
    shm = Path(f"{path}-shm")
    if shm.exists() and not _can_write(shm):
        shm.unlink()
        logger.warning("splat cache: removed the stale read-only %s", shm)


def _file_problem(path: Path) -> str:
    """Why ``path`` cannot be a whole SQLite store, from its 100-byte header ('' when it may
    be): not SQLite at all, or shorter than the pages its header counts (cut short)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(100)
    except OSError:
        return ""  # absent (a fresh store), or not a file: opening it will say why
    if size == 0:
        return ""  # SQLite's empty database
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return "not an SQLite file"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        return ""  # a live writer may be checkpointing: the file can grow behind its header
    # the header's page count is valid only when its change counters agree
    if header[24:28] == header[92:96] and size < pages * page_size:
        return f"cut short: {size} of {pages * page_size} bytes"
    return ""


def _valid(blob: bytes, crc: int) -> bool:
    if zlib.crc32(blob) != crc:
        return False
    try:
        codec.info(blob)
    except codec.CodecError:
        return False
    return True


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
