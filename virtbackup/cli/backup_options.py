"""Options shared by `backup` and `all`, and how they merge with the configuration file.

The command line wins over the file's per-domain settings, which win over its defaults.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from virtbackup.adapters import ssh_sign
from virtbackup.adapters.age import Recipients, read_recipients
from virtbackup.adapters.rclone import check_config, check_remote
from virtbackup.cli.context import DIRECTORY, FILE, GlobalOptions
from virtbackup.cli.remote_options import remote_store
from virtbackup.core.backup_errors import RemoteError
from virtbackup.core.config import (
    Config,
    DomainSettings,
    SnapshotSize,
    check_remote_rate,
    parse_rate,
    parse_snapshot_size,
)
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import LAYOUT_REPOSITORY, LAYOUT_STREAM, LAYOUTS
from virtbackup.core.model import DomainFacts, Method
from virtbackup.core.planning import PlanOptions, plan_domain
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.methods.image_source import ConsistencyOptions, Quiesce
from virtbackup.engine.methods.skip_free import SkipFree
from virtbackup.engine.runs.domain_backup import BackupRunOptions, DomainJob
from virtbackup.engine.stores.remote import RemoteStore

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
log = logging.getLogger(__name__)


def _parsed(
    parse: Callable[[str], T],
) -> Callable[[click.Context, click.Parameter, str | None], T | None]:
    """A click callback: the option's value through `parse`, its ValueError a usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None

    return callback


OPTIONS = [
    click.option(
        "--dest",
        type=DIRECTORY,
        help="Backup destination directory [default: `dest` of the configuration file].",
    ),
    click.option(
        "--method",
        type=click.Choice([m.value for m in Method]),
        help="How running domains are made consistent [default: configuration, else auto].",
    ),
    click.option(
        "--overlay-dir",
        type=DIRECTORY,
        help="Where snapshot overlays go [default: next to each image], and the "
        "temporary copies of --skip-free [default: DEST].",
    ),
    click.option(
        "--quiesce",
        type=click.Choice([q.value for q in Quiesce]),
        default=Quiesce.AUTO.value,
        show_default=True,
        help="Freeze guest filesystems through the guest agent for the snapshot.",
    ),
    click.option(
        "--snapshot-size",
        callback=_parsed(parse_snapshot_size),
        metavar="SIZE|N%",
        help="LVM method: copy-on-write room of each snapshot, a size or a share of the "
        "LV [default: configuration, else 10%].",
    ),
    click.option(
        "--shutdown-timeout",
        type=click.IntRange(min=1),
        metavar="SECONDS",
        help="Shutdown method: how long to wait for the guest [default: 300].",
    ),
    click.option(
        "--force-off",
        is_flag=True,
        default=None,
        help="Shutdown method: power off a guest that does not stop in time (else abort).",
    ),
    click.option(
        "--workers", type=click.IntRange(min=1), help="Compression threads [default: cores]."
    ),
    click.option(
        "--bwlimit",
        callback=_parsed(parse_rate),
        metavar="SIZE",
        help="Read at most SIZE bytes per second (K, M, G suffixes).",
    ),
    click.option(
        "--trim/--no-trim",
        default=None,
        help="Have the guest agent fstrim a running domain before its backup, freeing deleted "
        "data in images with discard='unmap' [default: `trim` of the configuration, else off].",
    ),
    click.option(
        "--skip-free/--no-skip-free",
        default=None,
        help="Store only the blocks the guest filesystems use (file disks, raw or qcow2): "
        "deleted data is left out; the backup restores the guest's files, not the image's "
        "bytes [default: `skip_free` of the configuration, else off].",
    ),
    click.option(
        "--encrypt",
        type=FILE,
        metavar="RECIPIENTS_FILE",
        help="Encrypt every file of the backup with age to the public keys in this file "
        "(one per line) [default: `encrypt` of the configuration, else off].",
    ),
    click.option(
        "--sign-key",
        type=FILE,
        metavar="KEY_FILE",
        help="Sign every backup's manifest with this OpenSSH private key (ssh-keygen -Y "
        "sign) [default: `sign_key` of the configuration, else unsigned].",
    ),
    click.option(
        "--remote",
        metavar="NAME:PATH",
        help="Copy each backup to this rclone remote once it is complete "
        "[default: [remote] location of the configuration, else none].",
    ),
    click.option(
        "--remote-only",
        is_flag=True,
        default=None,
        help="Stream backups straight to the remote and keep no local copy.",
    ),
    click.option(
        "--remote-bwlimit",
        callback=_parsed(check_remote_rate),
        metavar="RATE",
        help="Upload bandwidth limit, as rclone's --bwlimit (e.g. 10M; 'off': none).",
    ),
    click.option(
        "--layout",
        type=click.Choice(LAYOUTS),
        help="How disks are stored: one LZ4 stream file per disk and backup, or chunks "
        "stored once in DEST's deduplicating repository [default: `layout` of the "
        "configuration, else repository; stream when backups go to a remote or are "
        "encrypted].",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
]


def backup_options(command: F) -> F:
    for option in reversed(OPTIONS):
        command = option(command)
    return command


@dataclass(frozen=True)
class BackupValues:
    """What the shared options said; None: not given on the command line."""

    dest: Path | None
    method: str | None
    overlay_dir: Path | None
    quiesce: str
    snapshot_size: SnapshotSize | None
    shutdown_timeout: int | None
    force_off: bool | None
    workers: int | None
    bwlimit: int | None
    trim: bool | None
    skip_free: bool | None
    encrypt: Path | None
    sign_key: Path | None
    remote: str | None
    remote_only: bool | None
    remote_bwlimit: str | None
    layout: str | None
    as_json: bool


@dataclass(frozen=True)
class Safekeeping:
    """How backups are kept safe besides DEST: encrypted to, signed with, copied offsite;
    checked once per run, before any domain is touched."""

    encrypt_to: Recipients | None
    offsite: RemoteStore | None
    sign_with: Path | None = None


def resolve_layout(values: BackupValues, config: Config) -> str:
    """The layout `backup` and `all` write, decided here and only here: the one given
    (--layout, else `layout` of the configuration); else the repository, also for runs
    that copy backups offsite (the remote gets only the chunks it lacks), except with
    --remote-only: what goes straight to the remote is a stream per disk. A repository
    asked for with --remote-only is a usage error, before any domain is touched."""
    settings = config.remote
    only = (
        values.remote_only if values.remote_only is not None else bool(settings and settings.only)
    )
    layout = values.layout or config.layout
    if layout is None:
        return LAYOUT_STREAM if only else LAYOUT_REPOSITORY
    if layout == LAYOUT_REPOSITORY and only:
        raise UsageError(
            "the repository layout cannot be streamed to a remote without a local copy yet",
            "back up with --layout stream for --remote-only, or keep a local copy",
        )
    return layout


def resolve_safekeeping(values: BackupValues, config: Config) -> Safekeeping:
    resolve_layout(values, config)
    recipients_file = values.encrypt or config.encrypt
    encrypt_to = read_recipients(recipients_file) if recipients_file else None
    sign_with = values.sign_key or config.sign_key
    if sign_with is not None:
        ssh_sign.check_key(sign_with)
    settings = config.remote
    location = values.remote or (settings.location if settings else None)
    if location is None:
        if values.remote_only:
            raise UsageError("--remote-only needs a remote", "give --remote NAME:PATH")
        return Safekeeping(encrypt_to, None, sign_with)
    configured_only = settings.only if settings else False
    only = configured_only if values.remote_only is None else values.remote_only
    offsite = remote_store(location, None, config, only=only, bwlimit=values.remote_bwlimit)
    assert offsite is not None
    try:
        check_config(offsite.remote)
    except RemoteError as err:
        raise UsageError(err.message, err.hint) from None
    try:
        check_remote(offsite.remote)
    except RemoteError as err:
        # Local backups are still worth making: each domain's upload then fails and is
        # marked, and the next run sends what is missing.
        log.warning("the remote cannot be reached now: %s", err)
    return Safekeeping(encrypt_to, offsite, sign_with)


def resolve_dest(values: BackupValues, config: Config) -> Path:
    dest = values.dest or config.dest
    if dest is None:
        raise UsageError("no backup destination", "give --dest DIR or set dest in the config file")
    return dest


def domain_jobs(
    values: BackupValues,
    config: Config,
    globals_: GlobalOptions,
    safekeeping: Safekeeping,
    domains: Sequence[DomainFacts],
) -> list[DomainJob]:
    """Each domain's plan and how to back it up, from the options, the configuration
    and what discovery found."""
    jobs = []
    for facts in domains:
        settings = config.for_domain(facts.name)
        plan_options, run_options = _domain_options(values, config, settings, globals_, safekeeping)
        plan = plan_domain(facts, plan_options)
        jobs.append(DomainJob(plan, run_options, settings, plan_options))
    return jobs


def _domain_options(
    values: BackupValues,
    config: Config,
    settings: DomainSettings,
    globals_: GlobalOptions,
    safekeeping: Safekeeping,
) -> tuple[PlanOptions, BackupRunOptions]:
    method = Method(values.method) if values.method else settings.method
    consistency = ConsistencyOptions(
        overlay_dir=values.overlay_dir or config.overlay_dir,
        quiesce=Quiesce(values.quiesce),
        shutdown_timeout=float(values.shutdown_timeout or settings.shutdown_timeout),
        force_off=settings.force_off if values.force_off is None else values.force_off,
        snapshot_size=values.snapshot_size or settings.snapshot_size,
    )
    writer = WriterOptions(
        workers=values.workers or config.workers or 0,
        bwlimit=values.bwlimit or config.bwlimit,
        compression_level=config.compression_level,
        repository_chunk_size=config.repository_chunk_size,
    )
    layout = resolve_layout(values, config)
    plan = PlanOptions(
        method=method,
        exclude_disks=settings.exclude_disks,
        backup_api=layout == LAYOUT_REPOSITORY,
    )
    trim = settings.trim if values.trim is None else values.trim
    skip_free = None
    if settings.skip_free if values.skip_free is None else values.skip_free:
        skip_free = SkipFree(
            consistency.overlay_dir or resolve_dest(values, config), config.appliance_timeout
        )
    return plan, BackupRunOptions(
        consistency,
        writer,
        globals_.state_dir,
        trim=trim,
        skip_free=skip_free,
        encrypt_to=safekeeping.encrypt_to,
        sign_with=safekeeping.sign_with,
        offsite=safekeeping.offsite,
        layout=layout,
    )
