"""The disk stream file `<target>.<format>.lz4`: a standard LZ4 frame stream with an index.

Format version 1
================

The file is a concatenation of LZ4 frames (lz4 frame format 1.6.x), so stock tools read
it: ``lz4 -d vda.qcow2.lz4 vda.qcow2`` restores the disk, and with the default chunk size
``lz4 -dc vda.qcow2.lz4 | split -b 4194304 --filter=sha256sum | sha256sum`` prints the
whole-disk digest recorded in ``manifest.json`` (see *Whole-disk digest*).

Data frames
    The source is cut on a fixed grid of ``chunk_size`` bytes (4 MiB by default; the last
    chunk may be shorter). Every chunk becomes exactly one independent LZ4 frame, in
    order, so frame *i* holds source bytes ``[i * chunk_size, i * chunk_size + length)``.
    Independent frames let writers compress and readers decompress on all cores.
    A chunk that is known to be a hole or reads as all zeros is written as a *zero
    frame*: a frame holding only zeros, prepared once per length and reused, so zeros
    are never compressed. Each frame is one LZ4 block of at most 4 MiB (so a chunk
    larger than 4 MiB spans several blocks), without block or content checksums and
    without content size: the index holds the length and a sha256 of every frame.

Whole-disk digest ``sha256-<size>-chunks`` (e.g. ``sha256-4MiB-chunks``)
    sha256 over the concatenated text lines ``"<sha256 hex of chunk>  -\n"``, one for
    each chunk of the uncompressed disk on the frame grid, in order (the last chunk may
    be shorter; an empty disk gives the sha256 of nothing). This is exactly what
    coreutils prints for ``lz4 -dc FILE | split -b <size in bytes> --filter=sha256sum |
    sha256sum``, so a user can check it with standard tools, while the writer reuses
    the per-frame digests (one hash pass over the data, none over holes: a zero chunk's
    digest is computed once per length). The size in the name is the chunk size of the
    grid and must equal the header's ``chunk_size``.

Index frame
    After the last data frame comes one LZ4 *skippable frame* (magic 0x184D2A50, which
    ``lz4 -d`` skips) holding the index, so that restore and verify can seek to any
    frame and work in parallel, and the file stays self-contained. All integers are
    little-endian:

    ======================  ====================================================
    header (INDEX_HEADER)   magic ``VBKINDEX``, version u16, chunk_size u32,
                            data_size u64 (uncompressed bytes), frame_count u64,
                            frame digest name (16 bytes, ASCII, NUL padded;
                            ``sha256``), whole digest name (32 bytes, ASCII,
                            NUL padded; ``sha256-4MiB-chunks``), whole digest
                            (64 bytes, NUL padded)
    entries (INDEX_ENTRY)   per frame: stored offset u64, stored length u32,
                            data offset u64, data length u32, flags u8
                            (bit 0: zero frame), frame digest (32 bytes,
                            NUL padded) of the frame's uncompressed bytes
    body digest             sha256 of the header and entries (32 bytes)
    footer (INDEX_FOOTER)   file offset u64 of the skippable frame, magic
                            ``VBKIDXND``: the last 16 bytes of the file
    ======================  ====================================================

A reader takes the footer from the last 16 bytes, reads the skippable frame at the given
offset, checks the body digest and the version, that the whole digest is built on the
frame digest and the frame grid, then checks that the entries tile both the data (no gap,
no overlap, total ``data_size``) and the stored file.

A stream is untrusted input: a reader accepts only ``sha256`` frame digests
(FRAME_DIGESTS), chunk sizes from MIN_CHUNK_SIZE to MAX_CHUNK_SIZE, frames on the chunk
grid no larger than LZ4 can make them (max_stored_length), no unknown flag and zero
padding after each digest; anything else is a damaged backup.
"""

import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

STREAM_FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 4 << 20
# What a reader accepts: a chunk is decoded into buffers of its size, so an index (or a
# manifest) cannot make a reader allocate more than this per frame in flight.
MIN_CHUNK_SIZE = 4 << 10
MAX_CHUNK_SIZE = 64 << 20

FRAME_DIGEST = "sha256"  # per frame; SHA-NI makes it faster than blake2b on current CPUs
# The only digests a reader accepts, with their sizes: a name from an index is never
# handed to hashlib as it is (it knows weak and variable-length digests too).
FRAME_DIGESTS = {FRAME_DIGEST: 32}

LZ4_FRAME_MAGIC = 0x184D2204
SKIPPABLE_MAGIC = 0x184D2A50
SKIPPABLE_HEADER = struct.Struct("<II")  # magic, content size

INDEX_MAGIC = b"VBKINDEX"
INDEX_HEADER = struct.Struct("<8sHIQQ16s32s64s")
INDEX_ENTRY = struct.Struct("<QIQIB32s")
INDEX_BODY_DIGEST_SIZE = 32
FOOTER_MAGIC = b"VBKIDXND"
INDEX_FOOTER = struct.Struct("<Q8s")

FLAG_ZERO = 0x01


class IndexFormatError(ValueError):
    """The index does not follow this format; the message says where."""


@dataclass(frozen=True)
class FrameEntry:
    stored_offset: int
    stored_length: int
    data_offset: int
    data_length: int
    is_zero: bool
    digest: bytes


@dataclass(frozen=True)
class IndexHeader:
    version: int
    chunk_size: int
    data_size: int
    frame_count: int
    frame_digest: str
    whole_digest_name: str
    whole_digest: bytes


def pack_header(header: IndexHeader) -> bytes:
    return INDEX_HEADER.pack(
        INDEX_MAGIC,
        header.version,
        header.chunk_size,
        header.data_size,
        header.frame_count,
        header.frame_digest.encode("ascii"),
        header.whole_digest_name.encode("ascii"),
        header.whole_digest,
    )


def unpack_header(raw: bytes) -> IndexHeader:
    if len(raw) != INDEX_HEADER.size:
        raise IndexFormatError("index header is truncated")
    magic, version, chunk, data_size, count, frame_name, whole_name, whole = INDEX_HEADER.unpack(
        raw
    )
    if magic != INDEX_MAGIC:
        raise IndexFormatError("index header has a wrong magic")
    if version != STREAM_FORMAT_VERSION:
        raise IndexFormatError(
            f"index format version {version} is not supported (this virtbackup reads "
            f"version {STREAM_FORMAT_VERSION})"
        )
    if not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE:
        raise IndexFormatError(
            f"index header has a chunk size of {chunk} bytes (this virtbackup reads "
            f"{MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE})"
        )
    frame_digest = _ascii_field(frame_name)
    whole_digest_name = _ascii_field(whole_name)
    base, grid = parse_chunked_digest_name(whole_digest_name)
    if base != frame_digest or grid != chunk:
        raise IndexFormatError(
            f"whole digest {whole_digest_name} does not match the frames "
            f"({frame_digest} on a {chunk}-byte grid)"
        )
    size = digest_size(base)
    if any(whole[size:]):
        raise IndexFormatError("index header has bytes after the whole digest")
    return IndexHeader(
        version=version,
        chunk_size=chunk,
        data_size=data_size,
        frame_count=count,
        frame_digest=frame_digest,
        whole_digest_name=whole_digest_name,
        whole_digest=whole[:size],
    )


def pack_entry(entry: FrameEntry) -> bytes:
    flags = FLAG_ZERO if entry.is_zero else 0
    return INDEX_ENTRY.pack(
        entry.stored_offset,
        entry.stored_length,
        entry.data_offset,
        entry.data_length,
        flags,
        entry.digest,
    )


def unpack_entries(raw: bytes, count: int, digest_size: int) -> list[FrameEntry]:
    if len(raw) != count * INDEX_ENTRY.size:
        raise IndexFormatError(f"index holds {len(raw)} bytes of entries, expected {count}")
    entries = []
    for number, fields in enumerate(INDEX_ENTRY.iter_unpack(raw)):
        stored_offset, stored_length, data_offset, data_length, flags, digest = fields
        if flags & ~FLAG_ZERO:
            raise IndexFormatError(f"index entry {number} has unknown flags {flags:#x}")
        if any(digest[digest_size:]):
            raise IndexFormatError(f"index entry {number} has bytes after its digest")
        entries.append(
            FrameEntry(
                stored_offset=stored_offset,
                stored_length=stored_length,
                data_offset=data_offset,
                data_length=data_length,
                is_zero=bool(flags & FLAG_ZERO),
                digest=digest[:digest_size],
            )
        )
    return entries


def check_tiling(header: IndexHeader, entries: list[FrameEntry], index_offset: int) -> None:
    """Raise unless the frames cover data and stored bytes exactly, in order."""
    data_at = 0
    stored_at = 0
    for number, entry in enumerate(entries):
        if entry.data_offset != data_at or entry.stored_offset != stored_at:
            raise IndexFormatError(f"index entry {number} leaves a gap or an overlap")
        if entry.data_length <= 0 or entry.data_length > header.chunk_size:
            raise IndexFormatError(f"index entry {number} has a bad length")
        if not 0 < entry.stored_length <= max_stored_length(header.chunk_size):
            raise IndexFormatError(f"index entry {number} has a bad stored length")
        if number < len(entries) - 1 and entry.data_length != header.chunk_size:
            raise IndexFormatError(f"index entry {number} is not on the chunk grid")
        data_at += entry.data_length
        stored_at += entry.stored_length
    if data_at != header.data_size:
        raise IndexFormatError(
            f"index frames cover {data_at} bytes, header says {header.data_size}"
        )
    if stored_at != index_offset:
        raise IndexFormatError("index frames do not end where the index begins")


def max_stored_length(chunk_size: int) -> int:
    """The most bytes any LZ4 frame of `chunk_size` bytes takes: LZ4's worst case (data
    that does not compress grows by 1/255 plus a few bytes per block), frame headers,
    block sizes and checksums, rounded up generously. Larger is damage."""
    return chunk_size + chunk_size // 255 + (64 << 10)


def _ascii_field(raw: bytes) -> str:
    try:
        return raw.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        raise IndexFormatError("index header has a non-ASCII digest name") from None


def digest_size(name: str) -> int:
    """Size of the frame digest `name`; IndexFormatError for one not in FRAME_DIGESTS."""
    try:
        return FRAME_DIGESTS[name]
    except KeyError:
        raise IndexFormatError(f"index names an unsupported digest {name!r}") from None


_CHUNKED_NAME = re.compile(r"([a-z0-9_]+)-([1-9][0-9]*)(MiB|KiB|B)-chunks")
_UNITS = {"MiB": 1 << 20, "KiB": 1 << 10, "B": 1}


def chunked_digest_name(chunk_size: int, base: str = FRAME_DIGEST) -> str:
    """The whole-disk digest name for a grid: 4 MiB chunks give ``sha256-4MiB-chunks``."""
    for unit, factor in _UNITS.items():
        if chunk_size % factor == 0:
            return f"{base}-{chunk_size // factor}{unit}-chunks"
    raise AssertionError("unreachable: every size is a multiple of one byte")


def parse_chunked_digest_name(name: str) -> tuple[str, int]:
    """(frame digest, chunk size) of a whole-disk digest name; IndexFormatError if it is
    not one (only the canonical spelling counts: ``4096KiB`` is not ``4MiB``)."""
    match = _CHUNKED_NAME.fullmatch(name)
    if match is not None:
        base, count, unit = match.groups()
        chunk_size = int(count) * _UNITS[unit]
        if chunked_digest_name(chunk_size, base) == name:
            digest_size(base)
            return base, chunk_size
    raise IndexFormatError(f"index names an unknown whole digest {name!r}")


def chunk_digest_line(chunk_digest: bytes) -> bytes:
    """What `sha256sum` prints for one chunk read from stdin."""
    return chunk_digest.hex().encode("ascii") + b"  -\n"


class ChunkedDigest:
    """The whole-disk digest, fed with the digests of the chunks in order."""

    def __init__(self, base: str = FRAME_DIGEST) -> None:
        self._outer = hashlib.new(base)

    def add(self, chunk_digest: bytes) -> None:
        self._outer.update(chunk_digest_line(chunk_digest))

    def add_all(self, chunk_digests: Iterable[bytes]) -> None:
        for chunk_digest in chunk_digests:
            self.add(chunk_digest)

    def digest(self) -> bytes:
        return self._outer.digest()

    def hexdigest(self) -> str:
        return self._outer.hexdigest()


@lru_cache(maxsize=8)
def zero_digest(length: int, base: str = FRAME_DIGEST) -> bytes:
    """The digest of `length` zero bytes, computed once per length."""
    return hashlib.new(base, bytes(length)).digest()


def parse_index_content(content: bytes, index_offset: int) -> tuple[IndexHeader, list[FrameEntry]]:
    """Check the content of the trailing index frame (what follows its skippable-frame
    header: header, entries, body digest, footer) of a stream whose frames end at
    `index_offset`; IndexFormatError says what is wrong."""
    body_size = len(content) - INDEX_BODY_DIGEST_SIZE - INDEX_FOOTER.size
    if body_size < INDEX_HEADER.size:
        raise IndexFormatError("the index is truncated")
    body = content[:body_size]
    stored_digest = content[body_size : body_size + INDEX_BODY_DIGEST_SIZE]
    footer_offset, magic = INDEX_FOOTER.unpack(content[-INDEX_FOOTER.size :])
    if magic != FOOTER_MAGIC or footer_offset != index_offset:
        raise IndexFormatError("the index footer does not point at the index")
    if hashlib.sha256(body).digest() != stored_digest:
        raise IndexFormatError("the index does not match its digest")
    header = unpack_header(body[: INDEX_HEADER.size])
    entries_raw = body[INDEX_HEADER.size :]
    if len(entries_raw) != header.frame_count * INDEX_ENTRY.size:
        raise IndexFormatError("the index holds a different number of frames than it says")
    entries = unpack_entries(entries_raw, header.frame_count, digest_size(header.frame_digest))
    check_tiling(header, entries, index_offset)
    return header, entries
