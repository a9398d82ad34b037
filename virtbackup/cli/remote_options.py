"""The offsite remote as the commands that read backups name it: --remote (the [remote]
of the configuration file), --remote-location NAME:PATH (another rclone remote; the
other [remote] settings still apply) and --host NAME (whose namespace)."""

import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from virtbackup.adapters.rclone import Remote
from virtbackup.cli.context import FILE, GlobalOptions, load_settings
from virtbackup.cli.trust_options import resolve_trust, trust_options
from virtbackup.core.config import Config, RemoteSettings
from virtbackup.core.errors import UsageError
from virtbackup.engine.stores.backup_access import Trust
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
    type=FILE,
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


@dataclass(frozen=True)
class Reading:
    """How the commands that read backups (verify, restore) were told to reach and trust
    them: --identity, the trust options and the remote options, as given."""

    identity: Path | None
    allowed_signers: Path | None
    allow_unsigned: bool
    remote: bool
    remote_location: str | None
    host: str | None

    def settle(self, options: GlobalOptions) -> tuple[str | None, Config, Trust]:
        """The remote asked for, the configuration and the signatures trusted."""
        remote = chosen_remote(self.remote, self.remote_location)
        config = load_settings(options)
        return remote, config, resolve_trust(self.allowed_signers, self.allow_unsigned, config)


def reading_options(command: F) -> F:
    """--identity, the trust options and the remote options, handed to `command` as one
    `reading` argument."""

    @functools.wraps(command)
    def with_reading(
        *args: Any,
        identity: Path | None,
        allowed_signers: Path | None,
        allow_unsigned: bool,
        remote: bool,
        remote_location: str | None,
        host: str | None,
        **kwargs: Any,
    ) -> Any:
        reading = Reading(identity, allowed_signers, allow_unsigned, remote, remote_location, host)
        return command(*args, reading=reading, **kwargs)

    return cast(F, identity_option(trust_options(remote_options(with_reading))))
