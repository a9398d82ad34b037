#!/usr/bin/env bash
# Set up a Debian host for virtbackup, as root. Safe to run again: it installs only
# what is missing, starts only what is not running.
#
#   contrib/setup-host.sh          runtime: packages, venv, /usr/local/bin/virtbackup, libvirtd
#   contrib/setup-host.sh --test   also what the test suite needs (tox, busybox, qemu-ga, ...)
#
# Environment: VIRTBACKUP_VENV (default /opt/virtbackup/venv), VIRTBACKUP_BIN_DIR (where the
# virtbackup command is linked, default /usr/local/bin), VIRTBACKUP_DEST (the backup
# directory it creates, 0700, default /var/backups/virtbackup).
set -euo pipefail

want_test=0
for arg in "$@"; do
    case "$arg" in
        --test) want_test=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "setup-host.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host.sh: run me as root (sudo $0 $*)" >&2
    exit 2
fi

project_dir=$(cd "$(dirname "$0")/.." && pwd)
venv=${VIRTBACKUP_VENV:-/opt/virtbackup/venv}
bin_dir=${VIRTBACKUP_BIN_DIR:-/usr/local/bin}
dest=${VIRTBACKUP_DEST:-/var/backups/virtbackup}

# age and rclone: encrypted copies of the backups to an offsite remote; openssh-client:
# ssh-keygen signs and verifies backups (no signing key is made here: see README,
# "Signed backups", so that each host's key is made, and trusted, on purpose).
runtime_packages=(
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
    qemu-system-x86 qemu-utils python3-libvirt python3-libnbd python3-guestfs libguestfs-tools
    linux-image-amd64 lvm2 lz4 util-linux python3-venv python3-click python3-rich python3-lz4 procps
    age rclone openssh-client
    # nbdkit and its Python plugin serve a backup's disk over NBD (export --nbd, files, mount)
    nbdkit nbdkit-plugin-python
)
# guestfs-tools: virt-sparsify to compare shrink against; busybox-static, qemu-guest-agent
# and cpio: the tiny test guest and the nested VM; xfsprogs/e2fsprogs: test images;
# systemd, logrotate: only to check the files in contrib/ (systemd-analyze verify, logrotate -d);
# openssh-server, vsftpd: loopback SFTP and FTP servers for the offsite copy tests (the S3
# one, moto, comes from PyPI through tox); python3-prometheus-client: its parser reads the
# metrics file back.
# tgt, qemu-block-extra: a loopback iSCSI target and qemu's iSCSI driver, for the tests of
# network disks read through the backup API.
test_packages=(
    tox guestfs-tools busybox-static qemu-guest-agent cpio zstd xfsprogs e2fsprogs
    kmod tmux systemd logrotate openssh-server vsftpd python3-prometheus-client
    tgt qemu-block-extra
    # virtnbdbackup: the peer bench/bench_backup_api.py runs side by side with the backup API
    virtnbdbackup
)

packages=("${runtime_packages[@]}")
[ "$want_test" -eq 1 ] && packages+=("${test_packages[@]}")

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The guestfs bindings exist only for Debian's /usr/bin/python3: the venv sees them
# through --system-site-packages.
if [ ! -x "$venv/bin/python" ]; then
    echo "setup-host.sh: creating $venv"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$project_dir"
mkdir -p "$bin_dir"
ln -sf "$venv/bin/virtbackup" "$bin_dir/virtbackup"
# Backups are readable by root only; an existing directory keeps its mode.
[ -d "$dest" ] || install -d -m 0700 "$dest"

# libvirt: with systemd enable the units; without it (containers, CI) start the daemons.
if [ -d /run/systemd/system ]; then
    systemctl enable --now virtlogd.socket libvirtd.service >/dev/null
else
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
fi
# Up to a minute: libvirtd answers after about 4 s on an idle host, later on a busy one.
for _ in $(seq 300); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
done
virsh -c qemu:///system version >/dev/null || {
    echo "setup-host.sh: libvirtd does not answer on qemu:///system" >&2
    exit 1
}

echo "setup-host.sh: ready: $("$bin_dir/virtbackup" --version)"
