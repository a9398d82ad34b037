"""The metrics file after real `backup` and `all` runs, read with prometheus_client's
parser and held against the run's summary; `all` with nothing to back up."""

import json
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

from harness.cli import virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory
from prometheus_text import Samples, parse_metrics

from virtbackup.core.run_record import RESULTS


def read_metrics(path: Path) -> Samples:
    return parse_metrics(path.read_text())


def of(samples: Samples, name: str, domain: str) -> float:
    return samples[f"virtbackup_domain_{name}"][(("domain", domain),)]


def write_config(tmp_path: Path, dest: Path, include: str, metrics: Path) -> Path:
    config = tmp_path / "virtbackup.toml"
    config.write_text(f'dest = "{dest}"\ninclude = ["{include}"]\nmetrics_file = "{metrics}"\n')
    return config


def test_metrics_after_all_and_backup_match_the_summary(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    good = domain_factory.create([DiskSpec("raw")], hint="good")
    broken = domain_factory.create([DiskSpec("raw")], hint="broken")
    (domain_factory.workdir / "broken-disk0.raw").unlink()
    metrics = tmp_path / "textfile" / "virtbackup.prom"
    metrics.parent.mkdir()
    config = write_config(tmp_path, dest, domain_factory.name("*"), metrics)

    run = virtbackup_in(state_dir, "--config", str(config), "all", "--json")
    assert run.returncode == 1, run.stderr
    summary = json.loads(run.stdout)
    rows = {row["domain"]: row for row in summary["domains"]}
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644  # node_exporter's user reads it
    samples = read_metrics(metrics)
    manifest = json.loads((Path(rows[good.name()]["backup"]) / "manifest.json").read_text())
    for name, row in rows.items():
        assert of(samples, "last_attempt_success", name) == (row["result"] == "ok")
        assert of(samples, "last_attempt_read_bytes", name) == row["read"]
        assert of(samples, "last_attempt_stored_bytes", name) == row["stored"]
        assert of(samples, "last_attempt_duration_seconds", name) == row["seconds"]
        results = samples["virtbackup_domain_last_attempt_result"]
        for result in RESULTS:
            key = (("domain", name), ("result", result))
            assert results[key] == (result == row["result"])
    assert rows[good.name()]["read"] > 0 and rows[good.name()]["stored"] > 0
    finished = of(samples, "last_attempt_timestamp_seconds", good.name())
    assert _utc(finished) >= summary["finished"]
    # an ok attempt is the last success; it ended after its backup did
    assert of(samples, "last_success_timestamp_seconds", good.name()) == finished
    assert _utc(finished) >= manifest["finished"]
    never = (("domain", broken.name()),)  # no success, no backup: no series
    assert never not in samples["virtbackup_domain_last_success_timestamp_seconds"]
    store = (("dest", str(dest)), ("store", "directory"))
    backup_dir = Path(rows[good.name()]["backup"])
    assert samples["virtbackup_store_backups"] == {store: 1.0}
    assert samples["virtbackup_store_stored_bytes"] == {
        store: float(sum(f.stat().st_size for f in backup_dir.iterdir()))
    }
    # the default layout: the repository of DEST, in figures
    chunk_files = [
        f for f in (dest / ".virtbackup-repository" / "chunks").rglob("*") if f.is_file()
    ]
    plain = (("dest", str(dest)), ("encrypted", "false"))
    assert samples["virtbackup_repository_chunks"][plain] == len(chunk_files) > 0
    assert samples["virtbackup_repository_stored_bytes"][plain] == sum(
        f.stat().st_size for f in chunk_files
    )
    assert samples["virtbackup_repository_backups"][plain] == 1
    logical = sum(disk["byte_size"] for disk in manifest["disks"])
    assert samples["virtbackup_repository_logical_bytes"] == {(("dest", str(dest)),): logical}

    # `backup` of one domain rewrites the file whole: the other domain's last attempt stays
    again = virtbackup_in(state_dir, "--config", str(config), "backup", good.name())
    assert again.returncode == 0, again.stderr
    samples = read_metrics(metrics)
    assert of(samples, "backups", good.name()) == 2
    assert of(samples, "last_attempt_success", broken.name()) == 0
    assert samples["virtbackup_store_backups"] == {store: 2.0}


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_reader_never_sees_half_a_file_while_all_runs(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    for hint in ("a", "b", "c"):
        domain_factory.create([DiskSpec("raw")], hint=hint)
    metrics = tmp_path / "virtbackup.prom"
    config = write_config(tmp_path, dest, domain_factory.name("*"), metrics)
    summary = dest / "virtbackup-last-run.json"
    first = virtbackup_in(state_dir, "--config", str(config), "all")
    assert first.returncode == 0, first.stderr

    seen: set[float] = set()
    reads = 0
    problems: list[str] = []
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                samples = read_metrics(metrics)
                stamps = samples["virtbackup_domain_last_attempt_timestamp_seconds"]
                assert len(stamps) == 3 and "virtbackup_store_stored_bytes" in samples
                seen.update(stamps.values())
                assert len(json.loads(summary.read_text())["domains"]) == 3
                reads += 1
            except Exception as err:  # noqa: BLE001 (every way a read can fail is the finding)
                problems.append(repr(err))
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            run = virtbackup_in(state_dir, "--config", str(config), "all")
            assert run.returncode == 0, run.stderr
    finally:
        done.set()
        thread.join()
    assert problems == []
    assert reads > 10 and len(seen) >= 2  # the reader read on while the file was replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".virtbackup.prom")] == []


def test_all_with_nothing_to_back_up_says_so(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    dom = domain_factory.create(hint="alone")
    args = ("all", "--dest", str(dest), "--include", dom.name(), "--exclude", dom.name())
    text = virtbackup_in(state_dir, *args)
    assert text.returncode == 0, text.stderr
    (line,) = text.stdout.splitlines()
    assert line.startswith("no domain to back up: ") and "excluded by include/exclude" in line
    as_json = virtbackup_in(state_dir, *args, "--json")
    document = json.loads(as_json.stdout)
    assert (document["domains"], document["nothing_to_back_up"]) == ([], line)
    assert json.loads((dest / "virtbackup-last-run.json").read_text()) == document

    some = virtbackup_in(state_dir, "all", "--dest", str(dest), "--include", dom.name(), "--json")
    assert json.loads(some.stdout)["nothing_to_back_up"] is None


def test_a_metrics_file_that_cannot_be_written_fails_the_run(
    state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    metrics = tmp_path / "no-such-dir" / "virtbackup.prom"
    config = write_config(tmp_path, dest, "vbtest-none-*", metrics)
    result = virtbackup_in(state_dir, "--config", str(config), "all")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"virtbackup: error: cannot write the metrics file {metrics}: No such file or directory"
    ]
    assert list(tmp_path.glob("no-such-dir*")) == []
