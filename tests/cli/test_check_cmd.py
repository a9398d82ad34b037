"""`virtbackup check` against real backups in a real DEST of real libvirt domains: its
exit codes and output, read by the monitoring-plugins guidelines' rules."""

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness.cli import virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory
from harness.remotes import RemoteServer
from plugin_output import PluginOutput, parse_plugin_output
from repository_helpers import chunk_data, write_backup

from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.disk_backup import DiskSource, back_up_disks
from virtbackup.engine.stores.local import LocalStore

MiB = 1024 * 1024


def check(state_dir: Path, *args: str) -> PluginOutput:
    result = virtbackup_in(state_dir, *args)
    assert result.returncode in (0, 1, 2, 3), result.stderr
    return parse_plugin_output(result.stdout, result.returncode)


def states(output: PluginOutput, prefix: str = "") -> dict[str, str]:
    """Domain -> state, from the detail lines `STATE NAME: findings` (the domains whose
    names start with `prefix`: the host may have others, excluded by the test's globs)."""
    found = {}
    for line in output.long_text:
        state, _, rest = line.partition(" ")
        found[rest.partition(":")[0]] = state
    return {name: state for name, state in found.items() if name.startswith(prefix)}


def back_up(state_dir: Path, dest: Path, name: str) -> dict[str, Any]:
    result = virtbackup_in(state_dir, "backup", name, "--dest", str(dest), "--json")
    (row,) = json.loads(result.stdout)["domains"]
    return dict(row)


def back_up_in_the_past(dom: Any, image: Path, dest: Path, hours: float) -> Path:
    """A real backup of the shut-off domain's image, written through the store as a run
    `hours` ago would have: its stamp and manifest say then."""
    then = datetime.now(UTC) - timedelta(hours=hours)
    disk = DiskSource("vda", image, "qcow2", 16 * MiB)
    result = back_up_disks(
        LocalStore(dest),
        dom.name(),
        dom.UUIDString(),
        dom.XMLDesc(0),
        "offline",
        [disk],
        NullProgress(),
        clock=lambda: then,
    )
    return Path(result.path)


def test_fresh_stale_failed_unverified_never_and_excluded_domains(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    fresh = domain_factory.create(hint="fresh")
    unverified = domain_factory.create(hint="unverified")
    stale = domain_factory.create(hint="stale")
    failed = domain_factory.create([DiskSpec("raw")], hint="failed")
    never = domain_factory.create(hint="never")
    excluded = domain_factory.create(hint="excluded")
    config = tmp_path / "virtbackup.toml"
    config.write_text(
        f'dest = "{dest}"\ninclude = ["{domain_factory.name("*")}"]\n'
        f'exclude = ["{excluded.name()}"]\n'
    )
    base = ("--config", str(config), "check")

    fresh_backup = back_up(state_dir, dest, fresh.name())["backup"]
    verified = virtbackup_in(state_dir, "verify", fresh_backup)
    assert verified.returncode == 0, verified.stderr
    assert back_up(state_dir, dest, unverified.name())["result"] == "ok"
    old = back_up_in_the_past(stale, domain_factory.workdir / "stale-disk0.qcow2", dest, 30)
    assert old.name.startswith((datetime.now(UTC) - timedelta(hours=30)).strftime("%Y%m%d"))
    assert back_up(state_dir, dest, failed.name())["result"] == "ok"
    (domain_factory.workdir / "failed-disk0.raw").unlink()
    assert back_up(state_dir, dest, failed.name())["result"] == "failed"

    every = check(state_dir, *base)
    assert every.state == "CRITICAL"
    assert states(every, domain_factory.name("")) == {
        fresh.name(): "OK",
        unverified.name(): "OK",
        stale.name(): "CRITICAL",
        failed.name(): "CRITICAL",
        never.name(): "CRITICAL",
        excluded.name(): "OK",
    }
    host = len(states(every))  # other domains of the host are excluded by the include glob
    assert every.text.startswith(f"3 of {host} domains critical: ")
    details = {line.partition(":")[0].split(" ", 1)[1]: line for line in every.long_text}
    assert "newest backup 1d 6h old (limit 1d 2h)" in details[stale.name()]
    assert "last run failed: " in details[failed.name()]
    assert details[never.name()].endswith(": no backup")
    assert details[fresh.name()].endswith("; verified; last run ok")
    assert details[excluded.name()].endswith(": excluded by the configuration")
    perf = every.perfdata
    assert (perf["domains"].value, perf["critical"].value, perf["warning"].value) == (host, 3, 0)
    assert perf[f"{never.name()} age"].value is None
    assert perf[f"{fresh.name()} age"].unit == "s" and perf[f"{fresh.name()} age"].value < 600
    assert 30 * 3600 <= (perf[f"{stale.name()} age"].value or 0) < 31 * 3600
    assert perf[f"{stale.name()} age"].crit == str(26 * 3600)
    assert f"{excluded.name()} age" not in perf

    assert check(state_dir, *base, fresh.name(), unverified.name()).state == "OK"
    assert check(state_dir, *base, excluded.name()).state == "OK"
    strict = check(state_dir, *base, fresh.name(), unverified.name(), "--require-verified")
    assert (strict.state, states(strict)[unverified.name()]) == ("WARNING", "WARNING")
    assert strict.long_text[0].startswith(f"WARNING {unverified.name()}: newest backup ")
    assert strict.long_text[0].endswith(" old; not verified; last run ok")
    aged = check(state_dir, *base, stale.name(), "--warn-age", "1d", "--max-age", "2d")
    assert aged.state == "WARNING" and "(warning at 1d)" in aged.long_text[0]
    assert check(state_dir, *base, stale.name(), "--max-age", "31h").state == "OK"
    assert check(state_dir, *base, never.name()).state == "CRITICAL"


def test_errors_are_unknown(state_dir: Path, dest: Path) -> None:
    for args, says in [
        (("--max-age", "soon"), "--max-age: 'soon' is not a duration"),
        (("--warn-age", "2d", "--max-age", "1d"), "--warn-age must be shorter than --max-age"),
        (("--no-such-option",), "No such option: --no-such-option"),
        (("vbtest-no-such-domain",), "unknown domain 'vbtest-no-such-domain'"),
    ]:
        output = check(state_dir, "check", "--dest", str(dest), *args)
        assert output.state == "UNKNOWN" and says in output.text, output
    missing = check(state_dir, "check", "--dest", str(dest / "gone"))
    assert missing.state == "UNKNOWN" and "does not exist" in missing.text
    no_dest = check(state_dir, "check")
    assert no_dest.text == "no backup destination: give --dest DIR or set dest in the config file"
    offline = check(state_dir, "-c", "qemu:///nowhere", "check", "--dest", str(dest))
    assert offline.state == "UNKNOWN" and "cannot connect" in offline.text


def test_remote_says_whether_the_newest_backup_is_offsite(
    domain_factory: DomainFactory,
    sftp_remote: RemoteServer,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    dom = domain_factory.create([DiskSpec("raw")], hint="offsite")
    local = tmp_path / "local.toml"
    local.write_text(f'dest = "{dest}"\n')
    config = tmp_path / "virtbackup.toml"
    config.write_text(
        f'dest = "{dest}"\n[remote]\nlocation = "{sftp_remote.remote.location}"\n'
        f'rclone_config = "{sftp_remote.remote.config}"\nhost = "host-a"\nretries = 1\n'
    )
    args = ("--config", str(config), "check", dom.name(), "--remote")
    copied = virtbackup_in(state_dir, "--config", str(config), "backup", dom.name())
    assert copied.returncode == 0, copied.stderr
    present = check(state_dir, *args)
    assert present.state == "OK" and "; offsite copy present;" in present.long_text[0]
    local_only = virtbackup_in(state_dir, "--config", str(local), "backup", dom.name())
    assert local_only.returncode == 0, local_only.stderr
    missing = check(state_dir, *args)
    assert (missing.state, missing.text) == (
        "WARNING",
        f"1 of 1 domains warning: {dom.name()} (no offsite copy)",
    )
    assert check(state_dir, "--config", str(config), "check", dom.name()).state == "OK"


HOSTILE_RECORDS: dict[str, Callable[[Path], None]] = {
    "huge seconds": lambda path: path.write_text(_record(seconds=10**400)),
    "huge last success": lambda path: path.write_text(_record(last_success=10**400)),
    "infinite seconds": lambda path: path.write_text(_record(seconds=float("inf"))),
    "not JSON": lambda path: path.write_text("{" * 100000),
    "too large": lambda path: path.write_bytes(b" " * (1 << 20)),
    "a FIFO": lambda path: os.mkfifo(path),
    "a directory": lambda path: path.mkdir(),
    "a link": lambda path: path.symlink_to("/dev/zero"),
}


def _record(**change: object) -> str:
    record = {
        "version": 1,
        "domain": HOSTILE_DOMAIN,
        "result": "failed",
        "message": "disk vda failed",
        "finished": 1767139200.0,
        "seconds": 12.5,
        "read": 0,
        "stored": 0,
        "backup": None,
        "last_success": None,
    }
    return json.dumps({**record, **change})


HOSTILE_DOMAIN = "vbtest-records"


@pytest.mark.parametrize("plant", HOSTILE_RECORDS.values(), ids=HOSTILE_RECORDS.keys())
def test_a_hostile_run_record_is_ignored_in_one_line(
    state_dir: Path, dest: Path, plant: Callable[[Path], None]
) -> None:
    """A run record DEST holds is untrusted: whatever it is, check judges the backups
    (here one long ago: CRITICAL) and says so in its one status line."""
    write_backup(dest, HOSTILE_DOMAIN, {"vda": chunk_data(1)})
    records = dest / ".virtbackup-runs"
    records.mkdir(mode=0o700)
    plant(records / f"{HOSTILE_DOMAIN}.json")
    result = virtbackup_in(state_dir, "check", "--dest", str(dest), HOSTILE_DOMAIN)
    assert "Traceback" not in result.stderr, result.stderr
    output = parse_plugin_output(result.stdout, result.returncode)
    assert output.state == "CRITICAL" and "newest backup" in output.text, output
