"""The lvm method end to end, in the nested VM (the host kernel has no device-mapper).

One boot runs every scenario on the same volume group and libvirt domain, writing what
it saw into files that the tests below assert on:
- `list --json` tells which disks are on which LV;
- `backup --method lvm` of a running domain with a qcow2 on ext4, a raw file on xfs
  and a raw LV, while a writer (standing in for the guest) keeps changing all three
  origins during the stream: the restored images equal the images at snapshot time,
  and no snapshot or mount is left;
- a snapshot too small for what the writer writes overflows: the backup fails with a
  clear message, nothing is kept, the snapshot is removed;
- kill -9 in the middle of a stream, then `clean`: no snapshot, no mount;
- kill -9 again and lose the journal: the next backup sweeps the leftovers by name.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from harness.nested import NestedVM

# lvm_run's one boot takes 330 s on an idle 2-core host, and took 1200 s on a loaded one
# (its own bound: 1500 s, after up to 420 s of a hung boot tried again). The suite's 900 s
# per test, which counts this module fixture's setup in the first test, must not cut it
# short.
pytestmark = pytest.mark.timeout(2100)

DOMAIN_XML = """\
<domain type='qemu'>
  <name>lvmvm</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/mnt/ext/images/lvmvm.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/mnt/xfs/lvmvm-data.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vbvg/blocklv'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""

# A second domain whose image lives on the same LV as lvmvm's vda.
SECOND_DOMAIN_XML = """\
<domain type='qemu'>
  <name>lvmvm2</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/mnt/ext/images/lvmvm2.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""

SCRIPT = r"""
set -uo pipefail
OUT="$DATA/out"; mkdir -p "$OUT"
exec 2> >(tee "$OUT/script.log" >&2)
export VIRTBACKUP_STATE_DIR=/run/vbstate DEST=/run/vbdest
mkdir -p "$VIRTBACKUP_STATE_DIR" "$DEST"
virsh() { command virsh -c qemu:///system "$@"; }
vb() { virtbackup "$@"; }
snapshots() { lvs --noheadings -o lv_name vbvg | tr -d ' ' | grep '^vbsnap-' || true; }
our_mounts() { findmnt -rn -o TARGET | grep '^/run/virtbackup/lvm' || true; }
images() { echo /mnt/ext/images/lvmvm.qcow2 /mnt/xfs/lvmvm-data.raw /dev/vbvg/blocklv; }
hashes() { for f in $(images); do sha256sum < "$f" | cut -d' ' -f1; done; }
wait_for() {  # wait_for SECONDS PID COMMAND...: until COMMAND prints something
    # Gives up at once when PID (the backup waited on) is gone: a backup that fails early
    # must not cost the whole bound.
    for _ in $(seq $(( $1 * 10 ))); do
        [ -n "$("${@:3}")" ] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
all_snapshots() { [ "$(snapshots | wc -l)" -ge 3 ] && echo yes; }
streaming() { [ "$(our_mounts | wc -l)" -ge 2 ] && echo yes; }  # mounted: reading soon
# The guest's stand-in: once the snapshots of all three LVs exist (or the streams began),
# rewrite parts of origins, and note each round that ended while the snapshots were
# still there (during the stream).
writer() {  # writer LOG BACKUP_PID all_snapshots|streaming ROUNDS BLOCKS_OF_64K FILES...
    local log=$1 backup=$2 ready=$3 rounds=$4 blocks=$5; shift 5
    wait_for 600 "$backup" "$ready" || { echo "not $ready" >> "$log"; return; }
    for round in $(seq "$rounds"); do
        for f in "$@"; do
            # from 3 to 6 MiB on: past the qcow2 metadata, inside the 16 MiB raw images
            dd if=/dev/urandom of="$f" bs=64K count="$blocks" seek=$(( 48 + RANDOM % 48 )) \
               conv=notrunc,fsync status=none
        done
        [ -n "$(snapshots)" ] && echo "during $round" >> "$log"
        sleep 0.5
    done
}

# -- a volume group on a loop device, an ext4 LV, an xfs LV and a raw LV -----------------
truncate -s 1G pv.img
dev=$(losetup --find --show "$PWD/pv.img")
pvcreate -q "$dev" && vgcreate -q vbvg "$dev"
lvcreate -q -L 64M -n extlv vbvg && mkfs.ext4 -q /dev/vbvg/extlv
lvcreate -q -L 320M -n xfslv vbvg && mkfs.xfs -q /dev/vbvg/xfslv
lvcreate -q -L 16M -n blocklv vbvg
mkdir -p /mnt/ext /mnt/xfs
mount /dev/vbvg/extlv /mnt/ext && mount /dev/vbvg/xfslv /mnt/xfs && mkdir /mnt/ext/images
qemu-img create -q -f qcow2 /mnt/ext/images/lvmvm.qcow2 24M
qemu-io -f qcow2 -c 'write -P 0x5a 0 20M' /mnt/ext/images/lvmvm.qcow2 > /dev/null
head -c 16M /dev/urandom > /mnt/xfs/lvmvm-data.raw
dd if=/dev/urandom of=/dev/vbvg/blocklv bs=1M count=16 status=none
sync
virsh define "$DATA/dom.xml" > /dev/null && virsh start lvmvm > /dev/null
echo "$(virsh domstate lvmvm)" > "$OUT/state0"

# -- list --------------------------------------------------------------------------------
vb list --json lvmvm > "$OUT/list.json"; echo $? > "$OUT/list.rc"

# -- A: a backup while the origins are written --------------------------------------------
hashes > "$OUT/a.before"
started=$(date +%s)
virtbackup -v backup lvmvm --dest "$DEST" --method lvm --bwlimit 3M --json \
    > "$OUT/a.json" 2> "$OUT/a.err" &
bpid=$!
writer "$OUT/a.writer" $bpid all_snapshots 6 4 $(images) &
wpid=$!
wait $bpid; echo $? > "$OUT/a.rc"
echo $(( $(date +%s) - started )) > "$OUT/a.seconds"
wait $wpid
hashes > "$OUT/a.origin"
snapshots > "$OUT/a.snapshots"; our_mounts > "$OUT/a.mounts"
backup=$(ls -d "$DEST"/lvmvm/2* | tail -1)
vb restore "$backup" --to /run/restored > "$OUT/a.restore" 2>&1; echo $? > "$OUT/a.restore.rc"
for f in vda.qcow2 vdb.raw vdc.raw; do sha256sum < /run/restored/$f | cut -d' ' -f1; done \
    > "$OUT/a.restored"
cp "$backup/manifest.json" "$OUT/a.manifest.json"
echo "$(virsh domstate lvmvm)" > "$OUT/a.state"

# -- B: a snapshot too small for what is written --------------------------------------------
ls "$DEST/lvmvm" > "$OUT/b.backups.before"
virtbackup backup lvmvm --dest "$DEST" --method lvm --snapshot-size 4M --bwlimit 2M \
    > "$OUT/b.out" 2> "$OUT/b.err" &
bpid=$!
writer "$OUT/b.writer" $bpid streaming 1 160 /mnt/xfs/lvmvm-data.raw &
wpid=$!
wait $bpid; echo $? > "$OUT/b.rc"
wait $wpid
snapshots > "$OUT/b.snapshots"; our_mounts > "$OUT/b.mounts"
ls -a "$DEST/lvmvm" > "$OUT/b.backups.after"
ls "$VIRTBACKUP_STATE_DIR/journal" > "$OUT/b.journals" 2>&1
echo "$(virsh domstate lvmvm)" > "$OUT/b.state"

# -- C: kill -9 in the middle of a stream, then clean -------------------------------------
killed_run() {  # start a slow backup, kill -9 it once both mounts are there and it reads
    virtbackup backup lvmvm --dest "$DEST" --method lvm --bwlimit 1M > /dev/null 2>&1 &
    local pid=$!
    # Python, lvcreate and mount under nested TCG: tens of seconds on a loaded host.
    wait_for 600 "$pid" streaming
    sleep 2
    kill -9 "$pid"; wait "$pid" 2>/dev/null
}
killed_run
snapshots > "$OUT/c.snapshots.killed"; our_mounts > "$OUT/c.mounts.killed"
vb clean --dest "$DEST" --json > "$OUT/c.json" 2> "$OUT/c.err"; echo $? > "$OUT/c.rc"
snapshots > "$OUT/c.snapshots"; our_mounts > "$OUT/c.mounts"
ls -a "$DEST/lvmvm" > "$OUT/c.backups"
ls "$VIRTBACKUP_STATE_DIR/journal" > "$OUT/c.journals" 2>&1
echo "$(virsh domstate lvmvm)" > "$OUT/c.state"

# -- E: two domains on the same LV share its snapshot within one run ---------------------
qemu-img create -q -f qcow2 /mnt/ext/images/lvmvm2.qcow2 8M
qemu-io -f qcow2 -c 'write -P 0x33 0 4M' /mnt/ext/images/lvmvm2.qcow2 > /dev/null
virsh define "$DATA/dom2.xml" > /dev/null && virsh start lvmvm2 > /dev/null
virtbackup -v backup lvmvm lvmvm2 --dest "$DEST" --method lvm --json \
    > "$OUT/e.json" 2> "$OUT/e.err"
echo $? > "$OUT/e.rc"
snapshots > "$OUT/e.snapshots"; our_mounts > "$OUT/e.mounts"
virsh destroy lvmvm2 > /dev/null

# -- D: kill -9, journal lost: the next run sweeps by name --------------------------------
killed_run
snapshots > "$OUT/d.snapshots.killed"
rm -f "$VIRTBACKUP_STATE_DIR"/journal/*.json
virtbackup -v backup lvmvm --dest "$DEST" --method lvm > "$OUT/d.out" 2> "$OUT/d.err"
echo $? > "$OUT/d.rc"
snapshots > "$OUT/d.snapshots"; our_mounts > "$OUT/d.mounts"
virsh destroy lvmvm > /dev/null
echo finished > "$OUT/finished"
"""


def _text(out: Path, name: str) -> str:
    path = out / name
    return path.read_text() if path.exists() else f"<{name} missing>"


@pytest.fixture(scope="module")
def lvm_run(nested_vm: NestedVM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("lvm-method")
    (data / "dom.xml").write_text(DOMAIN_XML)
    (data / "dom2.xml").write_text(SECOND_DOMAIN_XML)
    result = nested_vm.run(
        f"export DATA={data}\n{SCRIPT}", rwdirs=[data], libvirtd=True, timeout=1500
    )
    out = data / "out"
    assert (out / "finished").exists(), (
        f"status {result.returncode}\n{result.stdout}\n{result.stderr}\n" + _text(out, "script.log")
    )
    return out


def _lines(out: Path, name: str) -> list[str]:
    return _text(out, name).split()


def _report(out: Path, *names: str) -> str:
    return "\n".join(f"--- {n}\n{_text(out, n)}" for n in names)


@pytest.mark.nested
def test_list_shows_the_lv_of_each_disk(lvm_run: Path) -> None:
    assert _text(lvm_run, "list.rc").strip() == "0"
    doc: dict[str, Any] = json.loads(_text(lvm_run, "list.json"))
    disks = {d["target"]: d for d in doc["domains"][0]["disks"]}
    assert {t: (d["on_lv"], d["lv"]) for t, d in disks.items()} == {
        "vda": (True, "vbvg/extlv"),
        "vdb": (True, "vbvg/xfslv"),
        "vdc": (True, "vbvg/blocklv"),
    }
    assert doc["domains"][0]["method"] == "lvm"  # auto: every disk is on LVM


@pytest.mark.nested
def test_backup_is_the_image_at_snapshot_time_while_origins_change(lvm_run: Path) -> None:
    report = _report(lvm_run, "a.rc", "a.err", "a.json", "a.writer", "a.restore")
    assert _text(lvm_run, "a.rc").strip() == "0", report
    before = _lines(lvm_run, "a.before")
    assert _lines(lvm_run, "a.restored") == before, report
    # The writer changed every origin while a snapshot existed, i.e. during the stream.
    origin = _lines(lvm_run, "a.origin")
    assert all(o != b for o, b in zip(origin, before, strict=True)), report
    assert "during 1" in _text(lvm_run, "a.writer"), report
    manifest = json.loads(_text(lvm_run, "a.manifest.json"))
    assert manifest["method"] == "lvm"
    summary = json.loads(_text(lvm_run, "a.json"))
    assert "lvm" in json.dumps(summary)
    # Nothing is left behind and the domain runs on.
    assert _lines(lvm_run, "a.snapshots") == [] and _lines(lvm_run, "a.mounts") == []
    assert _text(lvm_run, "a.state").strip() == "running"


@pytest.mark.nested
def test_overflowing_snapshot_fails_clearly_and_is_removed(lvm_run: Path) -> None:
    report = _report(lvm_run, "b.rc", "b.out", "b.err", "b.writer", "b.journals")
    assert _text(lvm_run, "b.rc").strip() == "1", report
    output = _text(lvm_run, "b.out") + _text(lvm_run, "b.err")
    assert "vbvg/vbsnap-xfslv" in output and "overflowed" in output, report
    assert "--snapshot-size" in output, report
    assert "Traceback" not in output, report
    # No backup was kept, not even a partial one; no snapshot, mount or journal is left.
    assert _lines(lvm_run, "b.backups.after") == [".", ".."] + _lines(
        lvm_run, "b.backups.before"
    ), report
    assert _lines(lvm_run, "b.snapshots") == [] and _lines(lvm_run, "b.mounts") == [], report
    assert _lines(lvm_run, "b.journals") == [], report
    assert _text(lvm_run, "b.state").strip() == "running"


@pytest.mark.nested
def test_clean_after_kill_9_leaves_no_snapshot_and_no_mount(lvm_run: Path) -> None:
    report = _report(
        lvm_run, "c.snapshots.killed", "c.mounts.killed", "c.rc", "c.json", "c.err", "c.journals"
    )
    assert len(_lines(lvm_run, "c.snapshots.killed")) == 3, report  # one per LV
    assert len(_lines(lvm_run, "c.mounts.killed")) == 2, report  # ext4 and xfs
    assert _text(lvm_run, "c.rc").strip() == "0", report
    assert _lines(lvm_run, "c.snapshots") == [] and _lines(lvm_run, "c.mounts") == [], report
    assert _lines(lvm_run, "c.journals") == [], report
    assert not [n for n in _lines(lvm_run, "c.backups") if n.endswith(".partial")], report
    assert _text(lvm_run, "c.state").strip() == "running"


@pytest.mark.nested
def test_domains_on_the_same_lv_share_one_snapshot_in_a_run(lvm_run: Path) -> None:
    report = _report(lvm_run, "e.rc", "e.json", "e.err")
    assert _text(lvm_run, "e.rc").strip() == "0", report
    rows = {r["domain"]: r for r in json.loads(_text(lvm_run, "e.json"))["domains"]}
    assert {n: (r["result"], r["method"]) for n, r in rows.items()} == {
        "lvmvm": ("ok", "lvm"),
        "lvmvm2": ("ok", "lvm"),
    }, report
    created = [ln for ln in _text(lvm_run, "e.err").splitlines() if "run: lvcreate" in ln]
    # one snapshot per LV for the whole run: extlv (both domains), xfslv, blocklv
    assert sorted(ln.split()[-1] for ln in created) == [
        "vbvg/blocklv",
        "vbvg/extlv",
        "vbvg/xfslv",
    ], report
    assert _lines(lvm_run, "e.snapshots") == [] and _lines(lvm_run, "e.mounts") == [], report


@pytest.mark.nested
def test_next_run_sweeps_leftovers_without_a_journal(lvm_run: Path) -> None:
    report = _report(lvm_run, "d.snapshots.killed", "d.rc", "d.out", "d.err")
    assert len(_lines(lvm_run, "d.snapshots.killed")) == 3, report
    assert _text(lvm_run, "d.rc").strip() == "0", report
    assert "remove leftover LVM snapshot" in _text(lvm_run, "d.err"), report
    assert _lines(lvm_run, "d.snapshots") == [] and _lines(lvm_run, "d.mounts") == [], report


def test_domain_xml_names_the_images_the_script_makes() -> None:
    # Guards the pairing of DOMAIN_XML and SCRIPT, which only the nested VM runs.
    for path in ("/mnt/ext/images/lvmvm.qcow2", "/mnt/xfs/lvmvm-data.raw", "/dev/vbvg/blocklv"):
        assert path in DOMAIN_XML and path in SCRIPT
