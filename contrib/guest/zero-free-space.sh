#!/bin/sh
# zero-free-space.sh: overwrite most of the free space of filesystems with zeros, so that
# data the guest deleted compresses away in the host's backups. For guests whose disks
# cannot pass discards to the host; where they can, prefer fstrim (see README.md).
#
# Safe by construction:
# - fills at most PERCENT % of the free space found at the start (default 90),
# - never the last KEEP bytes (default 1G), re-checked before every chunk, so another
#   writer filling the disk meanwhile makes it stop early instead of filling it up,
# - its fill file is removed on every exit: done, error, SIGINT, SIGTERM, SIGHUP,
# - works with POSIX sh, dash and busybox (df -P, dd, mktemp).
#
# Usage: zero-free-space.sh [-p PERCENT] [-k KEEP] [-c CHUNK] [-n] [MOUNTPOINT...]
#   MOUNTPOINT  a directory on each filesystem to fill (default: /)
#   -p PERCENT  share of the free space to fill, 1-100 (default 90)
#   -k KEEP     free space never to touch, e.g. 512M, 2G (default 1G)
#   -c CHUNK    bytes written between two checks of the free space (default 64M)
#   -n          only print what would be done
# Exit: 0 done, 1 a filesystem failed, 2 usage, 128+N killed by signal N.

set -u

PERCENT=90
KEEP=1G
CHUNK=64M
DRY_RUN=0
FILL_PREFIX=.zero-free-space.
# Stop this much above the reserve: the filesystem's own metadata for the fill file
# (and its delayed-allocation bookkeeping) take a little more than the data written.
MARGIN_MIB=1

fill_file=""
dd_pid=""

say() { printf '%s\n' "zero-free-space: $*"; }
fail() { printf '%s\n' "zero-free-space: $*" >&2; }

usage() {
    fail "usage: $0 [-p PERCENT] [-k KEEP] [-c CHUNK] [-n] [MOUNTPOINT...]"
    exit 2
}

# 512, 64K, 100M, 2G, 1T -> MiB (rounded down); empty output when not a size.
to_mib() {
    number=${1%[KkMmGgTt]}
    case "$number" in
        "" | *[!0-9]*) return 1 ;;
    esac
    case "$1" in
        *[Kk]) echo $((number / 1024)) ;;
        *[Mm]) echo "$number" ;;
        *[Gg]) echo $((number * 1024)) ;;
        *[Tt]) echo $((number * 1024 * 1024)) ;;
        *) echo $((number / 1048576)) ;;
    esac
}

# Free MiB for unprivileged writers on the filesystem holding $1 (df -P: POSIX columns).
free_mib() {
    df -P -k "$1" 2>/dev/null | awk 'NR == 2 { print int($4 / 1024) }'
}

cleanup() {
    if [ -n "$dd_pid" ]; then
        kill "$dd_pid" 2>/dev/null
        dd_pid=""
    fi
    # Every child, also a dd started just before the signal whose pid was not recorded
    # yet: it would create the fill file again after the rm below.
    wait 2>/dev/null
    if [ -n "$fill_file" ]; then
        rm -f -- "$fill_file"
        fill_file=""
        sync
    fi
}

trap cleanup EXIT
trap 'cleanup; exit 129' HUP
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

while getopts p:k:c:nh option; do
    case "$option" in
        p) PERCENT=$OPTARG ;;
        k) KEEP=$OPTARG ;;
        c) CHUNK=$OPTARG ;;
        n) DRY_RUN=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] && set -- /

case "$PERCENT" in
    "" | *[!0-9]*) fail "-p: $PERCENT is not a whole percentage"; exit 2 ;;
esac
if [ "$PERCENT" -lt 1 ] || [ "$PERCENT" -gt 100 ]; then
    fail "-p: $PERCENT is not between 1 and 100"
    exit 2
fi
keep_mib=$(to_mib "$KEEP") || { fail "-k: $KEEP is not a size (e.g. 512M, 2G)"; exit 2; }
chunk_mib=$(to_mib "$CHUNK") || { fail "-c: $CHUNK is not a size (e.g. 64M)"; exit 2; }
[ "$chunk_mib" -ge 1 ] || { fail "-c: at least 1M"; exit 2; }

# Fill one filesystem; returns non-zero on failure. The fill file is removed before
# returning, also on failure (and by the EXIT trap if we are killed meanwhile).
zero_fill() {
    dir=$1
    if [ ! -d "$dir" ]; then
        fail "$dir: not a directory"
        return 1
    fi
    free=$(free_mib "$dir")
    if [ -z "$free" ]; then
        fail "$dir: cannot read the free space (df)"
        return 1
    fi
    budget=$((free * PERCENT / 100))
    if [ $((free - budget)) -lt $((keep_mib + MARGIN_MIB)) ]; then
        budget=$((free - keep_mib - MARGIN_MIB))
    fi
    if [ "$budget" -le 0 ]; then
        say "$dir: $free MiB free, keeping $keep_mib MiB: nothing to fill"
        return 0
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        say "$dir: $free MiB free: would fill $budget MiB, keeping $((free - budget)) MiB"
        return 0
    fi
    fill_file=$(mktemp "$dir/${FILL_PREFIX}XXXXXX") || {
        fail "$dir: cannot create a file"
        return 1
    }
    written=0
    status=0
    while [ "$written" -lt "$budget" ]; do
        count=$chunk_mib
        [ $((budget - written)) -lt "$count" ] && count=$((budget - written))
        now=$(free_mib "$dir")
        [ -n "$now" ] || now=0
        if [ $((now - count)) -lt $((keep_mib + MARGIN_MIB)) ]; then
            count=$((now - keep_mib - MARGIN_MIB))
        fi
        if [ "$count" -le 0 ]; then
            say "$dir: free space down to $now MiB (someone else writes): stopping early"
            break
        fi
        # In the background, so that a signal interrupts `wait` at once (a shell runs
        # its traps only after a foreground command ends).
        dd if=/dev/zero of="$fill_file" bs=1048576 seek="$written" count="$count" \
            conv=notrunc 2>/dev/null &
        dd_pid=$!
        wait "$dd_pid"
        dd_status=$?
        dd_pid=""
        if [ "$dd_status" -ne 0 ]; then
            fail "$dir: writing zeros failed after $written MiB (dd exit $dd_status)"
            status=1
            break
        fi
        written=$((written + count))
    done
    # The zeros must reach the disk before the file goes: else they never leave the
    # page cache, and the blocks on the disk keep their old contents.
    sync
    rm -f -- "$fill_file"
    fill_file=""
    sync
    if [ "$status" -eq 0 ]; then
        say "$dir: filled $written MiB of $free MiB free with zeros, and removed the file"
    fi
    return "$status"
}

result=0
for dir in "$@"; do
    zero_fill "$dir" || result=1
done
exit "$result"
