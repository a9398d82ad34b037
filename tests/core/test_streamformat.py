import hashlib

import pytest

from virtbackup.core.streamformat import (
    STREAM_FORMAT_VERSION,
    ChunkedDigest,
    FrameEntry,
    IndexFormatError,
    IndexHeader,
    check_tiling,
    chunked_digest_name,
    pack_entry,
    pack_header,
    parse_chunked_digest_name,
    unpack_entries,
    unpack_header,
    zero_digest,
)

HEADER = IndexHeader(
    version=STREAM_FORMAT_VERSION,
    chunk_size=4096,
    data_size=6000,
    frame_count=2,
    frame_digest="sha256",
    whole_digest_name="sha256-4KiB-chunks",
    whole_digest=bytes(range(32)),
)
ENTRIES = [
    FrameEntry(0, 100, 0, 4096, False, b"a" * 32),
    FrameEntry(100, 30, 4096, 1904, True, b"b" * 32),
]


def test_header_and_entries_round_trip() -> None:
    assert unpack_header(pack_header(HEADER)) == HEADER
    raw = b"".join(pack_entry(entry) for entry in ENTRIES)
    assert unpack_entries(raw, 2, 32) == ENTRIES
    check_tiling(HEADER, ENTRIES, index_offset=130)


def test_unknown_version_is_refused_with_both_versions_named() -> None:
    raw = bytearray(pack_header(HEADER))
    raw[8] = 99  # the u16 version follows the 8-byte magic
    with pytest.raises(IndexFormatError, match="version 99 is not supported.*version 1"):
        unpack_header(bytes(raw))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"short", "truncated"),
        (b"X" + pack_header(HEADER)[1:], "wrong magic"),
    ],
)
def test_bad_headers(raw: bytes, message: str) -> None:
    with pytest.raises(IndexFormatError, match=message):
        unpack_header(raw)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"whole_digest_name": "nohash"}, "unknown whole digest"),
        ({"whole_digest_name": "sha256"}, "unknown whole digest"),
        ({"whole_digest_name": "nohash-4KiB-chunks"}, "unsupported digest 'nohash'"),
        ({"whole_digest_name": "sha256-8KiB-chunks"}, "does not match the frames"),
        ({"whole_digest_name": "md5-4KiB-chunks"}, "unsupported digest 'md5'"),
    ],
)
def test_whole_digest_must_name_the_frame_digest_and_grid(
    changes: dict[str, str], message: str
) -> None:
    header = IndexHeader(**{**HEADER.__dict__, **changes})
    with pytest.raises(IndexFormatError, match=message):
        unpack_header(pack_header(header))


@pytest.mark.parametrize(
    ("size", "name"),
    [
        (4 << 20, "sha256-4MiB-chunks"),
        (64 << 10, "sha256-64KiB-chunks"),
        (1000, "sha256-1000B-chunks"),
    ],
)
def test_chunked_digest_names_round_trip(size: int, name: str) -> None:
    assert chunked_digest_name(size) == name
    assert parse_chunked_digest_name(name) == ("sha256", size)


@pytest.mark.parametrize(
    "name", ["sha256-4096KiB-chunks", "sha256-0MiB-chunks", "sha256-4M-chunks"]
)
def test_only_canonical_chunked_names_parse(name: str) -> None:
    with pytest.raises(IndexFormatError, match="unknown whole digest"):
        parse_chunked_digest_name(name)


def test_chunked_digest_is_sha256sum_lines_hashed() -> None:
    data = bytes(range(256)) * 40 + bytes(1000)  # 10 KiB + 1000: a short last chunk
    chunks = [data[at : at + 4096] for at in range(0, len(data), 4096)]
    lines = "".join(f"{hashlib.sha256(chunk).hexdigest()}  -\n" for chunk in chunks)
    whole = ChunkedDigest()
    whole.add_all(hashlib.sha256(chunk).digest() for chunk in chunks)
    assert whole.hexdigest() == hashlib.sha256(lines.encode()).hexdigest()
    assert ChunkedDigest().hexdigest() == hashlib.sha256(b"").hexdigest()  # empty disk
    assert zero_digest(4096) == hashlib.sha256(bytes(4096)).digest()


@pytest.mark.parametrize(
    ("entries", "index_offset", "message"),
    [
        ([ENTRIES[1]], 130, "gap"),
        ([ENTRIES[0]], 100, "cover 4096 bytes"),
        (ENTRIES, 131, "do not end where the index begins"),
    ],
)
def test_tiling_errors(entries: list[FrameEntry], index_offset: int, message: str) -> None:
    with pytest.raises(IndexFormatError, match=message):
        check_tiling(HEADER, entries, index_offset)


def test_entry_count_must_match() -> None:
    with pytest.raises(IndexFormatError, match="expected 3"):
        unpack_entries(pack_entry(ENTRIES[0]), 3, 32)
