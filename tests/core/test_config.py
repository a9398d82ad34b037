"""The configuration file: every key read, every mistake named with file, line and key."""

from pathlib import Path

import pytest

from virtbackup.core.config import (
    Config,
    RemoteSettings,
    SnapshotSize,
    load_config,
    parse_config,
    parse_size,
    parse_snapshot_size,
)
from virtbackup.core.errors import ConfigError, ExitCode
from virtbackup.core.model import Method
from virtbackup.core.retention import Policy

EXAMPLE = Path(__file__).parents[2] / "contrib" / "virtbackup.toml"

FULL = """\
dest = "/srv/backup"
method = "snapshot"
include = ["web-*", "db*"]
exclude = ["*-test"]
workers = 2
compression_level = 3
layout = "repository"
bwlimit = "100M"
overlay_dir = "/var/tmp/overlays"
shutdown_timeout = 120
force_off = true
snapshot_size = "2G"
trim = true
skip_free = true
appliance_timeout = 90
metrics_file = "/var/lib/node_exporter/textfile/virtbackup.prom"

[retention]
keep_last = 2
keep_daily = 7

[hooks]
before = ["/usr/local/bin/pre", "--quiet"]
after = ["/usr/local/bin/post"]

[domain."db server"]
method = "shutdown"
exclude_disks = ["vdb"]

[domain."db server".retention]
keep_daily = 14
"""


def test_every_key_is_read() -> None:
    config = parse_config(FULL)
    assert config.dest == Path("/srv/backup")
    assert config.include == ("web-*", "db*") and config.exclude == ("*-test",)
    assert (config.workers, config.compression_level, config.bwlimit) == (2, 3, 100 << 20)
    assert config.layout == "repository"
    assert config.overlay_dir == Path("/var/tmp/overlays")
    assert config.hooks_before == ("/usr/local/bin/pre", "--quiet")
    assert config.hooks_after == ("/usr/local/bin/post",)
    assert config.appliance_timeout == 90
    assert config.metrics_file == Path("/var/lib/node_exporter/textfile/virtbackup.prom")
    d = config.defaults
    assert d.method == Method.SNAPSHOT and d.shutdown_timeout == 120 and d.force_off and d.trim
    assert d.skip_free
    assert d.snapshot_size == SnapshotSize(bytes=2 << 30)
    assert d.retention == Policy(keep_last=2, keep_daily=7)


def test_domain_overrides_inherit_the_defaults() -> None:
    config = parse_config(FULL)
    db = config.for_domain("db server")
    assert db.method == Method.SHUTDOWN and db.exclude_disks == ("vdb",)
    assert db.shutdown_timeout == 120  # from the top level
    assert db.retention == Policy(keep_last=2, keep_daily=14)
    assert config.for_domain("web-1") == config.defaults


def test_selection_by_globs() -> None:
    config = parse_config(FULL)
    assert config.selects("web-1") and config.selects("db server")
    assert not config.selects("web-test") and not config.selects("mail")
    assert Config().selects("anything")


def test_empty_file_gives_defaults() -> None:
    assert parse_config("") == Config()


@pytest.mark.parametrize(
    ("text", "grace"), [("", 300), ("gc_grace = 0\n", 0), ("gc_grace = 60\n", 60)]
)
def test_gc_grace_in_seconds(text: str, grace: int) -> None:
    assert parse_config(text).gc_grace == grace


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("", None),
        ('repository_chunk_size = "64K"\n', 64 << 10),
        ('repository_chunk_size = "4KiB"\n', 4 << 10),
        ('repository_chunk_size = "64M"\n', 64 << 20),
    ],
)
def test_repository_chunk_size_is_a_power_of_two_the_format_allows(
    text: str, size: int | None
) -> None:
    assert parse_config(text).repository_chunk_size == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('dest = "/x"\nworkrs = 2\n', "f.toml:2: workrs: unknown key"),
        ("workers = 0\n", "f.toml:1: workers: must be at least 1"),
        ("appliance_timeout = 0\n", "f.toml:1: appliance_timeout: must be at least 1 second"),
        ("gc_grace = -1\n", "f.toml:1: gc_grace: must be 0 seconds or more"),
        ('gc_grace = "5m"\n', "f.toml:1: gc_grace: expected int, got '5m'"),
        ('workers = "2"\n', "f.toml:1: workers: expected int, got '2'"),
        ("trim = 1\n", "f.toml:1: trim: expected bool, got 1"),
        ("metrics_file = 1\n", "f.toml:1: metrics_file: expected str, got 1"),
        ("skip_free = 'yes'\n", "f.toml:1: skip_free: expected bool, got 'yes'"),
        ("workers = true\n", "f.toml:1: workers: expected int, got True"),
        ('method = "teleport"\n', "f.toml:1: method: 'teleport' is not one of auto, snapshot"),
        ('bwlimit = "fast"\n', "f.toml:1: bwlimit: 'fast' is not a size"),
        # 0 is neither "stop" nor, silently, "no limit": leaving the key out says that
        ('bwlimit = "0"\n', "f.toml:1: bwlimit: '0' is no rate (for no limit, leave"),
        ('bwlimit = "0.0001K"\n', "f.toml:1: bwlimit: '0.0001K' is no rate"),
        # rclone reads 0 as no limit: asked for with "off"
        (
            '[remote]\nlocation = "r:x"\nbwlimit = "0M"\n',
            """f.toml:3: remote.bwlimit: '0M' means no limit to rclone: write "off" for that""",
        ),
        ('snapshot_size = "150%"\n', "f.toml:1: snapshot_size: '150%': a share must be"),
        ("compression_level = 13\n", "f.toml:1: compression_level: must be 0 to 12"),
        (
            'repository_chunk_size = "96K"\n',
            "f.toml:1: repository_chunk_size: '96K' is not a power of two from 4K to 64M",
        ),
        ('repository_chunk_size = "2K"\n', "f.toml:1: repository_chunk_size: '2K' is not a"),
        ('repository_chunk_size = "128M"\n', "f.toml:1: repository_chunk_size: '128M' is not"),
        ("repository_chunk_size = 65536\n", "f.toml:1: repository_chunk_size: expected str"),
        ('layout = "chunks"\n', "f.toml:1: layout: 'chunks' is not one of stream, repository"),
        ('include = "web"\n', "f.toml:1: include: expected a list of strings"),
        ("\n[retention]\nkeep_dayly = 3\n", "f.toml:3: retention.keep_dayly: unknown key"),
        ("[retention]\nkeep_last = -1\n", "f.toml:2: retention.keep_last: must be 0 or more"),
        ("[hooks]\nbefore = [1]\n", "f.toml:2: hooks.before: expected a list of strings"),
        (
            '[domain."a b"]\nmethod = "lvm"\nbogus = 1\n',
            "f.toml:3: domain.a b.bogus: unknown key",
        ),
        (
            "[domain.web]\n[domain.web.retention]\nkeep_hourly = 1\n",
            "f.toml:3: domain.web.retention.keep_hourly: unknown key",
        ),
        ("dest = \n", "f.toml: not valid TOML: "),
    ],
)
def test_mistakes_are_named_precisely(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.toml")
    assert str(caught.value).startswith(message)
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("text", "size"), [("512", 512), ("100M", 100 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_snapshot_size_share() -> None:
    assert parse_snapshot_size("10%") == SnapshotSize(percent=10.0)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration .*missing.toml"):
        load_config(tmp_path / "missing.toml")


def test_the_shipped_example_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.dest is not None


def test_encrypt_and_remote() -> None:
    config = parse_config(
        'encrypt = "/etc/virtbackup/recipients.txt"\n'
        "[remote]\n"
        'location = "offsite:virtbackup"\n'
        'rclone_config = "/etc/virtbackup/rclone.conf"\n'
        'bwlimit = "10M"\nretries = 5\nonly = true\nhost = "kvm1"\n'
    )
    assert config.encrypt == Path("/etc/virtbackup/recipients.txt")
    assert config.remote == RemoteSettings(
        location="offsite:virtbackup",
        rclone_config=Path("/etc/virtbackup/rclone.conf"),
        bwlimit="10M",
        retries=5,
        only=True,
        host="kvm1",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[remote]\nonly = true\n", r"<config>:1: remote: needs location"),
        ('[remote]\nlocation = "nocolon"\n', r"<config>:2: remote.location: .* is not an rclone"),
        ('[remote]\nlocation = "a:b"\nretries = 0\n', r"<config>:3: remote.retries: must be"),
        ('[remote]\nlocation = "a:b"\npassword = "x"\n', r"<config>:3: remote.password: unknown"),
        ("encrypt = 3\n", r"<config>:1: encrypt: expected str"),
    ],
)
def test_bad_remote_settings(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


@pytest.mark.parametrize("rate", ["off", "10M", "08:00,512k 23:00,off", "0.5M", "10"])
def test_remote_rates_other_than_zero_go_to_rclone_as_written(rate: str) -> None:
    config = parse_config(f'[remote]\nlocation = "r:x"\nbwlimit = "{rate}"\n')
    assert config.remote is not None and config.remote.bwlimit == rate


def test_signing_keys() -> None:
    config = parse_config(
        'sign_key = "/etc/virtbackup/signing-key"\n'
        'allowed_signers = "/etc/virtbackup/allowed_signers"\n'
    )
    assert config.sign_key == Path("/etc/virtbackup/signing-key")
    assert config.allowed_signers == Path("/etc/virtbackup/allowed_signers")
    with pytest.raises(ConfigError, match=r"<config>:2: allowed_signers: expected str"):
        parse_config('sign_key = "/k"\nallowed_signers = ["/a"]\n')
