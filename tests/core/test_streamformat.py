import pytest

from virtbackup.core.streamformat import (
    STREAM_FORMAT_VERSION,
    FrameEntry,
    IndexFormatError,
    IndexHeader,
    check_tiling,
    pack_entry,
    pack_header,
    unpack_entries,
    unpack_header,
)

HEADER = IndexHeader(
    version=STREAM_FORMAT_VERSION,
    chunk_size=4096,
    data_size=6000,
    frame_count=2,
    frame_digest="sha256",
    whole_digest_name="sha256",
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


def test_unknown_digest_name() -> None:
    header = IndexHeader(**{**HEADER.__dict__, "whole_digest_name": "nohash"})
    with pytest.raises(IndexFormatError, match="unknown digest"):
        unpack_header(pack_header(header))


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
