"""Benchmark of the repository offsite on moto's S3 server on loopback (run on demand, as
root, with libvirtd running; not part of the test suite).

    /opt/vbtest/bin/python bench/bench_offsite.py               # 256 MiB disks
    /opt/vbtest/bin/python bench/bench_offsite.py --size 64     # a quick look

Two hosts (separate state directories and DESTs, `host = ...`) back up VMs whose disks
are clones of one template of random bytes (host-b's differs in its last 4 MiB):
- the second offsite copy of host-a's unchanged VM against the first: bytes that went up;
- the remote's chunks once both hosts have copied, against those of one backup;
- `restore --remote` of host-a's backup against `restore` of the same backup from DEST
  (warm page cache for both).
Prints one markdown table.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import libvirt  # noqa: E402
from harness.libvirtd import DiskSpec, DomainFactory  # noqa: E402
from harness.remotes import make_s3_server  # noqa: E402

from virtbackup.adapters import rclone  # noqa: E402

MiB = 1024 * 1024
CHUNKS = ".virtbackup-repository/chunks"


def virtbackup(state: Path, config: Path, *args: str) -> float:
    """One virtbackup command; its wall time."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "virtbackup", "--config", str(config), *args],
        env={**os.environ, "VIRTBACKUP_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)},
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"virtbackup {' '.join(args)}: {done.stderr.strip()}")
    return time.monotonic() - start


def remote_bytes(remote: rclone.Remote) -> int:
    return sum(rclone.list_file_sizes(remote, "").values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="disk size in MiB")
    size = parser.parse_args().size * MiB
    os.environ.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 fails with it on plain http
    work = Path(tempfile.mkdtemp(prefix="vb-bench-offsite-"))
    server = make_s3_server(work)
    server.start()
    factory = DomainFactory(libvirt.open("qemu:///system"), libvirt)
    try:
        remote = rclone.Remote(f"{server.root_location}/bench", config=server.rclone_config)
        template = os.urandom(size)
        hosts = {}
        for host in ("host-a", "host-b"):
            image = factory.workdir / f"{host}.raw"
            tail = os.urandom(4 * MiB) if host == "host-b" else template[-4 * MiB :]
            image.write_bytes(template[: -4 * MiB] + tail)
            dom = factory.create([DiskSpec("raw", image=image)], hint=f"bench{host[-1]}")
            home = work / host
            (home / "dest").mkdir(parents=True)
            config = home / "vb.toml"
            config.write_text(
                f'dest = "{home / "dest"}"\n[remote]\nlocation = "{remote.location}"\n'
                f'rclone_config = "{server.rclone_config}"\nhost = "{host}"\n'
            )
            hosts[host] = (home / "state", config, dom.name(), image)

        state, config, name, image = hosts["host-a"]
        virtbackup(state, config, "backup", name)
        first = remote_bytes(remote)
        time.sleep(1.1)  # a new stamp
        virtbackup(state, config, "backup", name)
        second = remote_bytes(remote) - first
        one = len(rclone.list_file_sizes(remote, CHUNKS))
        state_b, config_b, name_b, _ = hosts["host-b"]
        virtbackup(state_b, config_b, "backup", name_b)
        both = len(rclone.list_file_sizes(remote, CHUNKS))

        stamp = sorted(p.name for p in (config.parent / "dest" / name).iterdir())[-1]
        local_out, remote_out = work / "out-local", work / "out-remote"
        backup = config.parent / "dest" / name / stamp
        local = virtbackup(state, config, "restore", str(backup), "--to", str(local_out))
        fetched = virtbackup(
            state, config, "restore", "--remote", f"{name}/{stamp}", "--to", str(remote_out)
        )
        for out in (local_out, remote_out):
            subprocess.run(["cmp", str(image), str(out / "vda.raw")], check=True)

        rows = [
            ("first offsite copy", f"{first / MiB:.1f} MiB", ""),
            ("second copy, unchanged VM", f"{second / MiB:.3f} MiB", f"{second / first:.4%}"),
            ("remote chunks, one host / two clones", f"{one} / {both}", f"{both / one:.2f}x"),
            ("restore from DEST", f"{local:.2f} s", f"{size / MiB / local:.0f} MiB/s"),
            ("restore --remote (S3)", f"{fetched:.2f} s", f"{size / MiB / fetched:.0f} MiB/s"),
            ("S3 restore speed / DEST restore speed", "", f"{local / fetched:.2f}x"),
        ]
        print(f"disk {size // MiB} MiB\n\n| measure | value | ratio |\n|---|---|---|")
        print("\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows))
        print(
            json.dumps(
                {
                    "second_over_first": second / first,
                    "clones_over_one": both / one,
                    "s3_restore_speed_ratio": local / fetched,
                }
            )
        )
    finally:
        factory.cleanup()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
