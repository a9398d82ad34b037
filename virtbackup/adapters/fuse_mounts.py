"""FUSE mounts (the appliance's `mount`): is a directory one, and ending one with
fusermount."""

from pathlib import Path

from virtbackup.adapters import runner

TIMEOUT = 30.0


def fuse_type(path: Path) -> str | None:
    """The filesystem type mounted at `path` when it is a FUSE mount, else None."""
    out = runner.run_text(
        ["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(path)], check=False, timeout=TIMEOUT
    )
    kind = out.strip()
    return kind if kind.startswith("fuse") else None


def fuse_unmount(path: Path) -> None:
    """Unmount the FUSE mount at `path`; lazily when something still uses it (it is
    gone from the tree at once, released once the last user lets go)."""
    done = runner.run(["fusermount", "-u", str(path)], check=False, timeout=TIMEOUT)
    if done.returncode != 0:
        runner.run(["fusermount", "-u", "-z", str(path)], timeout=TIMEOUT)
