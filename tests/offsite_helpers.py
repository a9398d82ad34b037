"""Configuration and listings for the tests of offsite copies."""

from pathlib import Path

from harness.remotes import RemoteServer

from virtbackup.adapters import rclone


def offsite_config(
    path: Path,
    dest: Path,
    remote: RemoteServer,
    host: str = "host-a",
    extra: str = "",
    remote_extra: str = "",
) -> Path:
    """A config file: DEST, `extra` top-level lines, then [remote] (+ `remote_extra`)."""
    path.write_text(
        f'dest = "{dest}"\n{extra}\n'
        f'[remote]\nlocation = "{remote.remote.location}"\n'
        f'rclone_config = "{remote.remote.config}"\nhost = "{host}"\nretries = 1\n'
        f"{remote_extra}\n"
    )
    return path


def remote_files(remote: RemoteServer, path: str) -> dict[str, int]:
    return {e.path: e.size for e in rclone.list_entries(remote.remote, path) if not e.is_dir}
