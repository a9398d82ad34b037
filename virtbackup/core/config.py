"""The configuration file (TOML): parsed and checked as pure data.

Every key is known; an unknown key or a bad value is a ConfigError naming the file, the
line and the key, so an admin can fix /etc/virtbackup.toml from one line of cron mail.
Options given on the command line override what the file says (the CLI merges them).
contrib/virtbackup.toml is the commented example of every key.
"""

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from virtbackup.core.errors import ConfigError
from virtbackup.core.manifest import LAYOUTS
from virtbackup.core.model import Method
from virtbackup.core.retention import Policy
from virtbackup.core.streamformat import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

MAX_LZ4_LEVEL = 12  # as the lz4 tool: up to 2 fast, 3 to 12 LZ4HC


@dataclass(frozen=True)
class SnapshotSize:
    """LVM snapshot size: a share of the origin LV (percent) or a fixed byte count."""

    percent: float | None = None
    bytes: int | None = None


@dataclass(frozen=True)
class DomainSettings:
    """What applies to one domain, after the per-domain overrides."""

    method: Method = Method.AUTO
    exclude_disks: tuple[str, ...] = ()
    shutdown_timeout: int = 300
    force_off: bool = False
    snapshot_size: SnapshotSize = SnapshotSize(percent=10.0)
    trim: bool = False
    skip_free: bool = False
    retention: Policy = Policy()


@dataclass(frozen=True)
class RemoteSettings:
    """[remote]: where backups are copied offsite (an rclone remote)."""

    location: str  # rclone "name:path"
    rclone_config: Path | None = None
    bwlimit: str | None = None  # as rclone's --bwlimit, e.g. "10M" or "08:00,1M 23:00,off"
    retries: int = 3
    only: bool = False  # stream to the remote, keep no local copy
    host: str | None = None  # namespace on the remote [default: the host name]


DEFAULT_GC_GRACE = 300  # seconds; see engine/stores/gc.py


@dataclass(frozen=True)
class Config:
    dest: Path | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    workers: int | None = None
    compression_level: int = 0
    layout: str | None = None  # how `backup` and `all` store disks; None: cli/backup_options
    bwlimit: int | None = None
    overlay_dir: Path | None = None
    hooks_before: tuple[str, ...] = ()
    hooks_after: tuple[str, ...] = ()
    encrypt: Path | None = None  # age recipients file
    sign_key: Path | None = None  # OpenSSH private key that signs every backup
    allowed_signers: Path | None = None  # whose signatures verify/restore/backups trust
    remote: RemoteSettings | None = None
    appliance_timeout: int = 300  # seconds a libguestfs appliance launch may take
    metrics_file: Path | None = None  # Prometheus text file written after backup and all
    gc_grace: int = DEFAULT_GC_GRACE  # seconds a chunk stays after its last use
    repository_chunk_size: int | None = None  # of a repository made anew; None: the default
    defaults: DomainSettings = DomainSettings()
    overrides: dict[str, DomainSettings] = field(default_factory=dict)

    def for_domain(self, name: str) -> DomainSettings:
        return self.overrides.get(name, self.defaults)

    def selects(self, name: str) -> bool:
        included = any(fnmatch.fnmatchcase(name, glob) for glob in self.include)
        return included and not any(fnmatch.fnmatchcase(name, glob) for glob in self.exclude)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'512', '100M', '2G', '1.5GiB' -> bytes (binary units). ValueError when not a size."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 512M, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_chunk_size(text: str) -> int:
    """A repository's chunk size: a power of two the format allows (4K to 64M)."""
    size = parse_size(text)
    if size & (size - 1) or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"{text!r} is not a power of two from {MIN_CHUNK_SIZE >> 10}K "
            f"to {MAX_CHUNK_SIZE >> 20}M (e.g. 64K, 4M)"
        )
    return size


def parse_rate(text: str) -> int:
    """A read limit in bytes per second, as parse_size. Zero is refused rather than read
    as "no limit" (rclone's meaning) or as "stop": no limit is said by giving none."""
    rate = parse_size(text)
    if rate < 1:
        raise ValueError(f"{text!r} is no rate (for no limit, leave the limit out)")
    return rate


_ZERO_RATE = re.compile(r"^\s*0+(\.0*)?\s*[KMGTP]?(i?B)?\s*$", re.IGNORECASE)


def check_remote_rate(text: str) -> str:
    """An upload limit handed to rclone's --bwlimit as it is. rclone reads 0 as no limit
    at all; that is asked for with "off", so that a 0 cannot be meant as a small rate."""
    if _ZERO_RATE.match(text):
        raise ValueError(f'{text!r} means no limit to rclone: write "off" for that')
    return text


def parse_snapshot_size(text: str) -> SnapshotSize:
    if text.strip().endswith("%"):
        percent = float(text.strip()[:-1])
        if not 0 < percent <= 100:
            raise ValueError(f"{text!r}: a share must be above 0 % and at most 100 %")
        return SnapshotSize(percent=percent)
    return SnapshotSize(bytes=parse_size(text))


class _Reader:
    """Checks one table of the file, naming file, line and dotted key in every error."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = text.splitlines()

    def fail(self, table: tuple[str, ...], key: str, problem: str) -> ConfigError:
        dotted = ".".join((*table, key))
        return ConfigError(f"{self.source}:{self.line_of(table, key)}: {dotted}: {problem}")

    def line_of(self, table: tuple[str, ...], key: str) -> int:
        """Line of `key` inside [table]; tomllib keeps no positions, so scan the text."""
        in_table = not table
        key_pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
        for number, line in enumerate(self.lines, start=1):
            header = re.match(r"^\s*\[+\s*(.*?)\s*\]+", line)
            if header:
                in_table = _split_table(header.group(1)) == table
                if in_table and not key:
                    return number
                continue
            if in_table and key and key_pattern.match(line):
                return number
        return 1

    def known(self, table: tuple[str, ...], data: dict[str, Any], allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                raise self.fail(table, key, f"unknown key (known here: {hint})")

    def typed(self, table: tuple[str, ...], data: dict[str, Any], key: str, kind: type) -> Any:
        value = data[key]
        # TOML booleans are not integers for us, though bool subclasses int in Python
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(table, key, f"expected {kind.__name__}, got {value!r}")
        return value

    def string_list(
        self, table: tuple[str, ...], data: dict[str, Any], key: str
    ) -> tuple[str, ...]:
        value = data[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(table, key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def positive(
        self, table: tuple[str, ...], data: dict[str, Any], key: str, unit: str = ""
    ) -> int:
        """An integer of at least 1 (`unit` names what it counts in the error)."""
        value = self.typed(table, data, key, int)
        if value < 1:
            raise self.fail(table, key, f"must be at least 1{unit}")
        return int(value)

    def convert(self, table: tuple[str, ...], key: str, parse: Any, value: Any) -> Any:
        try:
            return parse(value)
        except (ValueError, TypeError) as err:
            raise self.fail(table, key, str(err)) from None


def _split_table(header: str) -> tuple[str, ...]:
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|([^.\s]+)', header)
    return tuple(quoted or bare for quoted, bare in parts)


DOMAIN_KEYS = {f.name for f in fields(DomainSettings)}
TOP_KEYS = (DOMAIN_KEYS - {"exclude_disks"}) | {
    "dest",
    "include",
    "exclude",
    "workers",
    "compression_level",
    "layout",
    "bwlimit",
    "overlay_dir",
    "hooks",
    "domain",
    "encrypt",
    "sign_key",
    "allowed_signers",
    "remote",
    "appliance_timeout",
    "metrics_file",
    "gc_grace",
    "repository_chunk_size",
}
REMOTE_KEYS = {"location", "rclone_config", "bwlimit", "retries", "only", "host"}
RETENTION_KEYS = {f.name for f in fields(Policy)}


def parse_config(text: str, source: str = "<config>") -> Config:
    reader = _Reader(source, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    reader.known((), data, TOP_KEYS)

    config = Config()
    top: tuple[str, ...] = ()
    if "dest" in data:
        config = replace(config, dest=Path(reader.typed(top, data, "dest", str)))
    if "overlay_dir" in data:
        config = replace(config, overlay_dir=Path(reader.typed(top, data, "overlay_dir", str)))
    if "include" in data:
        config = replace(config, include=reader.string_list(top, data, "include"))
    if "exclude" in data:
        config = replace(config, exclude=reader.string_list(top, data, "exclude"))
    if "workers" in data:
        config = replace(config, workers=reader.positive(top, data, "workers"))
    if "compression_level" in data:
        level = reader.typed(top, data, "compression_level", int)
        if not 0 <= level <= MAX_LZ4_LEVEL:
            raise reader.fail(top, "compression_level", f"must be 0 to {MAX_LZ4_LEVEL}")
        config = replace(config, compression_level=level)
    if "layout" in data:
        layout = reader.typed(top, data, "layout", str)
        if layout not in LAYOUTS:
            raise reader.fail(top, "layout", f"{layout!r} is not one of {', '.join(LAYOUTS)}")
        config = replace(config, layout=layout)
    if "bwlimit" in data:
        limit = reader.convert(top, "bwlimit", parse_rate, reader.typed(top, data, "bwlimit", str))
        config = replace(config, bwlimit=limit)
    if "appliance_timeout" in data:
        timeout = reader.positive(top, data, "appliance_timeout", " second")
        config = replace(config, appliance_timeout=timeout)
    if "metrics_file" in data:
        metrics = Path(reader.typed(top, data, "metrics_file", str))
        config = replace(config, metrics_file=metrics)
    if "gc_grace" in data:
        grace = reader.typed(top, data, "gc_grace", int)
        if grace < 0:
            raise reader.fail(top, "gc_grace", "must be 0 seconds or more")
        config = replace(config, gc_grace=grace)
    if "repository_chunk_size" in data:
        text = reader.typed(top, data, "repository_chunk_size", str)
        size = reader.convert(top, "repository_chunk_size", parse_chunk_size, text)
        config = replace(config, repository_chunk_size=size)
    if "hooks" in data:
        hooks = reader.typed(top, data, "hooks", dict)
        reader.known(("hooks",), hooks, {"before", "after"})
        if "before" in hooks:
            config = replace(config, hooks_before=reader.string_list(("hooks",), hooks, "before"))
        if "after" in hooks:
            config = replace(config, hooks_after=reader.string_list(("hooks",), hooks, "after"))

    if "encrypt" in data:
        config = replace(config, encrypt=Path(reader.typed(top, data, "encrypt", str)))
    if "sign_key" in data:
        config = replace(config, sign_key=Path(reader.typed(top, data, "sign_key", str)))
    if "allowed_signers" in data:
        signers = Path(reader.typed(top, data, "allowed_signers", str))
        config = replace(config, allowed_signers=signers)
    if "remote" in data:
        config = replace(
            config, remote=_remote_settings(reader, reader.typed(top, data, "remote", dict))
        )

    defaults = _domain_settings(reader, top, data, DomainSettings())
    overrides = {}
    for name, table in reader.typed(top, data, "domain", dict).items() if "domain" in data else []:
        where = ("domain", name)
        if not isinstance(table, dict):
            raise reader.fail(("domain",), name, 'expected a table [domain."NAME"]')
        reader.known(where, table, DOMAIN_KEYS)
        overrides[name] = _domain_settings(reader, where, table, defaults)
    return replace(config, defaults=defaults, overrides=overrides)


def _remote_settings(reader: _Reader, data: dict[str, Any]) -> RemoteSettings:
    where = ("remote",)
    reader.known(where, data, REMOTE_KEYS)
    if "location" not in data:
        raise reader.fail((), "remote", 'needs location = "NAME:PATH" (an rclone remote)')
    location = reader.typed(where, data, "location", str)
    if ":" not in location:
        raise reader.fail(where, "location", f"{location!r} is not an rclone remote NAME:PATH")
    settings = RemoteSettings(location=location)
    if "rclone_config" in data:
        path = Path(reader.typed(where, data, "rclone_config", str))
        settings = replace(settings, rclone_config=path)
    if "bwlimit" in data:
        rate = reader.typed(where, data, "bwlimit", str)
        settings = replace(
            settings, bwlimit=reader.convert(where, "bwlimit", check_remote_rate, rate)
        )
    if "host" in data:
        settings = replace(settings, host=reader.typed(where, data, "host", str))
    if "retries" in data:
        settings = replace(settings, retries=reader.positive(where, data, "retries"))
    if "only" in data:
        settings = replace(settings, only=reader.typed(where, data, "only", bool))
    return settings


def _domain_settings(
    reader: _Reader, where: tuple[str, ...], data: dict[str, Any], base: DomainSettings
) -> DomainSettings:
    settings = base
    if "method" in data:
        method = reader.typed(where, data, "method", str)
        choices = [m.value for m in Method]
        if method not in choices:
            raise reader.fail(where, "method", f"{method!r} is not one of {', '.join(choices)}")
        settings = replace(settings, method=Method(method))
    if "exclude_disks" in data:
        settings = replace(settings, exclude_disks=reader.string_list(where, data, "exclude_disks"))
    if "shutdown_timeout" in data:
        timeout = reader.positive(where, data, "shutdown_timeout", " second")
        settings = replace(settings, shutdown_timeout=timeout)
    for flag in ("force_off", "trim", "skip_free"):
        if flag in data:
            settings = replace(settings, **{flag: reader.typed(where, data, flag, bool)})
    if "snapshot_size" in data:
        text = reader.typed(where, data, "snapshot_size", str)
        size = reader.convert(where, "snapshot_size", parse_snapshot_size, text)
        settings = replace(settings, snapshot_size=size)
    if "retention" in data:
        table = reader.typed(where, data, "retention", dict)
        rwhere = (*where, "retention")
        reader.known(rwhere, table, RETENTION_KEYS)
        counts = {}
        for key in table:
            count = reader.typed(rwhere, table, key, int)
            if count < 0:
                raise reader.fail(rwhere, key, "must be 0 or more")
            counts[key] = count
        settings = replace(settings, retention=replace(settings.retention, **counts))
    return settings


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read configuration {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(text, str(path))
