"""`manifest.json` of a backup: pure build and parse, with a version (the fields are read
strictly through core/json_fields; `verified.json` is core/verify_record).

manifest.json (format_version 1)::

    {
      "tool": "virtbackup", "tool_version": "0.1.0", "format_version": 1,
      "domain": {"name": "web1", "uuid": "..."},
      "started": "2025-01-25T18:30:00Z", "finished": "2025-01-25T18:31:12Z",
      "method": "offline",
      "disks": [{
        "target": "vda", "source": "/var/lib/libvirt/images/web1.qcow2",
        "format": "qcow2", "virtual_size": 21474836480, "byte_size": 1234567168,
        "stored_size": 456789012, "file": "vda.qcow2.lz4",
        "stream_format_version": 1, "chunk_size": 4194304,
        "digest_algorithm": "sha256-4MiB-chunks", "digest": "<hex, see below>"
      }],
      "left_out": [{"target": "sda", "reason": "SCSI passthrough (lun): ..."}],
      "domain_xml_sha256": "<hex>",
      "checkpoint": "virtbackup-20250125T183000Z-1a2b3c"
    }

`left_out` lists the domain's disks that are not in the backup, each with the reason
(excluded by configuration, removable media, a disk that cannot be backed up); it is
written only when there are any, so a manifest without it has every disk.
`domain_xml_sha256` is the sha256 of the domain XML the backup holds (the cleartext of
`domain.xml.age` when encrypted): it binds that file to this manifest. A manifest
without it (an older backup) binds nothing and its domain XML is read as it is.

`source` is the disk's image file or block device, or for a network disk its location
as `protocol://host:port/name` (core/network_source.py), never its credentials.
`byte_size` is the size of the source file or device (what `lz4 -d` gives back),
`virtual_size` what the guest sees, `stored_size` the size of the stream file.
`digest` is the whole-disk digest of the uncompressed bytes named by `digest_algorithm`
(specified in core/streamformat.py; its chunk size equals `chunk_size`). For
``sha256-4MiB-chunks`` a user checks it with
``lz4 -dc vda.qcow2.lz4 | split -b 4194304 --filter=sha256sum | sha256sum``.

`checkpoint` names the libvirt checkpoint made at this backup's instant (the backup-API
method, core/backup_job.py): the next backup reads only what changed since it. Written
only by that method; a manifest without it has no change tracking to offer.

A backup in the deduplicating repository (core/repository_format.py) has, per disk,
``"layout": "repository"``, ``"file": "vda.qcow2.idx"`` (its index of chunks) and
``"index_sha256"`` (the sha256 of that index file); its ``stored_size`` is what this backup
added to DEST (the index and the chunks it was the first to store), the digest is the same
whole-disk digest. A disk record without ``layout`` is a stream.

An encrypted backup (`--encrypt`) keeps that manifest as `manifest.json.age` and beside it
a public `manifest.json` with what listing and retention need without a key::

    {
      "tool": "virtbackup", "tool_version": "0.1.0", "format_version": 1,
      "encryption": {"scheme": "age", "recipients": ["sha256:<16 hex>"]},
      "domain": {"name": "web1"},
      "started": "...Z", "finished": "...Z", "method": "snapshot",
      "files": [{"file": "vda.qcow2.lz4.age", "target": "vda", "stored_size": 456789999},
                {"file": "domain.xml.age", "stored_size": 2345}, ...]
    }

A disk of an encrypted backup in the repository is listed by its index (``vda.raw.idx``,
not encrypted: it holds keyed chunk names only, see core/repository_format.py), so that
garbage collection finds the chunks it uses without a key.
"""

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from virtbackup import FORMAT_VERSION
from virtbackup.core.backup_job import is_checkpoint_name
from virtbackup.core.backup_names import (
    AGE_SUFFIX,
    STREAM_SUFFIX,
    is_disk_format,
    is_disk_target,
    is_domain_name,
    stream_file_name,
)
from virtbackup.core.json_fields import (
    ManifestFormatError,
    field,
    format_time,
    load_object,
    shown,
    size_field,
    time_field,
    version_field,
)
from virtbackup.core.model import Method
from virtbackup.core.repository_format import index_file_name, is_index_file_name
from virtbackup.core.streamformat import (
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    STREAM_FORMAT_VERSION,
    chunked_digest_name,
)

TOOL_NAME = "virtbackup"

# Every field is checked as it is read (a backup is untrusted input): anything a writer
# of this format cannot have produced is a ManifestFormatError naming the field.
MAX_DISKS = 1024
MAX_PATH = 4096
METHODS = frozenset(m.value for m in Method if m is not Method.AUTO)
SEALED_SCHEME = "age"
SEALED_EXTRA_FILES = ("domain.xml" + AGE_SUFFIX, "manifest.json" + AGE_SUFFIX)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_RECIPIENT = re.compile(r"sha256:[0-9a-f]{16}")
LAYOUT_STREAM = "stream"
LAYOUT_REPOSITORY = "repository"
LAYOUTS = (LAYOUT_STREAM, LAYOUT_REPOSITORY)


@dataclass(frozen=True)
class DiskRecord:
    target: str
    source: str
    format: str
    virtual_size: int
    byte_size: int
    stored_size: int
    file: str
    stream_format_version: int
    chunk_size: int
    digest_algorithm: str
    digest: str
    # --skip-free: the stream holds the guest's used blocks only (same files, not the
    # same image bytes); written to the manifest only when true
    free_space_skipped: bool = False
    # "stream": `file` is the disk's stream (core/streamformat.py); "repository": `file`
    # is its index of chunks in the repository (core/repository_format.py), bound to this
    # manifest by `index_sha256`. Both written only for the repository layout.
    layout: str = LAYOUT_STREAM
    index_sha256: str | None = None

    @property
    def in_repository(self) -> bool:
        return self.layout == LAYOUT_REPOSITORY


@dataclass(frozen=True)
class LeftOutDisk:
    """A disk of the domain that is not in the backup, and why."""

    target: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    tool_version: str
    domain_name: str
    domain_uuid: str
    started: datetime
    finished: datetime
    method: str
    disks: tuple[DiskRecord, ...]
    format_version: int = FORMAT_VERSION
    left_out: tuple[LeftOutDisk, ...] = ()
    domain_xml_sha256: str | None = None  # None: an older backup, written without it
    checkpoint: str | None = None  # the checkpoint of its instant (backup-api); None: none

    @property
    def stored_size(self) -> int:
        return sum(disk.stored_size for disk in self.disks)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(disk.target for disk in self.disks)


@dataclass(frozen=True)
class StoredFile:
    file: str
    stored_size: int
    target: str | None = None  # the disk whose stream this is


@dataclass(frozen=True)
class Sealed:
    """The public manifest of an encrypted backup: no paths, uuid or digests."""

    tool_version: str
    domain_name: str
    started: datetime
    finished: datetime
    method: str
    recipients: tuple[str, ...]  # fingerprints of the public keys, never a key
    files: tuple[StoredFile, ...]
    scheme: str = "age"
    format_version: int = FORMAT_VERSION

    @property
    def stored_size(self) -> int:
        return sum(f.stored_size for f in self.files)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(f.target for f in self.files if f.target is not None)


def build_manifest(manifest: Manifest) -> str:
    document = {
        "tool": TOOL_NAME,
        "tool_version": manifest.tool_version,
        "format_version": manifest.format_version,
        "domain": {"name": manifest.domain_name, "uuid": manifest.domain_uuid},
        "started": format_time(manifest.started),
        "finished": format_time(manifest.finished),
        "method": manifest.method,
        "disks": [_disk_document(disk) for disk in manifest.disks],
    }
    if manifest.left_out:
        document["left_out"] = [
            {"target": disk.target, "reason": disk.reason} for disk in manifest.left_out
        ]
    if manifest.domain_xml_sha256 is not None:
        document["domain_xml_sha256"] = manifest.domain_xml_sha256
    if manifest.checkpoint is not None:
        document["checkpoint"] = manifest.checkpoint
    return json.dumps(document, indent=2) + "\n"


def build_sealed(sealed: Sealed) -> str:
    document = {
        "tool": TOOL_NAME,
        "tool_version": sealed.tool_version,
        "format_version": sealed.format_version,
        "encryption": {"scheme": sealed.scheme, "recipients": list(sealed.recipients)},
        "domain": {"name": sealed.domain_name},
        "started": format_time(sealed.started),
        "finished": format_time(sealed.finished),
        "method": sealed.method,
        "files": [{k: v for k, v in f.__dict__.items() if v is not None} for f in sealed.files],
    }
    return json.dumps(document, indent=2) + "\n"


def parse_any_manifest(text: str) -> Manifest | Sealed:
    """A backup's manifest.json: the manifest, or the public one of an encrypted backup."""
    document = _versioned(text)
    if "encryption" in document:
        return _parse_sealed(document)
    return _parse_manifest_document(document)


def parse_manifest(text: str) -> Manifest:
    document = _versioned(text)
    if "encryption" in document:
        raise ManifestFormatError("it is the public manifest of an encrypted backup")
    return _parse_manifest_document(document)


def _versioned(text: str) -> dict[str, Any]:
    document = load_object(text)
    if document.get("tool") != TOOL_NAME:
        raise ManifestFormatError("it was not written by virtbackup")
    version = field(document, "format_version", int)
    if version != FORMAT_VERSION:
        raise ManifestFormatError(
            f"format version {version} is not supported (this virtbackup reads "
            f"version {FORMAT_VERSION})"
        )
    return document


def _parse_sealed(document: dict[str, Any]) -> Sealed:
    encryption = field(document, "encryption", dict)
    scheme = field(encryption, "scheme", str)
    if scheme != SEALED_SCHEME:
        raise ManifestFormatError(f"encryption scheme {shown(scheme)} is not supported")
    recipients = field(encryption, "recipients", list)
    if not recipients or len(recipients) > MAX_DISKS:
        raise ManifestFormatError("'recipients' is empty or too long")
    for recipient in recipients:
        if not isinstance(recipient, str) or not _RECIPIENT.fullmatch(recipient):
            raise ManifestFormatError(
                f"recipient {shown(recipient)} is not a key fingerprint like sha256:<16 hex>"
            )
    entries = field(document, "files", list)
    if len(entries) > MAX_DISKS + len(SEALED_EXTRA_FILES):
        raise ManifestFormatError("'files' lists too many files")
    files = tuple(_parse_stored_file(entry, number) for number, entry in enumerate(entries))
    _unique("files", [f.file for f in files])
    _unique("files", [f.target for f in files if f.target is not None])
    domain = field(document, "domain", dict)
    return Sealed(
        tool_version=version_field(document, "tool_version"),
        domain_name=_domain_name(domain),
        started=time_field(document, "started"),
        finished=time_field(document, "finished"),
        method=_method(document),
        recipients=tuple(recipients),
        files=files,
        scheme=scheme,
    )


def _parse_stored_file(entry: object, number: int) -> StoredFile:
    where = f"files[{number}]"
    if not isinstance(entry, dict):
        raise ManifestFormatError(f"{where} is not an object")
    name = field(entry, "file", str, where)
    stored_size = size_field(entry, "stored_size", where)
    if "target" not in entry:
        if name not in SEALED_EXTRA_FILES:
            raise ManifestFormatError(f"{where}.file {shown(name)} is not a file of a backup")
        return StoredFile(name, stored_size)
    target = _target_field(entry, where)
    if name.startswith(f"{target}.") and is_index_file_name(name):
        return StoredFile(name, stored_size, target)  # a disk in the repository
    fmt = name[len(target) + 1 : -len(STREAM_SUFFIX + AGE_SUFFIX)]
    if not is_disk_format(fmt) or name != stream_file_name(target, fmt, True):
        raise ManifestFormatError(
            f"{where}.file {shown(name)} is not the stream file of disk {target}"
        )
    return StoredFile(name, stored_size, target)


def _parse_manifest_document(document: dict[str, Any]) -> Manifest:
    version = document["format_version"]
    domain = field(document, "domain", dict)
    disks = field(document, "disks", list)
    if not disks or len(disks) > MAX_DISKS:
        raise ManifestFormatError(f"'disks' lists {len(disks)} disks")
    records = tuple(_parse_disk(disk, number) for number, disk in enumerate(disks))
    _unique("disks", [disk.target for disk in records])
    uuid = field(domain, "uuid", str, "domain")
    if not _UUID.fullmatch(uuid):
        raise ManifestFormatError(f"domain.uuid {shown(uuid)} is not a UUID")
    return Manifest(
        tool_version=version_field(document, "tool_version"),
        domain_name=_domain_name(domain),
        domain_uuid=uuid,
        started=time_field(document, "started"),
        finished=time_field(document, "finished"),
        method=_method(document),
        disks=records,
        format_version=version,
        left_out=_parse_left_out(document),
        domain_xml_sha256=_parse_xml_digest(document),
        checkpoint=_parse_checkpoint(document),
    )


def _parse_checkpoint(document: dict[str, Any]) -> str | None:
    if "checkpoint" not in document:
        return None
    name: str = field(document, "checkpoint", str)
    if not is_checkpoint_name(name):
        raise ManifestFormatError(f"checkpoint {shown(name)} is not a checkpoint of ours")
    return name


def _parse_xml_digest(document: dict[str, Any]) -> str | None:
    if "domain_xml_sha256" not in document:
        return None
    digest: str = field(document, "domain_xml_sha256", str)
    if not _HEX_DIGEST.fullmatch(digest):
        raise ManifestFormatError("domain_xml_sha256 is not a sha256 in hex")
    return digest


MAX_REASON = 1024  # a left-out disk's reason: one line shown in summaries


def _parse_left_out(document: dict[str, Any]) -> tuple[LeftOutDisk, ...]:
    if "left_out" not in document:
        return ()
    entries = []
    for number, entry in enumerate(field(document, "left_out", list)):
        where = f"left_out[{number}]"
        if not isinstance(entry, dict) or set(entry) != {"target", "reason"}:
            raise ManifestFormatError(f"{where} is not {{target, reason}}")
        reason = field(entry, "reason", str, where)
        if len(reason) > MAX_REASON or not reason.isprintable():
            raise ManifestFormatError(f"{where}.reason is not one line of text")
        entries.append(LeftOutDisk(_target_field(entry, where), reason))
    return tuple(entries)


def _disk_document(disk: DiskRecord) -> dict[str, Any]:
    document = dict(disk.__dict__)
    if not disk.free_space_skipped:
        del document["free_space_skipped"]
    if not disk.in_repository:
        del document["layout"], document["index_sha256"]
    return document


def _parse_disk(disk: object, number: int) -> DiskRecord:
    where = f"disks[{number}]"
    if not isinstance(disk, dict):
        raise ManifestFormatError(f"{where} is not an object")
    target = _target_field(disk, where)
    fmt = field(disk, "format", str, where)
    if not is_disk_format(fmt):
        raise ManifestFormatError(f"{where}.format {shown(fmt)} is not a disk image format")
    source = field(disk, "source", str, where)
    if not source or len(source) > MAX_PATH or "\0" in source:
        raise ManifestFormatError(f"{where}.source is not a path")
    layout = LAYOUT_STREAM
    index_sha256 = None
    if "layout" in disk:
        layout = field(disk, "layout", str, where)
        if layout != LAYOUT_REPOSITORY:
            raise ManifestFormatError(f"{where}.layout {shown(layout)} is not supported")
        index_sha256 = field(disk, "index_sha256", str, where)
        if not _HEX_DIGEST.fullmatch(index_sha256):
            raise ManifestFormatError(f"{where}.index_sha256 is not a sha256 in hex")
        names: tuple[str, ...] = (index_file_name(target, fmt),)
    else:
        names = (stream_file_name(target, fmt), stream_file_name(target, fmt, True))
    name = field(disk, "file", str, where)
    if name not in names:
        raise ManifestFormatError(f"{where}.file {shown(name)} is not {names[0]}")
    version = field(disk, "stream_format_version", int, where)
    if version != STREAM_FORMAT_VERSION:
        raise ManifestFormatError(
            f"{where}.stream_format_version {version} is not supported (this virtbackup "
            f"reads version {STREAM_FORMAT_VERSION})"
        )
    chunk_size = field(disk, "chunk_size", int, where)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestFormatError(f"{where}.chunk_size {chunk_size} is out of range")
    algorithm = field(disk, "digest_algorithm", str, where)
    if algorithm != chunked_digest_name(chunk_size):
        raise ManifestFormatError(
            f"{where}.digest_algorithm {shown(algorithm)} is not {chunked_digest_name(chunk_size)}"
        )
    digest = field(disk, "digest", str, where)
    if not _HEX_DIGEST.fullmatch(digest):
        raise ManifestFormatError(f"{where}.digest is not a sha256 in hex")
    skipped = False
    if "free_space_skipped" in disk:
        skipped = field(disk, "free_space_skipped", bool, where)
    return DiskRecord(
        target=target,
        source=source,
        format=fmt,
        virtual_size=size_field(disk, "virtual_size", where),
        byte_size=size_field(disk, "byte_size", where),
        stored_size=size_field(disk, "stored_size", where),
        file=name,
        stream_format_version=version,
        chunk_size=chunk_size,
        digest_algorithm=algorithm,
        digest=digest,
        free_space_skipped=skipped,
        layout=layout,
        index_sha256=index_sha256,
    )


def _target_field(document: dict[str, Any], where: str) -> str:
    target: str = field(document, "target", str, where)
    if not is_disk_target(target):
        raise ManifestFormatError(
            f"{where}.target {shown(target)} is not a disk target name like vda or sdb"
        )
    return target


def _domain_name(domain: dict[str, Any]) -> str:
    name: str = field(domain, "name", str, "domain")
    if not is_domain_name(name):
        raise ManifestFormatError(f"domain.name {shown(name)} is not a domain name")
    return name


def _method(document: dict[str, Any]) -> str:
    method: str = field(document, "method", str)
    if method not in METHODS:
        raise ManifestFormatError(f"method {shown(method)} is not a backup method")
    return method


def _unique(what: str, names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise ManifestFormatError(f"'{what}' names a disk or file twice")
