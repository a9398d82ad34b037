"""The nested VM runner really runs LVM snapshots and libvirt domains."""

import hashlib
import os
from pathlib import Path

import pytest

from harness.kernel import newest_kernel, no_kernel_reason
from harness.nested import NestedVM, NestedVMError, newest_kernel_image

# A throw-away volume group: a 32 MiB origin LV with ext4 and an 8 MiB snapshot of it.
LVM_SNAPSHOT = r"""
set -euo pipefail
truncate -s 64M pv.img
dev=$(losetup --find --show "$PWD/pv.img")
pvcreate -q "$dev"
vgcreate -q nestvg "$dev"
lvcreate -q -L 32M -n origin nestvg
mkfs.ext4 -q /dev/nestvg/origin
mkdir /mnt/origin /mnt/snap
mount /dev/nestvg/origin /mnt/origin
cp "$DATA/old.bin" /mnt/origin/file
sync
lvcreate -q -s -L 8M -n snap nestvg/origin
cp "$DATA/new.bin" /mnt/origin/file
sync
# noload: the snapshot of a mounted ext4 has a journal to replay, a read-only mount can't.
mount -o ro,noload /dev/nestvg/snap /mnt/snap
echo "snapshot $(sha256sum < /mnt/snap/file)"
echo "origin $(sha256sum < /mnt/origin/file)"
umount /mnt/snap
lvremove -q -f nestvg/snap
echo "lvs $(lvs --noheadings -o lv_name nestvg | xargs)"
"""

DOMAIN_XML = """\
<domain type='qemu'>
  <name>nested-probe</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""

LIBVIRT_DOMAIN = r"""
set -euo pipefail
virsh() { command virsh -c qemu:///system "$@"; }
virsh version
virsh define "$DATA/dom.xml"
virsh start nested-probe
echo "started: $(virsh domstate nested-probe)"
virsh destroy nested-probe
echo "destroyed: $(virsh domstate nested-probe)"
virsh undefine nested-probe
"""


def lines_by_key(stdout: str) -> dict[str, str]:
    """`key rest` lines of a script's output as {key: rest}."""
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


@pytest.mark.nested
def test_one_boot_runs_lvm_and_libvirtd_and_returns_the_status(
    nested_vm: NestedVM, tmp_path: Path
) -> None:
    # Each boot costs 20-60 s under TCG: one boot proves all the runner promises.
    old, new = os.urandom(1 << 20), os.urandom(1 << 20)
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"")
    os.truncate(disk, 8 << 20)
    (tmp_path / "dom.xml").write_text(DOMAIN_XML.format(disk=disk))
    script = (
        f"export DATA={tmp_path}\n{LVM_SNAPSHOT}\n{LIBVIRT_DOMAIN}\necho to-stderr >&2\nexit 37\n"
    )

    result = nested_vm.run(script, rwdirs=[tmp_path], libvirtd=True)

    # the script's own status and streams come back, not vng's
    assert result.returncode == 37, result.stderr
    assert result.stderr.endswith("to-stderr\n")
    out = lines_by_key(result.stdout)
    assert out["snapshot"].split()[0] == hashlib.sha256(old).hexdigest()
    assert out["origin"].split()[0] == hashlib.sha256(new).hexdigest()
    assert out["lvs"] == "origin"
    assert "Running hypervisor: QEMU" in result.stdout
    assert out["started:"] == "running"
    assert out["destroyed:"] == "shut off"


def test_newest_kernel_compares_versions_as_numbers_and_needs_its_modules(
    tmp_path: Path,
) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for version in ("6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-60-amd64", "6.1.0-99-amd64"):
        if version != "6.1.0-99-amd64":  # a config file, no image
            (boot / f"vmlinuz-{version}").touch()
        if version != "6.1.0-60-amd64":  # an image whose modules were removed
            (modules / version).mkdir(parents=True)
            (modules / version / "modules.dep").touch()
    (boot / "config-6.1.0-99-amd64").touch()
    (modules / "6.18.4-host").mkdir()  # the running kernel: modules, no image

    assert newest_kernel_image(boot, modules) == boot / "vmlinuz-6.1.0-56-amd64"
    assert newest_kernel(boot, modules) == "6.1.0-56-amd64"
    assert newest_kernel_image(tmp_path / "empty", modules) is None
    assert "linux-image-amd64" in no_kernel_reason(tmp_path / "empty", modules)
    (boot / "vmlinuz-6.1.0-56-amd64").unlink()
    (boot / "vmlinuz-6.1.0-9-amd64").unlink()
    assert newest_kernel(boot, modules) is None
    assert "vmlinuz-6.1.0-60-amd64 has its modules" in no_kernel_reason(boot, modules)


# A stand-in for vng: it finds main.sh's folder in its arguments and acts out one of the
# ways a guest ends, counting its boots in the folder it was given.
FAKE_VNG = r"""#!/bin/bash
last=${@: -1}; main=${last#bash }; run=$(dirname "$main")
count={count}; echo boot >> "$count"
boots=$(wc -l < "$count")
case "{mode}" in
hang-once) [ "$boots" = 1 ] && { echo "booted 0" > "$run/progress"; exec sleep 600; } ;;
hang-always) echo "booted 0" > "$run/progress"; exec sleep 600 ;;
hang-in-script) echo "script 0" > "$run/progress"; exec sleep 600 ;;
esac
echo "script 0" > "$run/progress"; echo guest-out; echo 0 > "$run/status"
"""


def fake_vm(tmp_path: Path, mode: str) -> tuple[NestedVM, Path]:
    count = tmp_path / "boots"
    vng = tmp_path / "vng"
    vng.write_text(FAKE_VNG.replace("{count}", str(count)).replace("{mode}", mode))
    vng.chmod(0o755)
    workdir = tmp_path / "work"
    workdir.mkdir()
    return NestedVM(vng, tmp_path / "vmlinuz", workdir, boot_bound=3), count


def test_a_boot_that_hangs_before_the_script_is_tried_once_more(tmp_path: Path) -> None:
    vm, count = fake_vm(tmp_path, "hang-once")
    with pytest.warns(UserWarning, match="booted again: no script after"):
        result = vm.run("true", timeout=60)
    assert result.returncode == 0 and result.stdout == "guest-out\n"
    assert count.read_text().count("boot") == 2


def test_a_boot_that_always_hangs_fails_with_how_far_it_got(tmp_path: Path) -> None:
    vm, count = fake_vm(tmp_path, "hang-always")
    with pytest.warns(UserWarning), pytest.raises(NestedVMError) as failed:
        vm.run("true", timeout=60)
    assert count.read_text().count("boot") == 2
    assert "--- progress\nbooted 0" in str(failed.value)
    assert "the boot before failed too" in str(failed.value)


def test_a_script_that_hangs_is_not_run_twice(tmp_path: Path) -> None:
    vm, count = fake_vm(tmp_path, "hang-in-script")
    with pytest.raises(NestedVMError, match="no result after 8 s") as failed:
        vm.run("true", timeout=8)
    assert count.read_text().count("boot") == 1
    assert "--- progress\nscript 0" in str(failed.value)
