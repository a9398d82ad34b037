"""The offsite remote as the commands that read backups name it: --remote (the [remote]
of the configuration file), --remote-location NAME:PATH (another rclone remote; the
other [remote] settings still apply) and --host NAME (whose namespace)."""

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from virtbackup.adapters.rclone import Remote
from virtbackup.core.config import Config, RemoteSettings
from virtbackup.core.errors import UsageError
from virtbackup.engine.stores.remote import RemoteStore
from virtbackup.engine.stores.store import BackupFiles

F = TypeVar("F", bound=Callable[..., Any])


def remote_options(command: F) -> F:
    """--remote, --remote-location and --host for the commands that read backups."""
    options = [
        click.option(
            "--remote",
            is_flag=True,
            help="Work on the offsite copies on the configured [remote] instead of DEST.",
        ),
        click.option(
            "--remote-location",
            metavar="NAME:PATH",
            help="The rclone remote to use instead of the configured one (implies --remote).",
        ),
        click.option(
            "--host",
            metavar="NAME",
            help="Whose backups on the remote [default: [remote] host, else this host's name].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def chosen_remote(remote: bool, remote_location: str | None) -> str | None:
    """What --remote/--remote-location ask for, in remote_store's terms."""
    if remote_location is not None:
        return remote_location
    return "" if remote else None


def remote_store(
    location: str | None,
    host: str | None,
    config: Config,
    *,
    only: bool = False,
    bwlimit: str | None = None,
) -> RemoteStore | None:
    """The remote store: `location` "" is the configured one, None no remote at all."""
    if location is None:
        return None
    settings = config.remote
    location = location or (settings.location if settings else None)
    if not location:
        raise UsageError(
            "no remote configured", "give --remote NAME:PATH or add [remote] to the config file"
        )
    settings = settings or RemoteSettings(location)
    remote = Remote(
        location=location,
        config=settings.rclone_config,
        bwlimit=bwlimit or settings.bwlimit,
        retries=settings.retries,
    )
    return RemoteStore(remote, host or settings.host or socket.gethostname(), only)


identity_option = click.option(
    "-i",
    "--identity",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="age identity file that decrypts an encrypted backup (age-keygen writes one).",
)


def resolve_backup(
    name: str, remote: str | None, host: str | None, config: Config | None
) -> Path | BackupFiles:
    """A backup argument: a directory, or DOMAIN/STAMP on the remote with --remote."""
    store = remote_store(remote, host, config or Config())
    if store is None:
        return Path(name)
    domain, _, stamp = name.strip("/").partition("/")
    if not stamp or "/" in stamp:
        raise UsageError(
            f"{name!r} does not name a remote backup",
            "give DOMAIN/STAMP as 'virtbackup backups --remote' lists it",
        )
    return store.files(domain, stamp)
