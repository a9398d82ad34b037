"""Property-based tests of the parsers of what a backup holds (manifest.json, the sealed
manifest, verified.json, the stream index) and of the undo journal: whatever the input,
the parser returns a value that keeps the format's rules or raises its own error
(damaged backup, damaged journal), never another exception."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from manifest_samples import DISK
from manifest_samples import MANIFEST as ONE_DISK

from virtbackup.adapters.journal import load_journal
from virtbackup.core.backup_names import is_disk_target, is_plain_name, stream_file_name
from virtbackup.core.json_fields import ManifestFormatError
from virtbackup.core.manifest import (
    Manifest,
    Sealed,
    StoredFile,
    build_manifest,
    build_sealed,
    parse_any_manifest,
)
from virtbackup.core.model import DomainState
from virtbackup.core.streamformat import (
    FOOTER_MAGIC,
    INDEX_ENTRY,
    INDEX_FOOTER,
    INDEX_HEADER,
    INDEX_MAGIC,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    IndexFormatError,
    chunked_digest_name,
    max_stored_length,
    parse_index_content,
)
from virtbackup.core.undo import (
    Journal,
    JournalError,
    OverlayRecord,
    StateRecord,
    journal_from_dict,
    journal_to_dict,
)
from virtbackup.core.verify_record import VerifyRecord, build_verify_record, parse_verify_record

MANIFEST = replace(
    ONE_DISK, disks=(DISK, replace(DISK, target="sdb", format="raw", file="sdb.raw.lz4"))
)
SEALED = Sealed(
    tool_version="0.1.0",
    domain_name="web1",
    started=MANIFEST.started,
    finished=MANIFEST.finished,
    method="snapshot",
    recipients=("sha256:0123456789abcdef",),
    files=(
        StoredFile("vda.qcow2.lz4.age", 123, "vda"),
        StoredFile("domain.xml.age", 45),
        StoredFile("manifest.json.age", 67),
    ),
)

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any JSON value, small enough to be cheap.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

# Strings near the rules: names a forger would try.
tricky_text = st.sampled_from(
    [
        "",
        ".",
        "..",
        "../x",
        "/etc/cron.d/x",
        "vda/",
        "vda\0",
        "vda\n",
        ".vda",
        "vda",
        "sdb",
        "xvda1",
        "raw",
        "qcow2",
        "/pwned",
        "vda.raw.lz4",
        "vda.raw.lz4.age",
        "../vda.raw.lz4",
        "sha256-1MiB-chunks",
        "md5-1MiB-chunks",
        "shake_128-4MiB-chunks",
        "\ud800",
        "[/oops]",
        "a" * 300,
    ]
)
field_values = json_values | tricky_text


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON document (to pick one to forge)."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for number, value in enumerate(document):
            found += _paths(value, (*prefix, number))
    return found


def _forged(text: str, data: st.DataObject) -> str:
    """`text` (a JSON document) with one field replaced or removed."""
    document = json.loads(text)
    path = data.draw(st.sampled_from(_paths(document)))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(field_values)
    return json.dumps(document)


def _check_manifest_rules(parsed: Manifest | Sealed) -> None:
    """What every parsed manifest keeps, whatever it was made from."""
    if isinstance(parsed, Manifest):
        for disk in parsed.disks:
            assert is_disk_target(disk.target)
            assert disk.file in (
                stream_file_name(disk.target, disk.format),
                stream_file_name(disk.target, disk.format, True),
            )
            assert MIN_CHUNK_SIZE <= disk.chunk_size <= MAX_CHUNK_SIZE
            assert 0 <= disk.byte_size and 0 <= disk.stored_size
        assert len({disk.target for disk in parsed.disks}) == len(parsed.disks)
    else:
        for stored in parsed.files:
            assert is_plain_name(stored.file)
            assert stored.target is None or is_disk_target(stored.target)


def _parse_manifest_or_error(text: str) -> None:
    try:
        parsed = parse_any_manifest(text)
    except ManifestFormatError:
        return
    _check_manifest_rules(parsed)


@BOUNDED
@given(st.data())
def test_forged_manifest_field(data: st.DataObject) -> None:
    _parse_manifest_or_error(_forged(build_manifest(MANIFEST), data))


@BOUNDED
@given(st.data())
def test_forged_sealed_manifest_field(data: st.DataObject) -> None:
    _parse_manifest_or_error(_forged(build_sealed(SEALED), data))


@BOUNDED
@given(json_values)
def test_any_json_as_manifest(document: Any) -> None:
    _parse_manifest_or_error(json.dumps(document))


@BOUNDED
@given(st.text(max_size=200))
def test_any_text_as_manifest(text: str) -> None:
    _parse_manifest_or_error(text)


def test_pathological_json_is_a_format_error() -> None:
    for text in ("[" * 100_000, "1" * 5000, '{"tool": ' + "9" * 5000 + "}"):
        _parse_manifest_or_error(text)
        try:
            parse_verify_record(text)
        except ManifestFormatError:
            pass


RECORD = build_verify_record(
    VerifyRecord(MANIFEST.started, False, "vda: a frame is damaged", "0.1.0")
)


@BOUNDED
@given(st.data())
def test_forged_verify_record(data: st.DataObject) -> None:
    try:
        record = parse_verify_record(_forged(RECORD, data))
    except ManifestFormatError:
        return
    assert record.problem is None or isinstance(record.problem, str)
    assert isinstance(record.ok, bool)


@BOUNDED
@given(json_values | st.text(max_size=100).map(json.dumps))
def test_any_json_as_verify_record(document: Any) -> None:
    try:
        parse_verify_record(json.dumps(document))
    except ManifestFormatError:
        pass


# -- the stream index -------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
digest_names = st.sampled_from(
    [b"sha256", b"md5", b"shake_128", b"sha512", b"blake2b", b"", b"\xff\xfe", b"sha256\0x"]
)
chunk_sizes = st.sampled_from([0, 1, 4095, 4096, 1 << 20, 4 << 20, 64 << 20, (64 << 20) + 1])
chunk_sizes = chunk_sizes | u32


HONEST_CHUNKS = [MIN_CHUNK_SIZE, 1 << 20, 4 << 20, MAX_CHUNK_SIZE]
INDEX_FIELDS = [
    None,
    "magic",
    "version",
    "chunk",
    "data_size",
    "count",
    "frame_digest",
    "whole_name",
    "whole_digest",
    "entry",
    "offset",
    "cut",
]


@st.composite
def index_contents(draw: st.DrawFn) -> tuple[bytes, int]:
    """An honest index frame's content with at most one field forged, and a body digest
    that matches (as a forger recomputes it): the rules on the fields must refuse it."""
    forged = draw(st.sampled_from(INDEX_FIELDS))

    def pick(field: str, honest: Any, strategy: st.SearchStrategy[Any]) -> Any:
        return draw(strategy) if forged == field else honest

    chunk = pick("chunk", draw(st.sampled_from(HONEST_CHUNKS)), u32 | chunk_sizes)
    count = draw(st.integers(0, 4))
    fields = []
    data_at = stored_at = 0
    for number in range(count):
        length = chunk if number < count - 1 else draw(st.integers(1, max(1, chunk)))
        stored = draw(st.integers(1, min(max_stored_length(max(chunk, 1)), 1 << 16)))
        flags = draw(st.sampled_from([0, 1]))
        fields.append(
            [stored_at, stored, data_at, length, flags, draw(st.binary(min_size=32, max_size=32))]
        )
        data_at += length
        stored_at += stored
    if forged == "entry" and fields:
        entry = draw(st.sampled_from(fields))
        slot = draw(st.integers(0, 5))
        entry[slot] = draw([u64, u32, u64, u32, u8, st.binary(min_size=32, max_size=32)][slot])
    header = INDEX_HEADER.pack(
        pick("magic", INDEX_MAGIC, st.binary(min_size=8, max_size=8)),
        pick("version", 1, u16),
        chunk,
        pick("data_size", data_at, u64),
        pick("count", count, u64),
        pick("frame_digest", b"sha256", digest_names),
        pick(
            "whole_name",
            chunked_digest_name(max(chunk, 1)).encode(),
            st.binary(max_size=32)
            | st.sampled_from([b"sha256-4MiB-chunks", b"shake_128-4MiB-chunks", b"md5-1B-chunks"]),
        )[:32],
        pick(
            "whole_digest",
            draw(st.binary(min_size=32, max_size=32)) + bytes(32),
            st.binary(min_size=64, max_size=64),
        ),
    )
    body = header + b"".join(INDEX_ENTRY.pack(*entry) for entry in fields)
    index_offset = pick("offset", stored_at, u64)
    content = body + hashlib.sha256(body).digest() + INDEX_FOOTER.pack(index_offset, FOOTER_MAGIC)
    cut = pick("cut", len(content), st.integers(0, len(content)))
    return content[:cut], index_offset


@BOUNDED
@given(index_contents())
def test_any_index(case: tuple[bytes, int]) -> None:
    content, index_offset = case
    try:
        header, entries = parse_index_content(content, index_offset)
    except IndexFormatError:
        return
    assert header.frame_digest == "sha256"
    assert MIN_CHUNK_SIZE <= header.chunk_size <= MAX_CHUNK_SIZE
    assert sum(e.data_length for e in entries) == header.data_size
    assert all(0 < e.stored_length <= max_stored_length(header.chunk_size) for e in entries)


@BOUNDED
@given(st.binary(max_size=600), u64)
def test_any_bytes_as_index(content: bytes, index_offset: int) -> None:
    try:
        parse_index_content(content, index_offset)
    except IndexFormatError:
        pass


# -- the undo journal -------------------------------------------------------------------

JOURNAL = Journal(
    run_id="r1",
    pid=4242,
    created="2025-01-25T18:30:00Z",
    uri="qemu:///system",
    domain_uuid="6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
    domain_name="web1",
    entries=(),
)
JOURNAL = JOURNAL.add(StateRecord(DomainState.RUNNING, restart=True))[0]
JOURNAL = JOURNAL.add(
    OverlayRecord("vda", "/images/web1.qcow2", "file", "qcow2", "/images/web1.vb-1.qcow2")
)[0]
JOURNAL_TEXT = json.dumps(journal_to_dict(JOURNAL))


@BOUNDED
@given(st.data())
def test_forged_journal_field(data: st.DataObject) -> None:
    try:
        journal_from_dict(json.loads(_forged(JOURNAL_TEXT, data)))
    except JournalError:
        pass


@BOUNDED
@given(json_values)
def test_any_json_as_journal(document: Any) -> None:
    try:
        journal_from_dict(document)
    except JournalError:
        pass


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200) | st.just(JOURNAL_TEXT.encode()[:-1]))
def test_any_journal_file(tmp_path_factory: Any, raw: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("journal")) / "j.json"
    path.write_bytes(raw)
    try:
        load_journal(path)
    except JournalError:
        pass


def test_pathological_journal_file_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    for raw in (b"[" * 100_000, b"1" * 5000, b"\xff\xfe"):
        path.write_bytes(raw)
        try:
            load_journal(path)
        except JournalError as err:
            assert str(path) in str(err)
        else:
            raise AssertionError(f"{raw[:10]!r} was read as a journal")
