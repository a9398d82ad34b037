"""gc beside real `backup --layout repository` runs, every one a real process: a backup
running while prune + gc sweep, kill -9 of gc while chunks are hidden, kill -9 of a
backup. Disks are 16 MiB of random data: four 4 MiB chunks, each told apart by name."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.cli import NO_HOST_CONFIG, virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory
from repository_helpers import hidden, stored, wait_for

from virtbackup.core.repository_format import GC_HIDDEN_PREFIX
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.gc import PAUSE_AFTER_RENAME_ENV

CHUNK = 4 << 20


def blocks(count: int) -> list[bytes]:
    return [os.urandom(CHUNK) for _ in range(count)]


def name_of(block: bytes) -> str:
    return hashlib.sha256(block).hexdigest()


class Scene:
    """One shut-off domain on a raw image this test writes, a config with gc_grace = 0."""

    def __init__(self, factory: DomainFactory, state_dir: Path, dest: Path, tmp: Path) -> None:
        self.image = factory.workdir / "disk.raw"
        self.image.write_bytes(bytes(4 * CHUNK))
        self.domain = factory.create([DiskSpec("raw", image=self.image)], hint="gc").name()
        self.state_dir, self.dest, self.tmp = state_dir, dest, tmp
        self.config = tmp / "virtbackup.toml"
        self.config.write_text(f'dest = "{dest}"\nlayout = "repository"\ngc_grace = 0\n')

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return virtbackup_in(self.state_dir, "--config", str(self.config), *args)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        environment = {**os.environ, "VIRTBACKUP_STATE_DIR": str(self.state_dir), **(env or {})}
        return subprocess.Popen(
            [sys.executable, "-m", "virtbackup", "--config", str(self.config), *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def back_up(self, content: list[bytes]) -> Path:
        """Write `content` to the disk, back it up; the complete backup."""
        time.sleep(1.1)  # a stamp of its own
        self.image.write_bytes(b"".join(content))
        result = self.cli("backup", self.domain, "--json")
        assert result.returncode == 0, result.stderr
        return Path(json.loads(result.stdout)["domains"][0]["backup"])

    def check(self, backup: Path, content: list[bytes]) -> None:
        """verify passes and restore gives back `content` byte for byte."""
        verified = self.cli("verify", str(backup))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        target = self.tmp / f"restored-{backup.name}-{time.monotonic_ns()}"
        restored = self.cli("restore", str(backup), "--to", str(target))
        assert restored.returncode == 0, restored.stderr
        assert (target / "vda.raw").read_bytes() == b"".join(content)


@pytest.fixture
def scene(domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path) -> Scene:
    dest.chmod(0o700)
    return Scene(domain_factory, state_dir, dest, tmp_path)


def test_backup_running_while_prune_and_gc_sweep(scene: Scene) -> None:
    a, b, c, d, e, f, g = blocks(7)
    first = scene.back_up([a, b, c, d])
    second = scene.back_up([a, b, e, f])
    time.sleep(1.1)
    third_content = [a, b, c, g]  # c: used again, by now only the pruned backup's
    scene.image.write_bytes(b"".join(third_content))
    running = scene.start("backup", scene.domain, "--bwlimit", "2M", "--json")
    try:
        wait_for(lambda: any(ChunkStore(scene.dest).writers.iterdir()))
        pruned = scene.cli("prune", "--keep-last", "1", "--json")
        assert running.poll() is None, "the backup ended before gc swept"
    finally:
        out, err = running.communicate(timeout=120)
    assert running.returncode == 0, err
    assert pruned.returncode == 0, pruned.stderr
    document = json.loads(pruned.stdout)
    assert document["retention"][0]["remove"] == [first.name]
    assert document["gc"]["running_backups"] == 1
    assert document["gc"]["removed_chunks"] >= 1  # d, and c unless the backup touched it first

    third = Path(json.loads(out)["domains"][0]["backup"])
    assert name_of(d) not in stored(scene.dest)
    assert {name_of(x) for x in (a, b, c, e, f, g)} <= stored(scene.dest)
    scene.check(third, third_content)
    scene.check(second, [a, b, e, f])
    assert hidden(scene.dest) == []


def test_kill_9_of_gc_mid_sweep_loses_nothing_and_the_next_gc_finishes(scene: Scene) -> None:
    a, b, c, d, e, f = blocks(6)
    first = scene.back_up([a, b, c, d])
    second = scene.back_up([a, b, e, f])
    prune = scene.start("prune", "--keep-last", "1", env={PAUSE_AFTER_RENAME_ENV: "120"})
    try:
        wait_for(lambda: len(hidden(scene.dest)) == 2)
        assert not first.exists()
        scene.check(second, [a, b, e, f])  # nothing it references is hidden
    finally:
        prune.send_signal(signal.SIGKILL)
        prune.communicate()
    assert prune.returncode == -signal.SIGKILL
    assert {p.name for p in hidden(scene.dest)} == {GC_HIDDEN_PREFIX + name_of(x) for x in (c, d)}

    after = scene.cli("gc", "--json")
    assert after.returncode == 0, after.stderr
    document = json.loads(after.stdout)
    assert (document["restored_chunks"], document["removed_chunks"]) == (2, 2)
    assert hidden(scene.dest) == []
    assert stored(scene.dest) == {name_of(x) for x in (a, b, e, f)}
    scene.check(second, [a, b, e, f])


def test_chunks_of_a_backup_killed_with_9_go_after_clean(scene: Scene) -> None:
    a, b, c, d, e, f = blocks(6)
    first = scene.back_up([a, b, c, d])
    time.sleep(1.1)
    # e is named once the next new chunk, f, starts another batch (chunk_batch.py):
    # two reused chunks follow, so the run is still going when it is killed
    scene.image.write_bytes(b"".join([e, f, a, b]))
    running = scene.start("backup", scene.domain, "--bwlimit", "2M")
    try:
        wait_for(lambda: name_of(e) in stored(scene.dest))
    finally:
        running.send_signal(signal.SIGKILL)
        running.communicate()
    assert running.returncode == -signal.SIGKILL

    kept = scene.cli("gc", "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["running_backups"] == 1  # its registration is fresh
    assert name_of(e) in stored(scene.dest)

    cleaned = virtbackup_in(scene.state_dir, *NO_HOST_CONFIG, "clean", "--dest", str(scene.dest))
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert list(ChunkStore(scene.dest).writers.iterdir()) == []
    time.sleep(0.05)
    gone = scene.cli("gc", "--json")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["removed_chunks"] >= 1
    assert stored(scene.dest) == {name_of(x) for x in (a, b, c, d)}
    scene.check(first, [a, b, c, d])
