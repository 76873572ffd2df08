"""The tar format of webdataset shards, walked so that damage costs only the bytes it touches.

:func:`iter_members` reads a tar stream member by member, as ``tarfile``'s stream mode does,
but where ``tarfile`` (and so webdataset) stops at the first bad header, it resyncs as GNU tar
does: it looks for the next valid header (``ustar`` magic and a right checksum) at *any* byte
offset, since inserted or lost bytes break the 512-byte alignment, and reports the bytes it
passed over as a :class:`DamagedBytes` stretch, with what can still be read of the headers in
it. Header fields are parsed by ``tarfile.TarInfo.frombuf``; only the walking is done here.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
MAGIC = b"ustar"
MAGIC_AT = 257  # the magic's offset in a header
CHECKSUM_FIELD = slice(148, 156)
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# headers whose data describes the next member (PAX extended header, GNU long name / link)
EXTENSION_TYPES = (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# an extension header's data above this is not believed (a damaged size, not a long name)
MAX_EXTENSION_BYTES = 1 << 20
# a damaged header whose stored checksum is this close to its bytes' sum lost a few bytes
# (one flipped byte moves the sum by at most 255); random bytes are never this close
CLOSE_CHECKSUM = 1024
ENCODING = ("utf-8", "surrogateescape")  # how tarfile decodes member names on Linux

logger = logging.getLogger("streamfit.data")

_READ_AHEAD = 8192
_SCAN_CHUNK = 1 << 20


@dataclass
class TarMember:
    """A regular file of the archive. ``offset``: its first header (PAX or GNU extension
    headers included); ``end``: the offset after its data and padding; ``data``: None when
    it was not read (``read`` said no: too large, or not wanted)."""

    name: str
    offset: int
    size: int
    data: bytes | None
    end: int


@dataclass
class DamagedBytes:
    """``[start, end)``: bytes holding no readable member, passed over up to the next valid
    header (``resumed``; ``next_name``: the name of the member there); else up to the
    stream's end.

    ``aligned``: the stretch starts with something recognisably a tar header (a damaged
    one), so the bytes before it are whole; otherwise the damage may have begun earlier,
    inside the data of the member before. ``names``: member names read from damaged headers
    in the stretch (their checksums fail, so a name may itself be damaged). ``extension``: it
    starts with a PAX / GNU extension header (whole or damaged), so its member was not lost
    unless the bytes around say so. ``truncated``: the stream ends inside a header or a
    member (``end`` is where it ends)."""

    start: int
    end: int
    detail: str
    aligned: bool
    names: list[str] = field(default_factory=list)
    resumed: bool = False
    next_name: str | None = None
    extension: bool = False
    truncated: bool = False

    @property
    def span(self) -> str:
        return f"bytes {self.start}-{self.end} ({self.end - self.start} bytes)"


@dataclass
class ArchiveEnd:
    """The archive ends at ``offset``: at its end-of-archive marker (``marker``; a marker cut
    short counts), or at a member boundary without one, where the stream was cut and what
    followed is unknown. ``trailing``: non-zero bytes after the marker (not part of any
    member)."""

    offset: int
    marker: bool
    trailing: int = 0


TarItem = TarMember | DamagedBytes | ArchiveEnd


def iter_members(
    stream: BinaryIO,
    offset: int = 0,
    read: Callable[[str, int], bool] | None = None,
    label: str = "",
) -> Iterator[TarItem]:
    """The members of a tar stream positioned at byte ``offset`` of its archive, in file order,
    with the damaged stretches between them, ending with an :class:`ArchiveEnd` or with a
    truncated :class:`DamagedBytes`. ``read(name, size)`` says whether a member's data is
    read (default: all); skipped data is seeked over where the stream can seek.

    A zero block is the end-of-archive marker only if no valid header follows it; otherwise
    the zeros are a damaged stretch like any other. A damaged PAX or GNU extension header
    whose data and next header are whole is read past with a warning (naming ``label``): its
    member is whole. Directories, links and PAX global headers are passed over silently."""
    return _Walker(_Source(stream, offset), read or (lambda name, size: True), label).items()


class _Walker:
    def __init__(self, source: _Source, read: Callable[[str, int], bool], label: str) -> None:
        self.src = source
        self.read = read
        self.label = label
        # whether the last member read ends in a non-zero byte: then zeros right after it
        # began in its padding or later, and did not touch it
        self.whole_tail = False

    def items(self) -> Iterator[TarItem]:
        src = self.src
        while True:
            start = src.pos
            block = src.peek(BLOCK)
            if len(block) < BLOCK:
                if not block.strip(b"\0"):
                    yield ArchiveEnd(start, marker=bool(block))
                else:
                    yield DamagedBytes(
                        start,
                        start + len(block),
                        f"the stream ends {len(block)} bytes into a tar header",
                        aligned=_partial_header_like(block),
                        truncated=True,
                    )
                return
            if not block.strip(b"\0"):
                found = src.scan(start + BLOCK)
                if found.info is None:
                    yield ArchiveEnd(start, marker=True, trailing=found.nonzero)
                    return
                yield DamagedBytes(
                    start,
                    src.pos,
                    "zero bytes inside the archive (an end-of-archive marker before more "
                    "members, or zeroed damage)",
                    aligned=self.whole_tail,
                    names=found.names,
                    resumed=True,
                    next_name=self._name_here(),
                )
                continue
            item = self._entry(start)
            if item is not None:
                yield item
            if isinstance(item, DamagedBytes) and not item.resumed:
                if not item.truncated:
                    # damage ran to the stream's end: whether the archive was whole is told
                    # by the end-of-archive marker (two zero blocks) closing the stream
                    yield ArchiveEnd(item.end, marker=src.tail_zeros >= 2 * BLOCK)
                return

    def _entry(self, start: int) -> TarMember | DamagedBytes | None:
        """The member whose headers begin at ``start`` (None for an entry that is no regular
        file), or the damaged stretch found there."""
        src = self.src
        overrides: dict[str, str] = {}
        self.whole_tail = False
        while True:
            at = src.pos
            block = src.peek(BLOCK)
            if len(block) < BLOCK:
                return self._cut(start, f"the stream ends inside the header at {at}")
            info = _header(block, scanning=False)
            size = _size(info, overrides)
            if info is None or size is None:
                recovered = self._damaged_extension(at, block)
                if recovered is None:
                    return self._damaged(start, at, block, overrides)
                overrides.update(recovered)
                continue
            if info.type in EXTENSION_TYPES and size > MAX_EXTENSION_BYTES:
                return self._damaged(start, at, block, overrides, f"a {size}-byte header")
            src.advance(BLOCK)
            if info.type in EXTENSION_TYPES:
                payload = src.take(size)
                if len(payload) < size:
                    return self._cut(start, f"the stream ends inside the header at {at}")
                src.skip(_padding(size))
                parsed = _extension(info.type, payload)
                if parsed is None:
                    return self._damaged(start, at, block, overrides, "unreadable PAX records")
                overrides.update(parsed)
                continue
            name = overrides.get("path", info.name)
            if info.type not in FILE_TYPES:
                src.skip(size + _padding(size))
                return None
            if self.read(name, size):
                data: bytes | None = src.take(size)
                tail = data[-1:]  # type: ignore[index]
                got = len(data)  # type: ignore[arg-type]
            else:  # its last byte is read all the same: what follows is judged by it
                data, got = None, src.skip(max(size - 1, 0))
                tail = src.take(1) if size else b""
                got += len(tail)
            self.whole_tail = tail not in (b"", b"\0")
            if got < size:
                return self._cut(
                    start, f"the stream ends inside member {name!r} ({got} of {size} bytes)", name
                )
            src.skip(_padding(size))
            return TarMember(name, start, size, data, at + BLOCK + size + _padding(size))

    def _damaged_extension(self, at: int, block: bytes) -> dict[str, str] | None:
        """Past a damaged PAX / GNU extension header whose data and next header are whole
        (its size field leads to a valid header): its records where they still parse (else
        none: the member keeps its plain tar name). None, without moving, for anything else."""
        kind = block[156:157]
        if kind not in EXTENSION_TYPES or not _header_like(block):
            return None
        try:
            size = tarfile.nti(block[124:136])
        except tarfile.HeaderError:
            return None
        if not 0 <= size <= MAX_EXTENSION_BYTES:
            return None
        after = BLOCK + size + _padding(size)
        ahead = self.src.peek(after + BLOCK)
        if _header(ahead[after:], scanning=True) is None:
            return None
        records = _extension(kind, ahead[BLOCK : BLOCK + size])
        self.src.advance(after)
        logger.warning(
            "%s: a damaged tar extension header at byte %d; the member after it is whole%s",
            self.label or "tar stream",
            at,
            "" if records is not None else " (read under its plain tar name)",
        )
        return records or {}

    def _cut(self, start: int, detail: str, name: str | None = None) -> DamagedBytes:
        return DamagedBytes(
            start, self.src.pos, detail, True, [name] if name else [], truncated=True
        )

    def _damaged(
        self, start: int, at: int, block: bytes, overrides: dict[str, str], why: str = ""
    ) -> DamagedBytes:
        """The stretch from ``start`` (a header that fails, or the extension headers before
        one) to the next valid header."""
        header_like = _header_like(block)
        aligned = at > start or header_like
        extension = at > start or (aligned and block[156:157] in EXTENSION_TYPES)
        names = [overrides["path"]] if "path" in overrides else []
        name = _lenient_name(block) if header_like else None
        if name and not names:
            names.append(name)
        # the scan may meet this block's own bytes again, shifted by inserted ones: names read
        # there would be garbled copies of this header's
        found = self.src.scan(at + 1, names_from=at + BLOCK)
        names += found.names
        if why:
            what = why
        elif aligned:
            what = f"a damaged tar header at {at}"
        else:
            what = f"no tar header at {at}"
        if found.info is None:
            detail = f"{what}; no valid header after it"
            return DamagedBytes(start, self.src.pos, detail, aligned, names, extension=extension)
        detail = f"{what}; the next valid header is at {self.src.pos}"
        return DamagedBytes(
            start,
            self.src.pos,
            detail,
            aligned,
            names,
            resumed=True,
            next_name=self._name_here(),
            extension=extension,
        )

    def _name_here(self) -> str | None:
        """The name of the member whose (valid) headers start here, looked at without moving:
        past its extension headers when they are whole."""
        overrides: dict[str, str] = {}
        ahead = 0
        for _ in range(4):  # a member has at most a PAX header and a GNU long name or two
            block = self.src.peek(ahead + BLOCK)[ahead:]
            info = _header(block, scanning=False)
            if info is None:
                return None
            if info.type not in EXTENSION_TYPES:
                return overrides.get("path", info.name)
            if not 0 <= info.size <= MAX_EXTENSION_BYTES:
                return None
            payload = self.src.peek(ahead + BLOCK + info.size)[ahead + BLOCK :]
            overrides.update(_extension(info.type, payload) or {})
            ahead += BLOCK + info.size + _padding(info.size)
        return None


class _Source:
    """A forward-only window on a binary stream, addressed by absolute offsets: ``pos`` is
    the offset of the first byte not yet consumed. Seeks over skipped bytes where it can."""

    def __init__(self, stream: BinaryIO, offset: int) -> None:
        self.stream = stream
        self.pos = offset
        self.buf = bytearray()
        self.eof = False
        self.tail_zeros = 0  # zero bytes closing the stream, once a scan reached its end
        self.size: int | None = None
        if getattr(stream, "seekable", lambda: False)():
            here = stream.tell()
            self.size = offset - here + stream.seek(0, 2)
            stream.seek(here)

    def _fill(self, n: int, chunk: int = _READ_AHEAD) -> None:
        while len(self.buf) < n and not self.eof:
            data = self.stream.read(max(n - len(self.buf), chunk))
            if data:
                self.buf += data
            else:
                self.eof = True

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self.buf[:n])

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the stream), consumed."""
        self._fill(n, chunk=0)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        self.pos += len(data)
        return data

    def advance(self, n: int) -> None:
        """Consume ``n`` bytes already peeked at."""
        del self.buf[:n]
        self.pos += n

    def skip(self, n: int) -> int:
        """Consume up to ``n`` bytes without keeping them; the number consumed."""
        held = min(n, len(self.buf))
        self.advance(held)
        rest = n - held
        if rest and self.size is not None and not self.eof:
            rest = min(rest, self.size - self.pos)
            self.stream.seek(rest, 1)
            self.pos += rest
            return held + rest
        while rest and not self.eof:
            data = self.stream.read(min(rest, _SCAN_CHUNK))
            if not data:
                self.eof = True
            rest -= len(data)
            self.pos += len(data)
        return n - rest

    def scan(self, start: int, names_from: int | None = None) -> _Scan:
        """Move to the first valid header at or after ``start`` (``ustar`` magic and a right
        checksum, at any offset); at the end of the stream without one, ``pos`` is the
        stream's end. Names are read from blocks on the way, from ``names_from`` on, that are
        headers with a few damaged bytes (their checksum is close)."""
        names_from = start if names_from is None else names_from
        self.skip(max(0, start - self.pos))  # past bytes already consumed (a header's data)
        found = _Scan()
        while True:
            self._fill(_SCAN_CHUNK + BLOCK, chunk=_SCAN_CHUNK)
            buf = self.buf
            last = len(buf) - BLOCK  # the last header offset whose block is all here
            hit = buf.find(MAGIC, MAGIC_AT)
            while hit != -1 and hit - MAGIC_AT <= last:
                at = hit - MAGIC_AT
                block = bytes(buf[at : at + BLOCK])
                found.info = _header(block, scanning=True)
                if found.info is not None:
                    found.passed(bytes(buf[:at]))
                    self.advance(at)
                    return found
                name = _lenient_name(block) if _checksum_close(block) else None
                if name and self.pos + at >= names_from:
                    found.names.append(name)
                hit = buf.find(MAGIC, hit + 1)
            if self.eof:
                rest = bytes(buf)
                found.passed(rest)
                self.tail_zeros = len(rest) - len(rest.rstrip(b"\0"))
                self.advance(len(buf))
                return found
            keep = max(last + 1, 0)  # blocks starting from here are not whole yet
            found.passed(bytes(buf[:keep]))
            self.advance(keep)


@dataclass
class _Scan:
    """What a resync found: the valid header it stopped at (None: the stream ended), the names
    read from header-like blocks with failing checksums on the way, and how many of the bytes
    passed were not zero."""

    info: tarfile.TarInfo | None = None
    names: list[str] = field(default_factory=list)
    nonzero: int = 0

    def passed(self, data: bytes) -> None:
        self.nonzero += len(data) - data.count(0)


def _header(block: bytes, scanning: bool) -> tarfile.TarInfo | None:
    """``block`` parsed as a tar header, or None when it is none (bad checksum, all zeros,
    short). While ``scanning`` (resyncing) the ``ustar`` magic is required too; in order, an
    old V7 header (no magic) is accepted as ``tarfile`` accepts it."""
    if len(block) < BLOCK or (scanning and block[MAGIC_AT : MAGIC_AT + len(MAGIC)] != MAGIC):
        return None
    try:
        return tarfile.TarInfo.frombuf(block, *ENCODING)
    except tarfile.HeaderError:
        return None


def _size(info: tarfile.TarInfo | None, overrides: dict[str, str]) -> int | None:
    """A member's data size (a PAX ``size`` record overrides the header's); None when it
    is not a size at all."""
    if info is None:
        return None
    try:
        size = int(overrides["size"]) if "size" in overrides else info.size
    except ValueError:
        return None
    return size if size >= 0 else None


def _padding(size: int) -> int:
    return -size % BLOCK


def _extension(kind: bytes, payload: bytes) -> dict[str, str] | None:
    """The ``path`` / ``size`` an extension header gives the next member ({} for a GNU long
    link); None when its data does not parse."""
    if kind == tarfile.GNUTYPE_LONGNAME:
        return {"path": payload.split(b"\0", 1)[0].decode(*ENCODING)}
    if kind == tarfile.GNUTYPE_LONGLINK:
        return {}
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        if not payload[pos:].strip(b"\0"):
            break
        space = payload.find(b" ", pos)
        length = payload[pos:space]
        if space < 0 or not length.isdigit() or int(length) <= space - pos:
            return None
        end = pos + int(length)
        record = payload[space + 1 : end]
        if end > len(payload) or not record.endswith(b"\n") or b"=" not in record:
            return None
        key, _, value = record[:-1].partition(b"=")
        if key in (b"path", b"size"):
            records[key.decode()] = value.decode(*ENCODING)
        pos = end
    return records


def _lenient_name(block: bytes) -> str | None:
    """The name field of a header that may be damaged: text up to its first NUL, if that is
    a plausible file name (non-empty, no control characters) and not that of an extension
    header (``././@PaxHeader``, ``PaxHeaders.N/...``, which name no member)."""
    raw = block[:100].split(b"\0", 1)[0]
    if not _plausible(raw) or block[156:157] in (*EXTENSION_TYPES, tarfile.XGLTYPE):
        return None
    if raw.startswith(b"././@") or b"PaxHeaders" in raw:
        return None
    return raw.decode(*ENCODING)


def _plausible(name: bytes) -> bool:
    """Whether bytes could be a member name: some, and no control characters."""
    return bool(name) and not any(b < 0x20 or b == 0x7F for b in name)


def _header_like(block: bytes) -> bool:
    """Whether a whole block that fails as a header still reads as one that took a few
    damaged bytes: its checksum field is close to its bytes' sum; or a plausible name beside
    its magic in place, or beside an octal mode field (damage from byte 108 of the header on
    leaves its start whole). Data shifted by inserted bytes, or random bytes, is none."""
    if _checksum_close(block):
        return True
    if not _plausible(block[:100].split(b"\0", 1)[0]):
        return False
    in_place = block[MAGIC_AT : MAGIC_AT + len(MAGIC)] == MAGIC
    mode = block[100:108].rstrip(b"\0 ")
    return in_place or (bool(mode) and all(48 <= b <= 55 for b in mode.lstrip(b" ")))


def _checksum_close(block: bytes) -> bool:
    stored = block[CHECKSUM_FIELD].split(b"\0", 1)[0].strip()
    if not stored or not all(48 <= b <= 55 for b in stored):  # octal digits
        return False
    return abs(int(stored, 8) - tarfile.calc_chksums(block)[0]) < CLOSE_CHECKSUM


def _partial_header_like(block: bytes) -> bool:
    """Whether the start of a header cut short by the stream's end reads as one: a plausible
    name so far, and the magic in place if the cut left it."""
    if not _plausible(block[:100].split(b"\0", 1)[0]):
        return False
    return len(block) < MAGIC_AT + len(MAGIC) or block[MAGIC_AT : MAGIC_AT + len(MAGIC)] == MAGIC
