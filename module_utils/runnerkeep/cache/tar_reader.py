"""Read an image archive's tar stream once, hashing every regular member on the way.

A small tar parser over a raw file descriptor: 512-byte headers, member data read with
``readinto`` into one reused 1 MiB buffer, every byte hashed once while it goes to a temp file
(or only hashed, when the blob is already stored). tarfile's stream mode copies every chunk
twice and hides how far the stream got, which is what a short-stream error needs.

What the members mean (manifests, configs, layers) is archive_layout's job.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Callable

from ..errors import RunnerkeepError
from .store import Store, create_temp_blob, is_no_space, write_all

READ_BUFFER = 1 << 20
# What may follow the end-of-archive marker: tar's padding to its record size (10 KiB by
# default, 1 MiB at most with any writer here).
MAX_TRAILER = 1 << 20
SMALL_MEMBER = 1 << 20  # members up to this size are kept in memory (configs, manifests, json)
# ... up to this much in all: an archive of junk small members (an untrusted job's, handed to
# the root cache service) must not grow the reader's memory with the disk; the rest go to
# temp files as large members do.
MAX_HELD_IN_MEMORY = 16 << 20
BLOCK = 512
# Reads at least this big are hashed on the caller's hash pool while this thread writes them.
HASH_OFFLOAD_MIN = 256 * 1024
PROGRESS_INTERVAL = 0.2  # seconds between progress reports

REGULAR_TYPES = (b"0", b"\0", b"7")
EXTENDED_TYPES = (b"x", b"g", b"L", b"K")  # pax, global pax, GNU long name, GNU long link
# An extended header is read into memory; real ones are a few hundred bytes (a long path, a
# size, times), so a bigger one is an attack on the reader's memory, not an archive.
MAX_EXTENDED = 1 << 20
# Every member's name (and a link's target) is kept for the whole read. An image archive has a
# few members per layer with short names; these bound what a hostile one makes the reader
# hold (PATH_MAX for one name).
MAX_NAME = 4096
MAX_NAMES_HELD = 16 << 20
MAX_MEMBERS = 100_000

Progress = Callable[[int], None]


class ArchiveError(RunnerkeepError):
    """The archive is short, malformed, or its content does not match its own metadata."""


class NoSpaceWhileWriting(RunnerkeepError):
    """ENOSPC/EDQUOT while writing a temp blob."""


@dataclass
class Member:
    """A regular file seen in the stream."""

    name: str
    size: int
    digest: str
    data: bytes | None = None  # small members
    temp_path: str | None = None  # large members written to the store's temp area
    reused: bool = False  # large member only hashed: the blob is already stored
    stored_path: str | None = None  # ... here (analysis reads a stored config from it)
    lost: bool = False  # hashed without writing on a guess that turned out wrong


@dataclass
class StreamStats:
    """Everything one pass over the stream found: the regular members and the links."""

    bytes_read: int = 0
    bytes_written: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


def blob_member_name(digest: str) -> str:
    """'sha256:HEX' -> 'blobs/sha256/HEX', where an OCI layout keeps that blob."""
    return "blobs/" + digest.replace(":", "/", 1)


def digest_from_blob_name(name: str) -> str | None:
    """'blobs/sha256/HEX' -> 'sha256:HEX'; None for a member not named by its digest."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    return None


def clean_name(name: str) -> str:
    """A member name as a relative, normalised path ('' for the archive root)."""
    name = posixpath.normpath(name.lstrip("/")) if name else name
    return "" if name == "." else name


# ---------------------------------------------------------------------------------------
# the byte stream
# ---------------------------------------------------------------------------------------
class _StreamReader:
    """Buffered reader over a raw fd with exact-size reads and an EOF that is an error."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.view = memoryview(bytearray(READ_BUFFER))
        self.pos = 0
        self.end = 0
        self.total = 0

    def _fill(self) -> int:
        count = self.raw.readinto(self.view) or 0
        self.pos, self.end = 0, count
        self.total += count
        return count

    def offset(self) -> int:
        """Bytes of the stream consumed so far."""
        return self.total - (self.end - self.pos)

    def read_exact(self, size: int) -> bytes:
        out = self.read_upto(size)
        if len(out) < size:
            raise self.ended_early()
        return out

    def read_upto(self, size: int) -> bytes:
        """The next ``size`` bytes, or fewer when the stream ends first."""
        out = bytearray()
        while len(out) < size:
            if self.pos == self.end and not self._fill():
                break
            take = min(size - len(out), self.end - self.pos)
            out += self.view[self.pos : self.pos + take]
            self.pos += take
        return bytes(out)

    def ended_early(self) -> ArchiveError:
        return ArchiveError(
            f"the archive stream ended early after {self.total} bytes "
            "(truncated: the daemon or the pipe stopped mid-archive)"
        )

    def chunks(self, size: int) -> Iterable[memoryview]:
        """Yield views covering the next ``size`` bytes; each view is valid until the next."""
        remaining = size
        while remaining:
            if self.pos == self.end and not self._fill():
                raise ArchiveError(
                    f"the archive stream ended early after {self.total} bytes "
                    "(truncated inside a member)"
                )
            take = min(remaining, self.end - self.pos)
            yield self.view[self.pos : self.pos + take]
            self.pos += take
            remaining -= take

    def skip(self, size: int) -> None:
        for _ in self.chunks(size):
            pass

    def drain(self) -> None:
        """Read what follows the end-of-archive marker (tar pads to its record size; the
        writer finishes cleanly), up to ``MAX_TRAILER`` bytes: an endless stream (all zeros
        read as an end marker first, e.g. /dev/zero) must not be read forever."""
        limit = self.offset() + MAX_TRAILER
        while self._fill():
            if self.total > limit:
                raise ArchiveError(
                    f"more than {MAX_TRAILER} bytes follow the end-of-archive marker (at byte "
                    f"{limit - MAX_TRAILER}): not an archive docker or skopeo writes"
                )


# ---------------------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Header:
    typeflag: bytes
    name: str
    linkname: str
    size: int

    @property
    def padded(self) -> int:
        """The member's data rounded up to whole blocks, as it sits in the stream."""
        return (self.size + BLOCK - 1) // BLOCK * BLOCK


def _header_number(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # base-256 (GNU) for sizes >= 8 GiB
        value = field_bytes[0] & 0x7F
        for byte in field_bytes[1:]:
            value = (value << 8) | byte
        return value
    text = field_bytes.split(b"\0", 1)[0].strip()
    if text.strip(b"01234567"):  # int() would also take a sign, '_' and '0o'
        raise ArchiveError(f"not a tar archive (bad numeric header field {text[:12]!r})")
    return int(text, 8) if text else 0


def _header_checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _header_text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _next_header(reader: _StreamReader) -> _Header | None:
    """The next header block, parsed; None at the end-of-archive marker."""
    at_start = reader.offset() == 0
    block = reader.read_upto(BLOCK)
    if at_start:
        _refuse_compressed(block)  # a compressed archive may be shorter than a block
    if len(block) < BLOCK:
        raise reader.ended_early()
    if block == b"\0" * BLOCK:
        return None  # the rest (second zero block, padding) is drained by the caller
    if _header_number(block[148:156]) != _header_checksum(block):
        raise ArchiveError(f"bad tar header checksum at byte {reader.offset() - BLOCK}")
    name = _header_text(block[0:100])
    if block[257:262] == b"ustar":
        prefix = _header_text(block[345:500])
        if prefix:
            name = prefix + "/" + name
    return _Header(
        typeflag=block[156:157],
        name=name,
        linkname=_header_text(block[157:257]),
        size=_header_number(block[124:136]),
    )


# What an archive compressed as a whole starts with: runnerkeep stores tar as docker save
# writes it, and a compressed one would otherwise read as a bad header.
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}


def _refuse_compressed(block: bytes) -> None:
    for magic, kind in COMPRESSED_MAGIC.items():
        if block.startswith(magic):
            raise ArchiveError(
                f"it is compressed ({kind}), not a tar archive as docker save writes it: "
                "decompress it first (e.g. `gunzip -c FILE.tar.gz > FILE.tar`, or pipe the "
                "decompressed stream in)"
            )


def _pax_records(data: bytes) -> dict[str, str]:
    """The "LENGTH KEY=VALUE\n" records of a pax extended header. ArchiveError on a record
    that is not one: a length that does not move forward would loop for ever."""
    out: dict[str, str] = {}
    pos = 0
    records_end = len(data.rstrip(b"\0"))  # NUL padding after the last record is allowed
    while pos < records_end:
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space] if space > pos else b""
        end = pos + int(digits) if digits.isdigit() else -1
        if end <= space + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArchiveError(f"malformed pax extended header (record at byte {pos} of it)")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise ArchiveError(f"malformed pax extended header (record at byte {pos} of it)")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos = end
    return out


def _pax_size(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise ArchiveError(f"malformed pax extended header (size {value[:24]!r})")
    return int(value)


class _ExtendedHeaders:
    """pax and GNU long-name records, which override the fields of the next real header."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.pax: dict[str, str] = {}
        self.long_name: str | None = None
        self.long_link: str | None = None

    def absorb(self, typeflag: bytes, data: bytes) -> None:
        if typeflag == b"x":
            self.pax = _pax_records(data)
        elif typeflag == b"L":
            self.long_name = data.rstrip(b"\0").decode("utf-8", "replace")
        elif typeflag == b"K":
            self.long_link = data.rstrip(b"\0").decode("utf-8", "replace")

    def apply(self, header: _Header) -> _Header:
        """``header`` with the overrides read before it (then forgotten), its name cleaned."""
        name = self.pax.get("path") or self.long_name or header.name
        linkname = self.pax.get("linkpath") or self.long_link or header.linkname
        size = _pax_size(self.pax["size"]) if "size" in self.pax else header.size
        self._forget()
        return replace(header, name=clean_name(name), linkname=linkname, size=size)


def _link_target(header: _Header) -> str | None:
    """Where a link member points, as a member name; None for anything else."""
    if header.typeflag == b"2":  # symlink: relative to the member's directory
        return clean_name(posixpath.join(posixpath.dirname(header.name), header.linkname))
    if header.typeflag == b"1":  # hard link: relative to the archive root
        return clean_name(header.linkname)
    return None


# ---------------------------------------------------------------------------------------
# member data
# ---------------------------------------------------------------------------------------
def _keep_anything(count: int) -> None:
    """The charge of a read with no reserve to keep (saves check free space up front)."""


class _MemberSink:
    """Where a regular member's bytes go: memory (small, up to MAX_HELD_IN_MEMORY in all), a
    temp file in ``area`` (large or past that, and new), or nowhere but the hash (already
    stored, or guessed to be). Temp files are fsynced and closed on a second thread so the
    stream keeps flowing."""

    def __init__(
        self,
        store: Store,
        area: str,
        candidates: dict[int, set[str]],
        stats: StreamStats,
        hash_pool: concurrent.futures.Executor | None,
        charge: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.charge = charge or _keep_anything
        self.area = area
        self.candidates = candidates
        self.stats = stats
        self.hash_pool = hash_pool
        self.fsync_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.pending: list[tuple[concurrent.futures.Future, int]] = []  # (fsync+close, fd)
        self.held = 0  # bytes of small members kept in memory

    def read(self, reader: _StreamReader, name: str, size: int) -> Member:
        if size <= SMALL_MEMBER:
            if self.held + size > MAX_HELD_IN_MEMORY:
                # Past the cap a small member goes to a file, never only hashed: it may be a
                # config or manifest the analysis reads.
                return self._write_temp(reader, name, size)
            self.held += size
            self.charge(size)
            data = reader.read_exact(size)
            return Member(name, size, "sha256:" + hashlib.sha256(data).hexdigest(), data=data)
        named = digest_from_blob_name(name)
        if named and self.store.has_blob(named):
            return self._hash_only(reader, name, size, guessed=None)
        if not named and size in self.candidates:
            return self._hash_only(reader, name, size, guessed=self.candidates[size])
        return self._write_temp(reader, name, size)

    def _hash_only(
        self, reader: _StreamReader, name: str, size: int, guessed: set[str] | None
    ) -> Member:
        """Hash without writing: the blob is stored, or (``guessed``) one of those digests."""
        sha = hashlib.sha256()
        for chunk in reader.chunks(size):
            sha.update(chunk)
        digest = "sha256:" + sha.hexdigest()
        lost = guessed is not None and digest not in guessed
        stored = None if lost else self.store.blob_path(digest)
        return Member(name, size, digest, reused=not lost, lost=lost, stored_path=stored)

    def _write_temp(self, reader: _StreamReader, name: str, size: int) -> Member:
        sha = hashlib.sha256()
        fd, path = create_temp_blob(self.area)
        try:
            for chunk in reader.chunks(size):
                self.charge(len(chunk))
                self._hash_and_write(sha, fd, chunk, name, size)
                self.stats.bytes_written += len(chunk)
        except BaseException:
            os.close(fd)
            raise
        self.pending.append((self.fsync_pool.submit(_sync_close, fd), fd))
        return Member(name, size, "sha256:" + sha.hexdigest(), temp_path=path)

    def _hash_and_write(self, sha, fd: int, chunk: memoryview, name: str, size: int) -> None:
        # Hash on a second thread while this one writes: hashlib and os.write both release
        # the GIL, so the two overlap (measured on a 2-core runner: 0.43 -> 0.82 GB/s). Pipe
        # reads are often 64 KiB (the daemon is the slow side): handing those to a thread
        # costs more than hashing them here, so only large chunks go to the pool.
        offload = self.hash_pool is not None and len(chunk) >= HASH_OFFLOAD_MIN
        hashed = self.hash_pool.submit(sha.update, chunk) if offload else None
        if hashed is None:
            sha.update(chunk)
        try:
            write_all(fd, chunk)
        except OSError as exc:
            if hashed:
                hashed.result()
            if is_no_space(exc):
                raise NoSpaceWhileWriting(
                    f"no space left in the cache directory {self.store.root} while writing "
                    f"{name} ({size} bytes): {exc.strerror}"
                ) from None
            raise
        if hashed:
            hashed.result()

    def finish(self) -> None:
        """Wait for every temp file's fsync (raising its error, if any)."""
        for future, _fd in self.pending:
            future.result()

    def cancel(self) -> None:
        """The read failed: fsyncs not yet begun are dropped, and their files closed (an
        unlinked temp file held open keeps its space for as long as the process lives: the
        cache service's is long)."""
        for future, fd in self.pending:
            if future.cancel():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        self.fsync_pool.shutdown(wait=True)


def _sync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------
def read_archive_stream(
    raw: BinaryIO,
    store: Store,
    area: str,
    reuse_candidates: dict[int, set[str]] | None = None,
    progress: Progress | None = None,
    hash_pool: concurrent.futures.Executor | None = None,
    charge: Callable[[int], None] | None = None,
) -> StreamStats:
    """Read a tar stream once: hash every regular member, keep small ones in memory, write large
    ones to temp files in ``area`` unless the blob is already stored.

    ``reuse_candidates`` maps a size to digests already stored that a legacy ``layer.tar`` of
    that size may be (legacy member names do not carry digests); such a member is only hashed.
    If the guess is wrong the member is marked lost and the caller reads the stream again.
    ``charge(n)`` is called before ``n`` more bytes are kept (written to a temp file or held
    in memory for the commit); it may raise to stop the read (import_space.ReserveGuard).
    """
    reader = _StreamReader(raw)
    stats = StreamStats()
    sink = _MemberSink(store, area, reuse_candidates or {}, stats, hash_pool, charge)
    try:
        _read_members(reader, sink, stats, progress)
        reader.drain()
        sink.finish()
    except BaseException:
        sink.cancel()
        raise
    finally:
        sink.close()
    stats.bytes_read = reader.total
    if progress:
        progress(reader.total)
    return stats


class _NameBudget:
    """What the read keeps per member, bounded (MAX_NAME, MAX_NAMES_HELD, MAX_MEMBERS)."""

    def __init__(self) -> None:
        self.members = 0
        self.held = 0

    def count(self, header: _Header) -> None:
        longest = max(len(header.name), len(header.linkname))
        if longest > MAX_NAME:
            raise ArchiveError(
                f"a member name or link target of {longest} bytes (more than {MAX_NAME}): "
                "not an archive docker or skopeo writes"
            )
        self.members += 1
        self.held += len(header.name) + len(header.linkname)
        if self.members > MAX_MEMBERS or self.held > MAX_NAMES_HELD:
            raise ArchiveError(
                f"more than {MAX_MEMBERS} members or {MAX_NAMES_HELD >> 20} MiB of member "
                "names: not an image archive docker or skopeo writes"
            )


def _read_members(
    reader: _StreamReader, sink: _MemberSink, stats: StreamStats, progress: Progress | None
) -> None:
    """Header by header up to the end-of-archive marker: regular members into ``stats.members``
    (through ``sink``), links into ``stats.links``, everything else skipped."""
    extended = _ExtendedHeaders()
    names = _NameBudget()
    last_report = 0.0
    while True:
        header = _next_header(reader)
        if header is None:
            return
        if header.typeflag in EXTENDED_TYPES:
            if header.size > MAX_EXTENDED:
                raise ArchiveError(
                    f"an extended header of {header.size} bytes at byte "
                    f"{reader.offset() - BLOCK} (more than {MAX_EXTENDED}): not an archive "
                    "docker or skopeo writes"
                )
            extended.absorb(header.typeflag, reader.read_exact(header.padded)[: header.size])
            continue
        header = extended.apply(header)
        names.count(header)
        if header.typeflag in REGULAR_TYPES:
            stats.members[header.name] = sink.read(reader, header.name, header.size)
            reader.skip(header.padded - header.size)
        else:
            target = _link_target(header)
            if target is not None:
                stats.links[header.name] = target
            reader.skip(header.padded)
        now = time.monotonic()
        if progress and now - last_report > PROGRESS_INTERVAL:
            progress(reader.total)
            last_report = now
